/*
 * spawner: the vmm process's fork+exec helper (a "zygote").
 *
 * Node's child_process.spawn forks the whole Node process (1-4 ms, growing
 * with its RSS). This program is started once by src/layers/ProcessSpawner.ts
 * and forks the VM processes from its own tiny address space instead.
 *
 * Started with: fd 0-2 the vmm's stdio (what "inherit" children get), fd 3
 * one end of an AF_UNIX SOCK_SEQPACKET socketpair. At start it closes every
 * other fd, so that everything it holds besides 0-2 is close-on-exec: the
 * socket, /dev/null, and each received fd (MSG_CMSG_CLOEXEC). A child
 * therefore execs with exactly 0-2 and the fds dup2'ed to their targets
 * (dup2 clears FD_CLOEXEC on the new number only).
 *
 * Protocol. One request or reply per SEQPACKET message, host byte order,
 * every field 32 bits.
 *
 *   to the spawner
 *   SPAWN    {1, seq, flags, nfds, argc, envc, target[nfds], strings}
 *            flags: 1 = stdio inherit (else 0-2 on /dev/null),
 *                   2 = envc strings "K=V" are the whole environment
 *                       (else the spawner's own, i.e. the vmm's at start),
 *                   4 = early: answered as soon as the child is forked
 *                       (see below; version 2 on).
 *            strings: argc then envc NUL-terminated strings, packed;
 *            argv[0] is also the program, searched in PATH when it has no
 *            '/'. The nfds fds come by SCM_RIGHTS in the same message, in
 *            target order: fd i lands at number target[i] in the child.
 *   KILL     {3, seq, pid, signo}     kill(2), only for a pid not yet reaped
 *   SHUTDOWN {6, 0, 0, 0}             as EOF, but the EXITs are still sent
 *
 *   from the spawner (16 bytes each)
 *   HELLO    {0, version, own pid, max fds per SPAWN}    once, at start
 *   SPAWNED  {2, seq, pid, 0} or {2, seq, -1, errno}     errno: host's, from
 *            the checks, fork, or the child's setup or execve (reported
 *            through a close-on-exec pipe); for an early SPAWN, from the
 *            checks or fork only
 *   KILLED   {4, seq, 0, errno}
 *   EXIT     {5, pid, 0, exit code} or {5, pid, 1, signal}    each child
 *            exactly once, after its SPAWNED, in the order reaped; none
 *            for a child whose SPAWNED was a failure. An early child whose
 *            setup or exec failed is an EXIT {pid, 0, 127} like any other.
 *
 * Version 2 added the early flag (version 1 ignored it: a spawner that
 * answers HELLO with another version is not used).
 *
 * Replies to different requests may come out of request order (the vmm
 * matches them by seq): a SPAWN is answered when its child has exec'd, and
 * meanwhile later requests are read and answered. An early SPAWN (flag 4)
 * is answered right after its fork, before the child has exec'd, as
 * vmm.c's fork returns: its child has no exec-status pipe and is a live
 * child at once (KILL reaches it); if its setup or exec fails it
 * _exit(127)s and is reaped and reported by EXIT like any child, so the
 * vmm sees the failure only as that exit (vmm.c: EOF on the VM's socket,
 * then SIGCHLD).
 *
 * Children: setsid(), signals default and unblocked, PR_SET_PDEATHSIG
 * SIGKILL on Linux (the spawner killed by SIGKILL still takes its children
 * with it), stdio, fds, execve. Reaping: SIGCHLD is blocked except inside
 * ppoll, whose return runs the waitpid(-1, WNOHANG) loop.
 *
 * SPAWN is asynchronous: fork (not vfork, which would hold the spawner in
 * the kernel until the child has exec'd, unable to reap meanwhile), and the
 * read end of the child's close-on-exec pipe goes into the ppoll set as a
 * pending spawn. EOF on it: the exec succeeded, SPAWNED {seq, pid} is
 * queued. An errno on it: the child's setup or exec failed, the failure
 * SPAWNED is queued, and the child (which _exits at once) is reaped without
 * an EXIT. The reap loop may reap a pending child before its pipe was
 * looked at: it reads the pipe then (the child is dead, so it has EOF or
 * the errno), queues SPAWNED and then EXIT (or the failure and no EXIT).
 * While MAX_PENDING spawns are pending, requests are left unread.
 *
 * Replies never block: every reply goes into one in-memory FIFO (growing
 * as needed) and is sent with MSG_DONTWAIT as far as the socket takes it;
 * while anything is left, ppoll waits for POLLOUT as well as for requests
 * and SIGCHLD. So a vmm slow to read never keeps a dead child a zombie:
 * it is reaped at once and its EXIT waits in the queue. One FIFO for all
 * replies keeps their order: SPAWNED before its child's EXIT, and an EXIT
 * before any later reply (a KILL for a reaped pid is ESRCH and its KILLED
 * comes after the EXIT). Above HIGH_WATER unsent replies, requests are left
 * unread until the vmm catches up (backpressure; EXITs are bounded by the
 * children anyway).
 *
 * EOF on the socket, SHUTDOWN, a failed send (EPIPE), or SIGTERM/SIGINT/
 * SIGHUP: SIGKILL every child, reap them all, send what is queued while
 * the peer listens, exit 0. So when the vmm process dies, no VM is
 * orphaned.
 *
 * Build: cc -O2 -o build/spawner c/spawner.c (scripts/build-spawner.mjs).
 */
