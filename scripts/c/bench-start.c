/*
 * bench-start: the C reference for the start latency in bench-vmm.ts.
 * vmm.c's vmm_start_vm as plain C, N times: socketpair, fork, in the child
 * setsid + stdio on /dev/null + exec of the VM program; in the parent the
 * handshake (write struct vmd_vm 13352 bytes, close the passed fds, write
 * the local prefix 40 bytes, read the 4-byte id). The fds passed are what
 * bench-vmm.ts sends for each VM: a kernel, a disk, a tap (socketpair end)
 * and a pty master, opened before the clock starts, as the vmm has them
 * before START_VM_END.
 *
 *   bench-start vmprog kernel disk N     prints N lines: microseconds
 */
#define _GNU_SOURCE	/* posix_openpt */
#include <sys/socket.h>
#include <sys/wait.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "../../c/vmd_wire.h"

static void
put32(unsigned char *b, size_t off, int32_t v)
{
	memcpy(b + off, &v, sizeof(v));
}

/* atomicio on a non-blocking socket: poll on EAGAIN */
static int
xfer(int fd, void *buf, size_t n, int writing)
{
	char *p = buf;
	struct pollfd pfd = { fd, writing ? POLLOUT : POLLIN, 0 };

	while (n > 0) {
		ssize_t r = writing ? write(fd, p, n) : read(fd, p, n);
		if (r == -1 && (errno == EAGAIN || errno == EINTR)) {
			poll(&pfd, 1, -1);
			continue;
		}
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static double
now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int
main(int argc, char **argv)
{
	static unsigned char vm[SIZEOF_VMD_VM];
	unsigned char prefix[SIZEOF_PREFIX] = { 0 };
	int i, j, n, devnull;

	if (argc != 5)
		return 2;
	n = atoi(argv[4]);
	devnull = open("/dev/null", O_RDWR | O_CLOEXEC);	/* vmm_run opens it early */
	for (i = 0; i < n; i++) {
		int kfd, dfd, tap[2], ptm, sv[2], status;
		uint32_t id;
		uint64_t one = 1;
		double t0, t1;
		pid_t pid;
		char fdarg[16];

		/* what the vmm holds before START_VM_END: received fds have close-on-exec clear */
		kfd = open(argv[2], O_RDONLY);
		dfd = open(argv[3], O_RDWR);
		if (socketpair(AF_UNIX, SOCK_STREAM, 0, tap) == -1)
			return 1;
		fcntl(tap[1], F_SETFD, FD_CLOEXEC);
		ptm = posix_openpt(O_RDWR | O_NOCTTY);
		if (kfd == -1 || dfd == -1 || ptm == -1)
			return 1;
		memset(vm, 0, sizeof(vm));
		put32(vm, OFF_VMID, i + 1);
		memcpy(vm + OFF_NDISKS, &one, sizeof(one));
		put32(vm, OFF_KERNEL, kfd);
		put32(vm, OFF_CDROM, -1);
		for (j = 0; j < 16; j++)
			put32(vm, OFF_DISKS + 4 * (size_t)j, j == 0 ? dfd : -1);
		for (j = 0; j < 4; j++)
			put32(vm, OFF_VIF_FD + 56 * (size_t)j, j == 0 ? tap[0] : -1);
		put32(vm, OFF_TTY, ptm);

		t0 = now_us();
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == -1)
			return 1;
		fcntl(sv[0], F_SETFD, FD_CLOEXEC);
		pid = fork();
		if (pid == -1)
			return 1;
		if (pid == 0) {
			setsid();
			dup2(devnull, 0);
			dup2(devnull, 1);
			dup2(devnull, 2);
			snprintf(fdarg, sizeof(fdarg), "%d", sv[1]);
			execl(argv[1], argv[1], "-V", fdarg, "-i", "-1", "-j", "-1", (char *)NULL);
			_exit(errno);
		}
		close(sv[1]);
		if (xfer(sv[0], vm, sizeof(vm), 1) == -1)
			return 1;
		close(kfd);
		close(dfd);
		close(tap[0]);
		close(ptm);
		if (xfer(sv[0], prefix, sizeof(prefix), 1) == -1 || xfer(sv[0], &id, sizeof(id), 0) == -1 || id == 0)
			return 1;
		t1 = now_us();
		printf("%.1f\n", t1 - t0);

		/* EOF ends the VM program */
		close(sv[0]);
		close(tap[1]);
		waitpid(pid, &status, 0);
	}
	return 0;
}
