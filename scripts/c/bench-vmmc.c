/*
 * bench-vmmc: a second C reference for the start latency in bench-vmm.ts,
 * timed through the same messages as bin/vmm. bench-start.c times C's
 * fork+exec and the handshake inside one process (the reference);
 * this is the same start done by a minimal vmm in C on fd 3, driven by the
 * same parent stand-in as bin/vmm, so that its figure also holds the two
 * process wake-ups and the message reading and writing that a vmm's start
 * latency has whatever it is written in.
 *
 * What it does, as vmm.c 1.136 does it (one VM at a time is enough for the
 * benchmark, which starts and stops them in turn):
 *   START_VM_REQUEST (its fd: the kernel), START_VM_CDROM, START_VM_DISK,
 *   START_VM_IF: the fds kept for the VM (received without close-on-exec,
 *   as libutil's imsg_read leaves them, so that the VM process inherits them);
 *   START_VM_END (its fd: the tty): vmm_start_vm: socketpair, fork, in the
 *   child setsid, stdio on /dev/null and exec of the VM program with -V;
 *   in the parent struct vmd_vm written, the passed fds closed, the local
 *   prefix written, the 4-byte id read (blocking, atomicio), then
 *   START_VM_RESPONSE {0, vmid, pid};
 *   TERMINATE_VM_REQUEST: SIGKILL, waitpid, the VM's socket closed,
 *   TERMINATE_VM_EVENT {0, vmid, pid};
 *   GET_INFO_VM_REQUEST: GET_INFO_VM_END_DATA (no VMs listed);
 *   anything else (CONFIG) ignored. EOF on fd 3 ends it.
 *
 *   bench-vmmc vmprog [anything...]       (arguments after vmprog are ignored)
 */
#include <sys/socket.h>
#include <sys/wait.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include "../../c/vmd_wire.h"

#define START_VM_REQUEST	5
#define START_VM_CDROM		6
#define START_VM_DISK		7
#define START_VM_IF		8
#define START_VM_END		9
#define START_VM_RESPONSE	10
#define TERMINATE_VM_REQUEST	16
#define TERMINATE_VM_EVENT	18
#define SIZEOF_VMOP_RESULT	28
#define MAXFDS			64

static unsigned char inbuf[4 * MAX_IMSGSIZE];
static size_t have;
static int fdq[MAXFDS];
static int nfdq;

static struct {
	uint32_t vmid;
	int kernel, cdrom, disks[4][4], ndisk[4], ndisks, vif[4], tty;
	int sock;
	pid_t pid;
} vm;

static void
vm_reset(void)
{
	int i, j;

	vm.kernel = vm.cdrom = vm.tty = -1;
	for (i = 0; i < 4; i++) {
		vm.ndisk[i] = 0;
		vm.vif[i] = -1;
		for (j = 0; j < 4; j++)
			vm.disks[i][j] = -1;
	}
	vm.ndisks = 0;
}

static void
closefd(int *fd)
{
	if (*fd != -1)
		close(*fd);
	*fd = -1;
}

/* the VM's passed fds, closed once they are the child's */
static void
vm_closefds(void)
{
	int i, j;

	closefd(&vm.kernel);
	closefd(&vm.cdrom);
	closefd(&vm.tty);
	for (i = 0; i < 4; i++) {
		closefd(&vm.vif[i]);
		for (j = 0; j < 4; j++)
			closefd(&vm.disks[i][j]);
	}
}

static int
reply(uint32_t type, uint32_t peerid, int32_t res, uint32_t id, int32_t pid)
{
	unsigned char m[HDR + SIZEOF_VMOP_RESULT];
	uint32_t h[4] = { type, sizeof(m), peerid, (uint32_t)getpid() };

	memset(m, 0, sizeof(m));
	memcpy(m, h, sizeof(h));
	memcpy(m + HDR + 0, &res, 4);
	memcpy(m + HDR + 4, &id, 4);
	memcpy(m + HDR + 8, &pid, 4);
	return writen(3, m, sizeof(m));
}

/* vmm_start_vm: 0, or an errno for START_VM_RESPONSE */
static int
start_vm(const char *vmprog, int devnull)
{
	static unsigned char buf[SIZEOF_VMD_VM];
	unsigned char prefix[SIZEOF_PREFIX] = { 0 };
	uint64_t ndisks = (uint64_t)vm.ndisks;
	int sv[2], i, j;
	uint32_t id;
	char fdarg[16];

	memset(buf, 0, sizeof(buf));
	memcpy(buf + OFF_VMID, &vm.vmid, 4);
	memcpy(buf + OFF_NDISKS, &ndisks, 8);
	memcpy(buf + OFF_KERNEL, &vm.kernel, 4);
	memcpy(buf + OFF_CDROM, &vm.cdrom, 4);
	for (i = 0; i < 4; i++)
		for (j = 0; j < 4; j++)
			memcpy(buf + OFF_DISKS + 16 * (size_t)i + 4 * (size_t)j, &vm.disks[i][j], 4);
	for (i = 0; i < 4; i++)
		memcpy(buf + OFF_VIF_FD + 56 * (size_t)i, &vm.vif[i], 4);
	memcpy(buf + OFF_TTY, &vm.tty, 4);

	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == -1)
		return X_EIO;
	fcntl(sv[0], F_SETFD, FD_CLOEXEC);
	vm.pid = fork();
	if (vm.pid == -1) {
		close(sv[0]);
		close(sv[1]);
		return X_EIO;
	}
	if (vm.pid == 0) {
		setsid();
		dup2(devnull, 0);
		dup2(devnull, 1);
		dup2(devnull, 2);
		snprintf(fdarg, sizeof(fdarg), "%d", sv[1]);
		execl(vmprog, vmprog, "-V", fdarg, "-i", "-1", "-j", "-1", (char *)NULL);
		_exit(errno);
	}
	close(sv[1]);
	vm.sock = sv[0];
	if (!writen(vm.sock, buf, sizeof(buf)))
		return X_EIO;
	vm_closefds();
	if (!writen(vm.sock, prefix, sizeof(prefix)) || !readn(vm.sock, &id, sizeof(id)) || id == 0)
		return X_EIO;
	return 0;
}

