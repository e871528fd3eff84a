/*
 * vmspy: an instrumented VM process for the end-to-end tests. It does the
 * child side of the start handshake as c/vmprog.c does (vmd.md §7) and
 * tells the test what it saw, which the test cannot see from outside:
 *
 *  - after reading struct vmd_vm and the local prefix, before answering,
 *    it writes $VMM_E2E_SPY_DIR/<pid>: its argv's fds, the vmid and name,
 *    the struct's vm_pid, and every fd number the struct names (kernel,
 *    cdrom, disks, ifs, tty);
 *  - every imsg it receives afterwards is appended to
 *    $VMM_E2E_SPY_DIR/<pid>.log as "msg type peerid pid len [int]".
 *
 * Both files are opened and closed around each write (close-on-exec), so
 * between writes the process holds only what it was given.
 *
 * Behaviour, as vmprog: a named fd that is not open -> exit EBADF; PAUSE /
 * UNPAUSE answered {0, vmid} with the received peerid and pid; VM_SHUTDOWN,
 * EOF, SIGTERM -> 0; VM_REBOOT, SIGHUP -> 35; anything else -> 1.
 *
 * Misbehaviour per VM, chosen by the VM's name (so one vmm can run good and
 * bad VMs side by side), else by $VMM_TEST_VM_MODE:
 *   die-*      exit EIO after reading the struct, answer nothing
 *   zero-*     answer id 0 and exit EINVAL
 *   hang-*     never answer
 *   garbage-*  after the handshake, send the vmm an imsg of type 99
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
#include "../../../c/vmd_wire.h"	/* errno, struct vmd_vm offsets, message numbers, readn/writen */

static char report[4096], logpath[4096];

static void
on_signal(int sig)
{
	_exit(sig == SIGHUP ? X_EAGAIN : 0);
}

/* append text to the message log */
static void
logmsg(const char *text)
{
	int fd;

	if (logpath[0] == '\0')
		return;
	fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd == -1)
		return;
	writen(fd, text, strlen(text));
	close(fd);
}

/* the report: written to a temporary name, then renamed, so a reader sees all of it or nothing */
static void
write_report(const unsigned char *vm, int vfd, const char *ifd, const char *jfd)
{
	char buf[4096], tmp[4200];
	size_t n = 0;
	int fd, i, j, v;

	if (report[0] == '\0')
		return;
	n += (size_t)snprintf(buf + n, sizeof(buf) - n, "V %d\ni %s\nj %s\nvmid %u\nname %.64s\n",
	    vfd, ifd, jfd, (unsigned)int_at(vm, OFF_VMID), (const char *)vm + OFF_NAME);
	n += (size_t)snprintf(buf + n, sizeof(buf) - n, "vmpid %d\n", int_at(vm, OFF_PID));
	n += (size_t)snprintf(buf + n, sizeof(buf) - n, "kernel %d\ncdrom %d\n",
	    int_at(vm, OFF_KERNEL), int_at(vm, OFF_CDROM));
	for (i = 0; i < 4; i++)
		for (j = 0; j < 4; j++)
			if ((v = int_at(vm, OFF_DISKS + 16 * (size_t)i + 4 * (size_t)j)) != -1)
				n += (size_t)snprintf(buf + n, sizeof(buf) - n, "disk %d %d %d\n", i, j, v);
	for (i = 0; i < 4; i++)
		if ((v = int_at(vm, OFF_VIF_FD + 56 * (size_t)i)) != -1)
			n += (size_t)snprintf(buf + n, sizeof(buf) - n, "if %d %d\n", i, v);
	n += (size_t)snprintf(buf + n, sizeof(buf) - n, "tty %d\n", int_at(vm, OFF_TTY));

	snprintf(tmp, sizeof(tmp), "%s.tmp", report);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd == -1)
		return;
	writen(fd, buf, n);
	close(fd);
	rename(tmp, report);
}

