/*
 * vmprog: a tiny VM process for the vmm process's start-latency and
 * many-VM tests, where a Node VM process (about 40 MB each) is too heavy.
 * It speaks the same protocol as src/vm/ (vmd.md §7), runs no guest code.
 *
 *   vmprog -V fd [-i vmmfd] [-j pspfd] [-d] [-v|-vv] [-x mode]
 *
 * A -V or -i above 128 (or -j) is refused as vm.c's strtonum does: exit 1.
 *
 * Handshake: read struct vmd_vm (13352 bytes, short -> exit EIO) and the
 * local prefix (40, short -> EIO); no kernel, disk or cdrom -> exit EINVAL;
 * an fd named in the struct that is not open here -> exit EBADF (nothing
 * written, as vm.c when it cannot set up the console); else write vm_vmid
 * as the 4-byte id (there is no vmm(4) here to hand out a kernel id).
 *
 * Then imsg on the same socket: PAUSE_VM / UNPAUSE_VM answered with
 * *_RESPONSE {0, vm_vmid} and the received peerid and pid; CTL_VERBOSE and
 * PRIV_GET_ADDR_RESPONSE accepted; VM_SHUTDOWN -> exit 0; VM_REBOOT -> exit
 * 35 (EAGAIN, a guest reset); EOF or SIGTERM -> exit 0; anything else or a
 * bad length -> exit 1 (vm.c fatalx). SIGHUP -> exit 35: a "reset button"
 * for tests and the demo. Exit codes are OpenBSD errno numbers.
 *
 * Test-only misbehaviour (-x mode, or env VMM_TEST_VM_MODE):
 *   die-in-handshake  exit EIO after reading the struct, answer nothing
 *   answer-zero       answer id 0 and exit EINVAL (a failed VMM_IOC_CREATE)
 *   hang              never answer; wait for a signal
 *   garbage           after the handshake send the vmm an invalid imsg
 *   deaf              after the handshake, EOF from the vmm does not end it:
 *                     only a signal does (so that a vmm going away must end
 *                     it itself, as vmm.c's vmm_shutdown does)
 *
 * Benchmark only (env VMM_TEST_VM_EXIT_STAMP=dir): at start the program
 * maps the 8-byte file dir/<pid> (and closes it: no fd is held), and the
 * signal handler writes CLOCK_MONOTONIC there, in ns, just before _exit:
 * the moment the VM exits, for bench-vmm's exit notification, which then
 * does not count the time the kernel takes to wake a sleeping process for
 * the signal.
 */
#include <sys/types.h>
#include <sys/mman.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "vmd_wire.h"	/* errno, struct vmd_vm offsets, message numbers, readn/writen */

#define SIZEOF_VMOP_ID	76
#define SIZEOF_RESULT	28

static int verbose;
static volatile uint64_t *exit_stamp;	/* VMM_TEST_VM_EXIT_STAMP's page, or NULL */

static void
logx(int level, const char *msg, unsigned long n)
{
	if (verbose >= level)
		fprintf(stderr, "vmprog[%ld]: %s %lu\n", (long)getpid(), msg, n);
}

static void
on_signal(int sig)
{
	struct timespec ts;

	if (exit_stamp != NULL && clock_gettime(CLOCK_MONOTONIC, &ts) == 0)
		*exit_stamp = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
	_exit(sig == SIGHUP ? X_EAGAIN : 0);
}

/* VMM_TEST_VM_EXIT_STAMP: map dir/<pid>, written (so faulted in) now, not in on_signal */
static void
map_exit_stamp(void)
{
	const char *dir = getenv("VMM_TEST_VM_EXIT_STAMP");
	char path[4096];
	void *p;
	int fd;

	if (dir == NULL || snprintf(path, sizeof(path), "%s/%ld", dir, (long)getpid()) >= (int)sizeof(path))
		return;
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd == -1)
		return;
	if (ftruncate(fd, sizeof(uint64_t)) == 0) {
		p = mmap(NULL, sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (p != MAP_FAILED) {
			exit_stamp = p;
			*exit_stamp = 0;
		}
	}
	close(fd);
}

/* every fd the struct names must be open here; the tty is required */
static int
check_fds(const unsigned char *vm)
{
	int fds[2 + 16 + 4], n = 0, i;

	fds[n++] = int_at(vm, OFF_KERNEL);
	fds[n++] = int_at(vm, OFF_CDROM);
	for (i = 0; i < 16; i++)
		fds[n++] = int_at(vm, OFF_DISKS + 4 * (size_t)i);
	for (i = 0; i < 4; i++)
		fds[n++] = int_at(vm, OFF_VIF_FD + 56 * (size_t)i);
	for (i = 0; i < n; i++)
		if (fds[i] != -1 && !is_open(fds[i]))
			return 0;
	return is_open(int_at(vm, OFF_TTY));
}