#define _GNU_SOURCE
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#define SOCK_FD		3
#define VERSION		2
#define MAX_FDS		128
#define MAX_REQ		(64 * 1024)
#define MAX_STRINGS	8192

enum {
	T_HELLO = 0, T_SPAWN = 1, T_SPAWNED = 2, T_KILL = 3, T_KILLED = 4,
	T_EXIT = 5, T_SHUTDOWN = 6
};
#define F_INHERIT	1
#define F_ENV		2
#define F_EARLY		4	/* answer after fork, not after exec (version 2) */
#define HDR_WORDS	6

extern char **environ;

static volatile sig_atomic_t got_chld, got_term;
static sigset_t handled;		/* blocked except inside ppoll */
static int devnull = -1;
static pid_t self_pid;

/* Requests land here; uint32_t alignment for the header and targets. */
static uint32_t req_words[MAX_REQ / 4 + 1];
static union {
	struct cmsghdr hdr;
	char buf[CMSG_SPACE(MAX_FDS * sizeof(int))];
} ctl;
static int rfds[MAX_FDS];
static char *strv[MAX_STRINGS + 2];

/* Live (unreaped) children whose SPAWNED is queued. */
static pid_t *kids;
static size_t nkids, capkids;

/*
 * Pending spawns: forked, exec not known yet (fd: the pipe's read end), or
 * exec failed, failure queued, not reaped yet (fd -1; no EXIT for it).
 */
#define MAX_PENDING	256
static struct pending {
	pid_t pid;
	uint32_t seq;
	int fd;
} pend[MAX_PENDING];
static size_t npend;

static void
on_signal(int sig)
{
	if (sig == SIGCHLD)
		got_chld = 1;
	else
		got_term = 1;
}

/*
 * The output queue: every reply (HELLO, SPAWNED, KILLED, EXIT) in the order
 * made, sent with MSG_DONTWAIT as far as the socket takes them. One FIFO for
 * all, so an EXIT for a pid always reaches the vmm before any later reply
 * (a KILLED for that pid is ESRCH, made after the EXIT was queued).
 */
static int32_t (*outq)[4];
static size_t qhead, qtail, qcap;
static int peer_gone;			/* a send failed for good: the vmm is gone */
static int send_stalled;		/* last send failed with neither EAGAIN nor success */

#define QLEN()		(qtail - qhead)
/* Above this many unsent replies, no more requests are read (backpressure). */
#define HIGH_WATER	4096

static void
flush(void)
{
	ssize_t n;

	send_stalled = 0;
	while (qhead < qtail && !peer_gone) {
		n = send(SOCK_FD, outq[qhead], sizeof(outq[qhead]), MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n == (ssize_t)sizeof(outq[qhead])) {
			qhead++;
			continue;
		}
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n == -1 && (errno == ENOBUFS || errno == ENOMEM)) {
			send_stalled = 1;	/* retried after a short wait */
			break;
		}
		/* EPIPE, ECONNRESET, ...: nobody will read them. */
		peer_gone = 1;
		qhead = qtail;
	}
	if (qhead == qtail)
		qhead = qtail = 0;
}

