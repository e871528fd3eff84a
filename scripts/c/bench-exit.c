/*
 * bench-exit: the C reference for the exit notification in bench-vmm.ts.
 * A parent in C that starts the VM program and, when it dies, reports it
 * as vmm_sighdlr does: SIGCHLD -> waitpid -> a TERMINATE_VM_EVENT imsg
 * (16-byte header + struct vmop_result, 28 bytes) written on its socket to
 * the driver, fd 3. SIGCHLD is taken with sigwaitinfo: the fastest a C
 * event loop gets.
 *
 * Protocol on fd 3: the driver writes one byte; we start a child and write
 * its pid (4 bytes); the driver kills it; we write the event. EOF: exit.
 *
 *   bench-exit vmprog
 */
#include <sys/socket.h>
#include <sys/wait.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define TERMINATE_VM_EVENT	18
#define X_EIO			5

int
main(int argc, char **argv)
{
	sigset_t chld;
	int devnull, status;
	uint32_t id = 0;

	if (argc != 2)
		return 2;
	devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
	fcntl(3, F_SETFL, fcntl(3, F_GETFL) & ~O_NONBLOCK);
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);

	for (;;) {
		unsigned char go, msg[16 + 28];
		uint32_t hdr[4], res[3];
		int sv[2];
		char fdarg[16];
		pid_t pid;
		siginfo_t si;

		if (read(3, &go, 1) != 1)
			return 0;
		if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == -1)
			return 1;
		fcntl(sv[0], F_SETFD, FD_CLOEXEC);
		pid = fork();
		if (pid == 0) {
			sigprocmask(SIG_UNBLOCK, &chld, NULL);
			setsid();
			dup2(devnull, 0);
			dup2(devnull, 1);
			dup2(devnull, 2);
			snprintf(fdarg, sizeof(fdarg), "%d", sv[1]);
			execl(argv[1], argv[1], "-V", fdarg, "-i", "-1", "-j", "-1", (char *)NULL);
			_exit(errno);
		}
		close(sv[1]);
		if (write(3, &pid, 4) != 4)
			return 1;

		/* vmm_sighdlr */
		while (sigwaitinfo(&chld, &si) == -1 && errno == EINTR)
			;
		if (waitpid(pid, &status, 0) != pid)
			return 1;
		res[0] = WIFEXITED(status) ? (uint32_t)WEXITSTATUS(status) : X_EIO;
		res[1] = ++id;
		res[2] = 0;
		hdr[0] = TERMINATE_VM_EVENT;
		hdr[1] = sizeof(msg);
		hdr[2] = 0xffffffff;
		hdr[3] = 1;
		memset(msg, 0, sizeof(msg));
		memcpy(msg, hdr, sizeof(hdr));
		memcpy(msg + 16, res, sizeof(res));
		if (write(3, msg, sizeof(msg)) != (ssize_t)sizeof(msg))
			return 1;
		close(sv[0]);
	}
}