static void
stop_vm(void)
{
	int status;

	if (vm.pid <= 0)
		return;
	kill(vm.pid, SIGKILL);
	waitpid(vm.pid, &status, 0);
	closefd(&vm.sock);
	vm.pid = 0;
}

int
main(int argc, char **argv)
{
	int devnull;

	if (argc < 2)
		return 2;
	devnull = open("/dev/null", O_RDWR | O_CLOEXEC);	/* vmm_run opens it early */
	fcntl(3, F_SETFD, FD_CLOEXEC);
	fcntl(3, F_SETFL, fcntl(3, F_GETFL) & ~O_NONBLOCK);
	vm_reset();
	vm.sock = -1;

	for (;;) {
		union {
			struct cmsghdr hdr;
			char buf[CMSG_SPACE(sizeof(int) * 8)];
		} cmsgbuf;
		struct iovec iov = { inbuf + have, sizeof(inbuf) - have };
		struct msghdr msg = { 0 };
		struct cmsghdr *cm;
		size_t off = 0;
		ssize_t n;

		msg.msg_iov = &iov;
		msg.msg_iovlen = 1;
		msg.msg_control = cmsgbuf.buf;
		msg.msg_controllen = sizeof(cmsgbuf.buf);
		if ((n = recvmsg(3, &msg, 0)) == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		for (cm = CMSG_FIRSTHDR(&msg); cm != NULL; cm = CMSG_NXTHDR(&msg, cm)) {
			int *fds = (int *)CMSG_DATA(cm);
			size_t k, nf = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);

			if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
				continue;
			for (k = 0; k < nf; k++) {
				if (nfdq == MAXFDS)
					return 1;
				fdq[nfdq++] = fds[k];
			}
		}
		have += (size_t)n;

		while (have - off >= HDR) {
			uint32_t h[4], len, n32 = 0;
			int fd = -1;

			memcpy(h, inbuf + off, sizeof(h));
			len = h[1] & ~FD_MARK;
			if (len < HDR || len > MAX_IMSGSIZE)
				return 1;
			if (have - off < len)
				break;
			if ((h[1] & FD_MARK) && nfdq > 0) {
				fd = fdq[0];
				memmove(fdq, fdq + 1, sizeof(int) * (size_t)--nfdq);
			}
			if (len >= HDR + 4)
				memcpy(&n32, inbuf + off + HDR, 4);
			switch (h[0]) {
			case START_VM_REQUEST:
				vm_closefds();
				vm_reset();
				vm.vmid = h[2];
				vm.kernel = fd;
				break;
			case START_VM_CDROM:
				vm.cdrom = fd;
				break;
			case START_VM_DISK:
				if (n32 < 4 && vm.ndisk[n32] < 4) {
					vm.disks[n32][vm.ndisk[n32]++] = fd;
					if ((int)n32 + 1 > vm.ndisks)
						vm.ndisks = (int)n32 + 1;
				} else
					closefd(&fd);
				break;
			case START_VM_IF:
				if (n32 < 4 && vm.vif[n32] == -1)
					vm.vif[n32] = fd;
				else
					closefd(&fd);
				break;
			case START_VM_END: {
				int res;

				vm.tty = fd;
				res = start_vm(argv[1], devnull);
				if (!reply(START_VM_RESPONSE, h[2], res, vm.vmid, res == 0 ? vm.pid : 0))
					return 1;
				if (res != 0) {
					vm_closefds();
					stop_vm();
				}
				break;
			}
			case TERMINATE_VM_REQUEST: {
				pid_t pid = vm.pid;

				stop_vm();
				if (!reply(TERMINATE_VM_EVENT, h[2], 0, n32, pid))
					return 1;
				break;
			}
			case GET_INFO_VM_REQUEST: {
				unsigned char m[HDR + 4] = { 0 };
				uint32_t r[4] = { GET_INFO_VM_END_DATA, sizeof(m), h[2], (uint32_t)getpid() };

				closefd(&fd);
				memcpy(m, r, sizeof(r));
				if (!writen(3, m, sizeof(m)))
					return 1;
				break;
			}
			default:
				closefd(&fd);
			}
			off += len;
		}
		memmove(inbuf, inbuf + off, have - off);
		have -= off;
	}
	stop_vm();
	return 0;
}