/* Room for one more reply at outq[qtail]; 0, or -1 if the vmm is gone. */
static int
make_room(void)
{
	struct pollfd w = { SOCK_FD, POLLOUT, 0 };
	int32_t (*q)[4];
	size_t cap;

	while (qtail == qcap && !peer_gone) {
		if (qhead > 0) {
			/* Slide the unsent ones to the front. */
			memmove(outq, outq + qhead, QLEN() * sizeof(outq[0]));
			qtail -= qhead;
			qhead = 0;
			break;
		}
		cap = qcap ? qcap * 2 : 256;
		q = realloc(outq, cap * sizeof(outq[0]));
		if (q != NULL) {
			outq = q;
			qcap = cap;
			break;
		}
		/* Out of memory: wait for the socket to take some. */
		poll(&w, 1, 10);
		flush();
	}
	return peer_gone ? -1 : 0;
}

static void
reply(uint32_t type, uint32_t a, int32_t b, int32_t c)
{
	if (make_room() == -1)
		return;
	outq[qtail][0] = (int32_t)type;
	outq[qtail][1] = (int32_t)a;
	outq[qtail][2] = b;
	outq[qtail][3] = c;
	qtail++;
	/* With others still waiting the socket was full: the main loop sends on POLLOUT. */
	if (QLEN() == 1)
		flush();
}

/* Room for one more child besides the pending ones, made before forking so that every started child fits. */
static int
reserve_kid(void)
{
	if (nkids + npend + 1 > capkids) {
		size_t cap = capkids ? capkids * 2 : 64;
		pid_t *p;

		while (cap < nkids + npend + 1)
			cap *= 2;
		p = realloc(kids, cap * sizeof(*p));
		if (p == NULL)
			return -1;
		kids = p;
		capkids = cap;
	}
	return 0;
}

static ssize_t
find_kid(pid_t pid)
{
	size_t i;

	for (i = nkids; i-- > 0;)
		if (kids[i] == pid)
			return (ssize_t)i;
	return -1;
}

static ssize_t
find_pend(pid_t pid)
{
	size_t i;

	for (i = 0; i < npend; i++)
		if (pend[i].pid == pid)
			return (ssize_t)i;
	return -1;
}

/*
 * Read pending spawn i's pipe (readable, or its child dead: `dead`) and
 * queue its SPAWNED. Success: it becomes a kid (room was reserved). Failure:
 * the failure reply; a dead child leaves the table, a live one (about to
 * _exit) is reaped now if it can be, else by the reap loop. Returns 1 if the
 * exec failed, 0 if it succeeded, -1 if the pipe has nothing yet.
 */
static int
settle(size_t i, int dead)
{
	int err = 0;
	ssize_t n;
	pid_t pid = pend[i].pid;

	do
		n = read(pend[i].fd, &err, sizeof(err));
	while (n == -1 && errno == EINTR);
	if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK) && !dead)
		return -1;
	close(pend[i].fd);
	pend[i].fd = -1;
	if (n == (ssize_t)sizeof(err) && err != 0) {
		/* Never reported as an EXIT: the request fails instead. */
		reply(T_SPAWNED, pend[i].seq, -1, err);
		if (dead || waitpid(pid, NULL, WNOHANG) == pid)
			pend[i] = pend[--npend];
		return 1;
	}
	kids[nkids++] = pid;
	reply(T_SPAWNED, pend[i].seq, pid, 0);
	pend[i] = pend[--npend];
	return 0;
}

static void
reaped(pid_t pid, int status)
{
	ssize_t i = find_pend(pid);

	if (i >= 0) {
		/* Its SPAWNED first: EOF means it had exec'd. A failed one gets no EXIT. */
		if (pend[i].fd == -1 || settle((size_t)i, 1) == 1) {
			if ((i = find_pend(pid)) >= 0)
				pend[i] = pend[--npend];
			return;
		}
	}
	i = find_kid(pid);
	if (i >= 0)
		kids[i] = kids[--nkids];
	if (WIFEXITED(status))
		reply(T_EXIT, (uint32_t)pid, 0, WEXITSTATUS(status));
	else
		reply(T_EXIT, (uint32_t)pid, 1, WTERMSIG(status));
}

static void
reap(void)
{
	pid_t pid;
	int status;

	for (;;) {
		pid = waitpid(-1, &status, WNOHANG);
		if (pid > 0)
			reaped(pid, status);
		else if (pid == -1 && errno == EINTR)
			continue;
		else
			return;
	}
}

/*
 * The end (EOF, SHUTDOWN, SIGTERM/SIGINT/SIGHUP, the vmm gone): SIGKILL every
 * child; the main loop then reaps them, sends what is queued while the peer
 * listens, and exits once both are done.
 */
static int closing;