static int
check_fds(const unsigned char *vm)
{
	int i;

	if (int_at(vm, OFF_KERNEL) != -1 && !is_open(int_at(vm, OFF_KERNEL)))
		return 0;
	if (int_at(vm, OFF_CDROM) != -1 && !is_open(int_at(vm, OFF_CDROM)))
		return 0;
	for (i = 0; i < 16; i++)
		if (int_at(vm, OFF_DISKS + 4 * (size_t)i) != -1 && !is_open(int_at(vm, OFF_DISKS + 4 * (size_t)i)))
			return 0;
	for (i = 0; i < 4; i++)
		if (int_at(vm, OFF_VIF_FD + 56 * (size_t)i) != -1 && !is_open(int_at(vm, OFF_VIF_FD + 56 * (size_t)i)))
			return 0;
	return is_open(int_at(vm, OFF_TTY));
}

static const char *
mode_of(const unsigned char *vm)
{
	static const char *modes[][2] = {
		{ "die-", "die-in-handshake" }, { "zero-", "answer-zero" },
		{ "hang-", "hang" }, { "garbage-", "garbage" }
	};
	const char *name = (const char *)vm + OFF_NAME, *env;
	size_t i;

	for (i = 0; i < sizeof(modes) / sizeof(modes[0]); i++)
		if (strncmp(name, modes[i][0], strlen(modes[i][0])) == 0)
			return modes[i][1];
	env = getenv("VMM_TEST_VM_MODE");
	return env == NULL ? "" : env;
}

int
main(int argc, char **argv)
{
	static unsigned char vm[SIZEOF_VMD_VM], payload[MAX_IMSGSIZE];
	unsigned char prefix[SIZEOF_PREFIX];
	const char *dir = getenv("VMM_E2E_SPY_DIR"), *ifd = "-1", *jfd = "-1", *mode;
	char line[128];
	uint32_t h[4], vmid, len;
	uint64_t ndisks;
	int32_t iv;
	int ch, fd = -1;

	while ((ch = getopt(argc, argv, "V:i:j:dv")) != -1) {
		switch (ch) {
		case 'V': fd = atoi(optarg); break;
		case 'i': ifd = optarg; break;
		case 'j': jfd = optarg; break;
		case 'd': case 'v': break;
		default: return 1;
		}
	}
	if (!is_open(fd))
		return X_EBADF;
	if (dir != NULL) {
		snprintf(report, sizeof(report), "%s/%ld", dir, (long)getpid());
		snprintf(logpath, sizeof(logpath), "%s/%ld.log", dir, (long)getpid());
	}
	signal(SIGTERM, on_signal);
	signal(SIGHUP, on_signal);
	signal(SIGPIPE, SIG_IGN);
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);

	if (!readn(fd, vm, sizeof(vm)))
		return X_EIO;
	mode = mode_of(vm);
	if (strcmp(mode, "die-in-handshake") == 0)
		return X_EIO;
	if (!readn(fd, prefix, sizeof(prefix)))
		return X_EIO;
	write_report(vm, fd, ifd, jfd);
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
	if (strcmp(mode, "garbage") == 0) {
		uint32_t g[4] = { 99, HDR, 0, (uint32_t)getpid() };
		writen(fd, g, sizeof(g));
	}

	for (;;) {
		if (!readn(fd, h, sizeof(h)))
			return 0;
		len = h[1] & ~FD_MARK;
		if (len < HDR || len > MAX_IMSGSIZE)
			return 1;
		if (!readn(fd, payload, len - HDR))
			return 0;
		len -= HDR;
		iv = 0;
		if (len == 4)
			memcpy(&iv, payload, 4);
		snprintf(line, sizeof(line), "msg %u %u %u %u %d\n", h[0], h[2], h[3], len, iv);
		logmsg(line);
		switch (h[0]) {
		case PAUSE_VM:
		case UNPAUSE_VM: {
			unsigned char m[HDR + 28];
			uint32_t rh[4] = { h[0] + 1, sizeof(m), h[2], h[3] };

			if (len != 76)
				return 1;
			memset(m, 0, sizeof(m));
			memcpy(m, rh, sizeof(rh));
			memcpy(m + HDR + 4, &vmid, 4);
			if (!writen(fd, m, sizeof(m)))
				return 0;
			break;
		}
		case CTL_VERBOSE:
			if (len != 4)
				return 1;
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
			return 1;
		}
	}
}
