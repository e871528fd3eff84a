/*
 * vmprog: a tiny VM process for the vmm process's start-latency and
 * many-VM tests, where a Node VM process (about 40 MB each) is too heavy.
 * It speaks the same protocol as src/vm/ (vmd.md §7), runs no guest code.
 *
 *   vmprog -V fd [-i vmmfd] [-j pspfd] [-d] [-v|-vv] [-x mode]
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
 */
#include <sys/types.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* OpenBSD errno, as vmm reads our exit status */
#define X_EBADF		9
#define X_EIO		5
#define X_EINVAL	22
#define X_EAGAIN	35

/* struct vmd_vm offsets, amd64 (vmd.md §4.5) */
#define SIZEOF_VMD_VM	13352
#define OFF_NDISKS	2696	/* vm_params.vmc_ndisks, size_t */
#define OFF_CDROMPATH	6832	/* vm_params.vmc_cdrom, char[1024] */
#define OFF_VMID	8400
#define OFF_KERNEL	12784
#define OFF_CDROM	12800
#define OFF_DISKS	12804	/* int[4][4] */
#define OFF_VIF_FD	12896	/* + 56 * nic */
#define OFF_TTY		13112
#define SIZEOF_PREFIX	40

/* imsg types, IMSG_PROC_MAX = 5 (src/schema/imsgTypes.ts) */
#define CTL_VERBOSE		3
#define PAUSE_VM		11
#define PAUSE_VM_RESPONSE	12
#define UNPAUSE_VM		13
#define UNPAUSE_VM_RESPONSE	14
#define PRIV_GET_ADDR_RESPONSE	36
#define VM_SHUTDOWN		37
#define VM_REBOOT		38
#define HDR		16
#define FD_MARK		0x80000000u
#define MAX_IMSGSIZE	16384
#define SIZEOF_VMOP_ID	76
#define SIZEOF_RESULT	28

static int verbose;

static void
logx(int level, const char *msg, unsigned long n)
{
	if (verbose >= level)
		fprintf(stderr, "vmprog[%ld]: %s %lu\n", (long)getpid(), msg, n);
}

static void
on_signal(int sig)
{
	_exit(sig == SIGHUP ? X_EAGAIN : 0);
}

/* read exactly n bytes: 1, or 0 on EOF/short/error */
static int
readn(int fd, void *buf, size_t n)
{
	char *p = buf;
	while (n > 0) {
		ssize_t r = read(fd, p, n);
		if (r == -1 && errno == EINTR)
			continue;
		if (r <= 0)
			return 0;
		p += r;
		n -= (size_t)r;
	}
	return 1;
}

static int
writen(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n > 0) {
		ssize_t r = write(fd, p, n);
		if (r == -1 && errno == EINTR)
			continue;
		if (r <= 0)
			return 0;
		p += r;
		n -= (size_t)r;
	}
	return 1;
}

static int32_t
int_at(const unsigned char *vm, size_t off)
{
	int32_t v;
	memcpy(&v, vm + off, sizeof(v));
	return v;
}

static int
is_open(int fd)
{
	return fcntl(fd, F_GETFD) != -1;
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

int
main(int argc, char **argv)
{
	static unsigned char vm[SIZEOF_VMD_VM], payload[MAX_IMSGSIZE];
	unsigned char prefix[SIZEOF_PREFIX];
	const char *mode = getenv("VMM_TEST_VM_MODE");
	uint32_t h[4], vmid, len;
	uint64_t ndisks;
	int ch, fd = -1;

	while ((ch = getopt(argc, argv, "V:i:j:dvx:")) != -1) {
		switch (ch) {
		case 'V': fd = atoi(optarg); break;
		case 'v': verbose++; break;
		case 'x': mode = optarg; break;
		case 'i': case 'j': case 'd': break;
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
		if (!readn(fd, h, sizeof(h)))
			return 0;			/* EOF from the vmm */
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