static void
begin_shutdown(void)
{
	size_t i;

	if (closing)
		return;
	closing = 1;
	for (i = 0; i < nkids; i++)
		kill(kids[i], SIGKILL);
	for (i = 0; i < npend; i++)
		kill(pend[i].pid, SIGKILL);
}

/* ppoll itself failing (not EINTR): kill, reap blocking, exit; the queue is dropped. */
static void
hard_exit(void)
{
	pid_t pid;
	int status;

	closing = 0;
	begin_shutdown();
	for (;;) {
		pid = waitpid(-1, &status, 0);
		if (pid > 0)
			reaped(pid, status);
		else if (errno != EINTR)
			break;
	}
	_exit(0);
}

/* Close every fd from `from` on (the spawner keeps nothing it did not make). */
static void
close_from(int from)
{
#if defined(SYS_close_range)
	if (syscall(SYS_close_range, (unsigned)from, ~0U, 0) == 0)
		return;
#endif
	DIR *d = opendir("/proc/self/fd");
	if (d != NULL) {
		struct dirent *de;
		int dfd = dirfd(d), fd;

		while ((de = readdir(d)) != NULL) {
			fd = atoi(de->d_name);
			if (de->d_name[0] != '.' && fd >= from && fd != dfd)
				close(fd);
		}
		closedir(d);
		return;
	}
	struct rlimit rl;
	int fd, top = 1024;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
		top = rl.rlim_cur > 65536 ? 65536 : (int)rl.rlim_cur;
	for (fd = from; fd < top; fd++)
		close(fd);
}

/* ---- the child, between fork and exec: syscalls only, no allocation ---- */

/* execvpe with PATH taken from the child's own environment. Returns errno. */
static int
exec_search(const char *file, char *const argv[], char *const envp[])
{
	char path[PATH_MAX];
	const char *p, *end, *dirs = NULL;
	size_t flen, dlen;
	int err = ENOENT, eacces = 0;
	char *const *e;

	if (file[0] == '\0')
		return ENOENT;
	if (strchr(file, '/') != NULL) {
		execve(file, argv, envp);
		return errno;
	}
	for (e = envp; *e != NULL; e++)
		if (strncmp(*e, "PATH=", 5) == 0) {
			dirs = *e + 5;
			break;
		}
	if (dirs == NULL)
		dirs = "/bin:/usr/bin";
	flen = strlen(file);
	for (p = dirs;; p = end + 1) {
		end = strchr(p, ':');
		if (end == NULL)
			end = p + strlen(p);
		dlen = (size_t)(end - p);
		if (dlen == 0) {
			p = ".";
			dlen = 1;
		}
		if (dlen + 1 + flen + 1 <= sizeof(path)) {
			memcpy(path, p, dlen);
			path[dlen] = '/';
			memcpy(path + dlen + 1, file, flen + 1);
			execve(path, argv, envp);
			err = errno;
			if (err == EACCES)
				eacces = 1;
			else if (err != ENOENT && err != ENOTDIR && err != ENAMETOOLONG &&
			    err != ELOOP && err != ESTALE && err != ENODEV && err != ETIMEDOUT)
				return err;
		}
		if (*end == '\0')
			break;
	}
	return eacces ? EACCES : err;
}

/* Move fd to a close-on-exec number >= floor unless it already is >= floor. */
static int
above(int fd, int floor)
{
	return fd >= floor ? fd : fcntl(fd, F_DUPFD_CLOEXEC, floor);
}

/*
 * Returns the errno that stopped it (it does not return on success).
 * *errpipe is moved out of the targets' way too.
 */
static int
child(int nfds, const int32_t *target, int inherit, char *const argv[], char *const envp[],
    int *errpipe)
{
	sigset_t none;
	int floor = 3, i, fd, null = devnull;

	if (setsid() == -1)
		return errno;
#ifdef __linux__
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) == -1)
		return errno;
	if (getppid() != self_pid)	/* the spawner died before prctl */
		return ESRCH;
#endif
	/* Everything still needed goes above the highest target first. */
	for (i = 0; i < nfds; i++)
		if (target[i] >= floor)
			floor = target[i] + 1;
	if (*errpipe >= 0 && (*errpipe = above(*errpipe, floor)) == -1)
		return errno;
	for (i = 0; i < nfds; i++)
		if ((rfds[i] = above(rfds[i], floor)) == -1)
			return errno;
	if (!inherit) {
		if ((null = above(null, floor)) == -1)
			return errno;
		for (fd = 0; fd < 3; fd++)
			if (dup2(null, fd) == -1)
				return errno;
	}
	for (i = 0; i < nfds; i++)
		if (dup2(rfds[i], target[i]) == -1)
			return errno;
	signal(SIGCHLD, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	return exec_search(argv[0], argv, envp);
}