static void
reply(int fd, uint32_t type, uint32_t peerid, uint32_t pid, uint32_t vmid)
{
	unsigned char m[HDR + SIZEOF_RESULT];
	uint32_t h[4] = { type, sizeof(m), peerid, pid };

	memset(m, 0, sizeof(m));
	memcpy(m, h, sizeof(h));
	memcpy(m + HDR + 4, &vmid, 4);		/* vmr_result 0, vmr_id */
	if (!writen(fd, m, sizeof(m)))
		exit(0);			/* EPIPE: the vmm is gone */
}

/* strtonum(s, min, 128) into *out: 0 (and a fatalx-like line) if out of range */
static int
fdnum(const char *s, int min, int *out)
{
	char *end;
	long n = strtol(s, &end, 10);

	if (*s == '\0' || *end != '\0' || n < min || n > 128) {
		fprintf(stderr, "vmprog: invalid fd %s (vm.c accepts %d..128)\n", s, min);
		return 0;
	}
	*out = (int)n;
	return 1;
}

int
main(int argc, char **argv)
{
	static unsigned char vm[SIZEOF_VMD_VM], payload[MAX_IMSGSIZE];
	unsigned char prefix[SIZEOF_PREFIX];
	const char *mode = getenv("VMM_TEST_VM_MODE");
	uint32_t h[4], vmid, len;
	uint64_t ndisks;
	int ch, fd = -1, ignored;

	while ((ch = getopt(argc, argv, "V:i:j:dvx:")) != -1) {
		switch (ch) {
		/* vm.c: -V and -i by strtonum(0..128), -j (-1..128), fatalx otherwise
		 * (-i -1 allowed here: the process backend has no vmm device) */
		case 'V':
			if (!fdnum(optarg, 0, &fd))
				return 1;
			break;
		case 'i': case 'j':
			if (!fdnum(optarg, -1, &ignored))
				return 1;
			break;
		case 'v': verbose++; break;
		case 'x': mode = optarg; break;
		case 'd': break;
		default: return 1;
		}
	}
	if (mode == NULL)
		mode = "";
	if (fd < 0 || !is_open(fd))
		return X_EBADF;
	signal(SIGTERM, on_signal);
	signal(SIGHUP, on_signal);
	signal(SIGPIPE, SIG_IGN);
	map_exit_stamp();
	/* the vmm made the pair non-blocking; our end may block */
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);

	if (!readn(fd, vm, sizeof(vm)))
		return X_EIO;
	if (strcmp(mode, "die-in-handshake") == 0)
		return X_EIO;
	if (!readn(fd, prefix, sizeof(prefix)))
		return X_EIO;
	memcpy(&ndisks, vm + OFF_NDISKS, sizeof(ndisks));
	if (int_at(vm, OFF_KERNEL) == -1 && ndisks == 0 && vm[OFF_CDROMPATH] == 0)
		return X_EINVAL;
	if (!check_fds(vm))
		return X_EBADF;
	if (strcmp(mode, "hang") == 0)
		for (;;)
			pause();
	memcpy(&vmid, vm + OFF_VMID, sizeof(vmid));
	if (strcmp(mode, "answer-zero") == 0) {
		vmid = 0;
		writen(fd, &vmid, sizeof(vmid));
		return X_EINVAL;
	}
	if (!writen(fd, &vmid, sizeof(vmid)))
		return X_EIO;
	logx(1, "started vm", vmid);

	if (strcmp(mode, "garbage") == 0) {
		uint32_t g[4] = { 99, HDR, 0, (uint32_t)getpid() };
		writen(fd, g, sizeof(g));
	}

	for (;;) {
		if (!readn(fd, h, sizeof(h))) {
			if (strcmp(mode, "deaf") == 0)
				for (;;)
					pause();
			return 0;			/* EOF from the vmm */
		}
		len = h[1] & ~FD_MARK;
		if (len < HDR || len > MAX_IMSGSIZE)
			return 1;
		if (!readn(fd, payload, len - HDR))
			return 0;
		len -= HDR;
		switch (h[0]) {
		case PAUSE_VM:
		case UNPAUSE_VM:
			if (len != SIZEOF_VMOP_ID)
				return 1;
			reply(fd, h[0] + 1, h[2], h[3], vmid);
			logx(1, h[0] == PAUSE_VM ? "paused" : "unpaused", vmid);
			break;
		case CTL_VERBOSE:
			if (len != 4)
				return 1;
			memcpy(&verbose, payload, 4);
			break;
		case PRIV_GET_ADDR_RESPONSE:
			if (len != 16)
				return 1;
			break;
		case VM_SHUTDOWN:
			return 0;
		case VM_REBOOT:
			return X_EAGAIN;
		default:
			logx(0, "got invalid imsg", h[0]);
			return 1;
		}
	}
}
