/*
 * The C reference for scripts/bench-spawn.ts, and the child every variant
 * starts.
 *
 *   spawn_ref child byte FD     write one byte to FD, exit 0
 *   spawn_ref child shake FD    read SHAKE bytes from FD (the vmm's struct
 *                               vmd_vm + local prefix), write a 4-byte id, exit 0
 *   spawn_ref bench N SELF      N iterations of each method (fork+exec,
 *                               posix_spawn), each iteration two children:
 *                               "byte" on a pipe, "shake" on a socketpair.
 *                               One line per iteration:
 *                               METHOD PID_MS BYTE_MS SHAKE_MS
 *
 * The child's side is what vmm gives a VM: own session, 0-2 on /dev/null,
 * the fd at a number of its own (3 here), nothing else (all close-on-exec).
 */
#define _GNU_SOURCE
#include <sys/socket.h>
#include <sys/wait.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SHAKE 13312

extern char **environ;

static double
now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int
io(int fd, void *buf, size_t len, int wr)
{
	char *p = buf;

	while (len > 0) {
		ssize_t n = wr ? write(fd, p, len) : read(fd, p, len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && errno == EAGAIN) {	/* vmm's end is non-blocking, so is ours */
			struct pollfd pfd = { fd, wr ? POLLOUT : POLLIN, 0 };
			poll(&pfd, 1, -1);
			continue;
		}
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int
child(const char *mode, int fd)
{
	static char buf[SHAKE];
	unsigned id = 7;

	if (strcmp(mode, "byte") == 0)
		return io(fd, "b", 1, 1) == 0 ? 0 : 1;
	if (io(fd, buf, SHAKE, 0) == -1)
		return 2;
	return io(fd, &id, 4, 1) == 0 ? 0 : 3;
}

static int devnull;

static pid_t
start(int method, const char *self, const char *mode, int fd)
{
	char *argv[] = { (char *)self, "child", (char *)mode, "3", NULL };
	pid_t pid;

	if (method == 0) {
		pid = fork();
		if (pid == 0) {
			setsid();
			dup2(devnull, 0);
			dup2(devnull, 1);
			dup2(devnull, 2);
			dup2(fd, 3);
			execv(self, argv);
			_exit(127);
		}
		return pid;
	}
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;

	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&at);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSID);
	posix_spawn_file_actions_adddup2(&fa, devnull, 0);
	posix_spawn_file_actions_adddup2(&fa, devnull, 1);
	posix_spawn_file_actions_adddup2(&fa, devnull, 2);
	posix_spawn_file_actions_adddup2(&fa, fd, 3);
	if (posix_spawn(&pid, self, &fa, &at, argv, environ) != 0)
		pid = -1;
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	return pid;
}

static int
bench(int n, const char *self)
{
	static char msg[SHAKE];
	static const char *names[] = { "fork", "posix_spawn" };
	int method, i;

	devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
	memset(msg, 0x5a, sizeof(msg));
	for (method = 0; method < 2; method++) {
		for (i = 0; i < n; i++) {
			int p[2], s[2];
			unsigned id;
			char c;
			double t0, t1, t2, t3;
			pid_t pid;

			if (pipe2(p, O_CLOEXEC) == -1 ||
			    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s) == -1)
				return 1;
			t0 = now();
			pid = start(method, self, "byte", p[1]);
			t1 = now();
			if (pid == -1 || io(p[0], &c, 1, 0) == -1)
				return 1;
			t2 = now();
			waitpid(pid, NULL, 0);
			close(p[0]);
			close(p[1]);

			t3 = now();
			pid = start(method, self, "shake", s[1]);
			close(s[1]);
			if (pid == -1 || io(s[0], msg, SHAKE, 1) == -1 || io(s[0], &id, 4, 0) == -1)
				return 1;
			printf("%s %.4f %.4f %.4f\n", names[method], t1 - t0, t2 - t0, now() - t3);
			waitpid(pid, NULL, 0);
			close(s[0]);
		}
	}
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "child") == 0)
		return child(argv[2], atoi(argv[3]));
	if (argc == 4 && strcmp(argv[1], "bench") == 0)
		return bench(atoi(argv[2]), argv[3]);
	fprintf(stderr, "usage: spawn_ref child byte|shake FD | bench N SELF\n");
	return 64;
}