/* ---- requests ---- */

static int
do_spawn(size_t len, int nrecv, uint32_t seq)
{
	uint32_t flags, nfds, argc, envc, nstr, i;
	const int32_t *target;
	char *s, *end, **argv, **envp;
	size_t off;
	pid_t pid;
	int err;

	if (len < HDR_WORDS * 4)
		return EINVAL;
	flags = req_words[2];
	nfds = req_words[3];
	argc = req_words[4];
	envc = req_words[5];
	if (nfds != (uint32_t)nrecv || nfds > MAX_FDS)
		return EINVAL;
	off = (HDR_WORDS + nfds) * 4;
	if (off > len || argc < 1 || argc > MAX_STRINGS || envc > MAX_STRINGS - argc)
		return argc < 1 || off > len ? EINVAL : E2BIG;
	target = (const int32_t *)(req_words + HDR_WORDS);
	for (i = 0; i < nfds; i++)
		if (target[i] < 0 || target[i] >= (1 << 24))
			return EBADF;
	/* Split the strings in place. */
	s = (char *)req_words + off;
	end = (char *)req_words + len;
	nstr = argc + envc;
	argv = strv;
	envp = strv + argc + 1;
	for (i = 0; i < nstr; i++) {
		char *nul = memchr(s, '\0', (size_t)(end - s));

		if (nul == NULL)
			return EINVAL;
		strv[i < argc ? i : i + 1] = s;
		s = nul + 1;
	}
	argv[argc] = NULL;
	strv[nstr + 1] = NULL;
	if ((flags & F_ENV) == 0)
		envp = environ;
	if (reserve_kid() == -1)
		return ENOMEM;

	int p[2] = { -1, -1 };

	/*
	 * Both ends close-on-exec and non-blocking; the child's 4 bytes always
	 * fit. None for an early spawn: nobody waits for its exec.
	 */
	if ((flags & F_EARLY) == 0 && pipe2(p, O_CLOEXEC | O_NONBLOCK) == -1)
		return errno;
	pid = fork();
	if (pid == 0) {
		int w = p[1];

		if (p[0] >= 0)
			close(p[0]);
		err = child((int)nfds, target, flags & F_INHERIT, argv, envp, &w);
		while (w >= 0 && write(w, &err, sizeof(err)) == -1 && errno == EINTR)
			;
		_exit(127);
	}
	if (pid == -1) {
		err = errno;
		if (p[0] >= 0) {
			close(p[0]);
			close(p[1]);
		}
		return err;
	}
	if (flags & F_EARLY) {
		/*
		 * A live child now (room was reserved), its SPAWNED queued before
		 * anything can reap it: so before its EXIT, whatever its exec does.
		 */
		kids[nkids++] = pid;
		reply(T_SPAWNED, seq, pid, 0);
		return 0;
	}
	close(p[1]);
	/* Answered when the pipe says how the exec went (main loop, or reap). */
	pend[npend].pid = pid;
	pend[npend].seq = seq;
	pend[npend].fd = p[0];
	npend++;
	return 0;
}

static void
do_kill(uint32_t seq, pid_t pid, int sig)
{
	int err = 0;

	if (pid <= 0 || find_kid(pid) < 0)
		err = ESRCH;
	else if (sig <= 0 || sig >= NSIG)
		err = EINVAL;
	else if (kill(pid, sig) == -1)
		err = errno;
	reply(T_KILLED, seq, 0, err);
}

/* One message; 0 when the socket has nothing more now, -1 at EOF or a hard error. */
static int
handle_one(void)
{
	struct iovec iov = { req_words, MAX_REQ };
	struct msghdr msg;
	struct cmsghdr *c;
	ssize_t n;
	int nrecv = 0, i, err;
	uint32_t type, seq;

	memset(&msg, 0, sizeof(msg));
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = ctl.buf;
	msg.msg_controllen = sizeof(ctl.buf);
	n = recvmsg(SOCK_FD, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (n == -1)
		return errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
	if (n == 0)
		return -1;
	for (c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		for (i = 0; i < k; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (nrecv < MAX_FDS)
				rfds[nrecv++] = fd;
			else
				close(fd);
		}
	}
	type = n >= 4 ? req_words[0] : ~0U;
	seq = n >= 8 ? req_words[1] : 0;
	if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
		err = EMSGSIZE;
		if (type == T_SPAWN)
			reply(T_SPAWNED, seq, -1, err);
	} else if (type == T_SPAWN) {
		err = npend < MAX_PENDING ? do_spawn((size_t)n, nrecv, seq) : EAGAIN;
		if (err != 0)
			reply(T_SPAWNED, seq, -1, err);
	} else if (type == T_KILL && n >= 16) {
		do_kill(seq, (pid_t)req_words[2], (int)req_words[3]);
	} else if (type == T_SHUTDOWN) {
		for (i = 0; i < nrecv; i++)
			close(rfds[i]);
		return -1;
	}
	for (i = 0; i < nrecv; i++)
		close(rfds[i]);
	return 1;
}

int
main(void)
{
	static struct pollfd pfds[1 + MAX_PENDING];
	struct sigaction sa;
	struct pollfd *pfd = &pfds[0];
	struct timespec stall = { 0, 10 * 1000 * 1000 };
	sigset_t waitmask;
	int fl, i;
	size_t k, np;

	self_pid = getpid();
	close_from(SOCK_FD + 1);
	if (fcntl(SOCK_FD, F_SETFD, FD_CLOEXEC) == -1)
		_exit(2);
	fl = fcntl(SOCK_FD, F_GETFL);
	if (fl != -1 && (fl & O_NONBLOCK))
		fcntl(SOCK_FD, F_SETFL, fl & ~O_NONBLOCK);
	devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (devnull == -1)
		_exit(2);

	sigemptyset(&handled);
	sigaddset(&handled, SIGCHLD);
	sigaddset(&handled, SIGTERM);
	sigaddset(&handled, SIGINT);
	sigaddset(&handled, SIGHUP);
	sigprocmask(SIG_BLOCK, &handled, &waitmask);
	sigdelset(&waitmask, SIGCHLD);
	sigdelset(&waitmask, SIGTERM);
	sigdelset(&waitmask, SIGINT);
	sigdelset(&waitmask, SIGHUP);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_NOCLDSTOP;
	sigaction(SIGCHLD, &sa, NULL);
	sa.sa_flags = 0;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	/*
	 * No PR_SET_PDEATHSIG here: the socket's EOF already tells us the vmm is
	 * gone, and it would fire when the *thread* that started us ends.
	 */

	reply(T_HELLO, VERSION, self_pid, MAX_FDS);

	for (;;) {
		if (got_chld) {
			got_chld = 0;
			reap();
		}
		if (got_term || peer_gone)
			begin_shutdown();
		if (closing && nkids == 0 && npend == 0 && QLEN() == 0)
			_exit(0);
		pfd->fd = SOCK_FD;
		pfd->events = 0;
		pfd->revents = 0;
		if (!closing && QLEN() < HIGH_WATER && npend < MAX_PENDING)
			pfd->events |= POLLIN;
		if (QLEN() > 0)
			pfd->events |= POLLOUT;
		if (pfd->events == 0)
			pfd->fd = -1;	/* nothing to send, no request wanted: wait for the rest */
		/* The pending spawns' pipes (-1, ignored, for a failed one not reaped yet). */
		np = npend;
		for (k = 0; k < np; k++) {
			pfds[1 + k].fd = pend[k].fd;
			pfds[1 + k].events = POLLIN;
			pfds[1 + k].revents = 0;
		}
		if (ppoll(pfds, 1 + np, send_stalled ? &stall : NULL, &waitmask) == -1) {
			if (errno == EINTR)
				continue;
			hard_exit();
		}
		/* Exec results first (nothing was reaped or opened since ppoll: the fds are theirs). */
		for (k = 0; k < np; k++) {
			size_t j;

			if (pfds[1 + k].fd < 0 || pfds[1 + k].revents == 0)
				continue;
			for (j = 0; j < npend; j++)
				if (pend[j].fd == pfds[1 + k].fd) {
					settle(j, 0);
					break;
				}
		}
		if (QLEN() > 0 && (pfd->revents & (POLLOUT | POLLHUP | POLLERR | POLLNVAL) || send_stalled))
			flush();
		if (!closing && (pfd->revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL))) {
			/* A few requests per wake-up, then reap again. */
			for (i = 0; i < 32 && npend < MAX_PENDING && QLEN() < HIGH_WATER; i++) {
				int r = handle_one();
				if (r < 0) {
					begin_shutdown();
					break;
				}
				if (r == 0)
					break;
			}
		}
	}
}
