/*
 * vmfuzz: a hostile VM process for the reliability fuzzer (scripts/fuzz.ts,
 * test/reliability). The vmm execs it for every VM (--vm-exec); it peeks at
 * the struct vmd_vm the vmm writes and
 *
 *  - for a VM whose name does not start with "fz-", execs the well-behaved
 *    C VM program ($VMFUZZ_VMPROG, c/vmprog.c) on the same socket, nothing
 *    consumed: the innocent bystanders;
 *  - for "fz-..." VMs, completes the start handshake itself and then sends
 *    the vmm a stream of messages: benign ones (VM_SHUTDOWN, VM_REBOOT,
 *    PAUSE/UNPAUSE_VM_RESPONSE of the right size, some with an fd), and
 *    after a random number of them one hostile one: an unknown type, a
 *    response of the wrong size, a header whose len is below 16 or above
 *    MAX_IMSGSIZE, or a frame cut short by exit. It keeps sending benign
 *    messages until the vmm ends it (SIGTERM), or exits after a cut frame.
 *
 * A VM named "fz-id-N" instead answers the handshake with another VM's id
 * N and then idles (does the vmm accept an id that is not its own?).
 *
 * It reads and discards whatever the vmm sends it, so that it never
 * pushes back. It appends one line per event to $VMFUZZ_LOG (O_APPEND):
 *   H <pid> <vmid> <kind> <sent>    the hostile message went out
 *   X <pid> <vmid> <sent> <fds> <why>   exit (SIGTERM, EPIPE, EOF, cut)
 * Seeded by $VMFUZZ_SEED and the VM id, so a run can be replayed;
 * $VMFUZZ_BENIGN_MAX bounds the benign messages before the hostile one
 * (default 20000).
 */
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SIZEOF_VMD_VM	13352
#define OFF_NAME	4
#define OFF_VMID	8400
#define SIZEOF_PREFIX	40
#define HDR		16
#define FD_MARK		0x80000000u
#define MAX_IMSGSIZE	16384
#define SIZEOF_RESULT	28
#define FORGED_ID_BASE	0x40000000u

/* imsg types, IMSG_PROC_MAX = 5 */
#define PAUSE_VM_RESPONSE	12
#define UNPAUSE_VM_RESPONSE	14
#define VM_SHUTDOWN		37
#define VM_REBOOT		38

#define X_EIO	5

static int sock = -1, logfd = -1, devnull = -1;
static uint32_t vmid;
static volatile unsigned long sent, fds_sent;
static uint64_t rs;

static uint64_t
rnd(void)
{
	rs ^= rs >> 12;
	rs ^= rs << 25;
	rs ^= rs >> 27;
	return rs * 2685821657736338717ULL;
}

static uint32_t
rn(uint32_t n)
{
	return n == 0 ? 0 : (uint32_t)(rnd() % n);
}

/* async-signal-safe line building */
static size_t
put_str(char *b, size_t at, const char *s)
{
	while (*s && at < 250)
		b[at++] = *s++;
	return at;
}

static size_t
put_num(char *b, size_t at, unsigned long v)
{
	char t[24];
	int n = 0;
	do {
		t[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v > 0);
	while (n > 0 && at < 250)
		b[at++] = t[--n];
	return at;
}

static void
log_line(char tag, const char *kind)
{
	char b[256];
	size_t at = 0;
	if (logfd < 0)
		return;
	b[at++] = tag;
	b[at++] = ' ';
	at = put_num(b, at, (unsigned long)getpid());
	b[at++] = ' ';
	at = put_num(b, at, vmid);
	b[at++] = ' ';
	if (tag == 'H') {
		at = put_str(b, at, kind);
		b[at++] = ' ';
		at = put_num(b, at, sent);
	} else {
		at = put_num(b, at, sent);
		b[at++] = ' ';
		at = put_num(b, at, fds_sent);
		b[at++] = ' ';
		at = put_str(b, at, kind);
	}
	b[at++] = '\n';
	(void)write(logfd, b, at);
}

static void
leave(const char *why, int code)
{
	log_line('X', why);
	_exit(code);
}

static void
on_term(int sig)
{
	(void)sig;
	leave("sigterm", 0);
}

/* read and drop what the vmm sent; EOF ends us as vm.c does */
static void
drain(void)
{
	char buf[65536];
	for (;;) {
		ssize_t r = recv(sock, buf, sizeof(buf), MSG_DONTWAIT);
		if (r > 0)
			continue;
		if (r == 0)
			leave("eof", 0);
		if (errno == EINTR)
			continue;
		return;		/* EAGAIN, or an error the next send sees */
	}
}

static void
wait_writable(void)
{
	struct pollfd p = { sock, POLLOUT | POLLIN, 0 };
	for (;;) {
		if (poll(&p, 1, 1000) > 0) {
			if (p.revents & POLLIN)
				drain();
			if (p.revents & (POLLOUT | POLLERR | POLLHUP))
				return;
		}
	}
}

/* send all of buf, the first sendmsg carrying fd if fd >= 0 */
static void
send_all(const unsigned char *buf, size_t n, int fd)
{
	size_t off = 0;
	while (off < n) {
		struct iovec iov = { (void *)(buf + off), n - off };
		struct msghdr msg;
		union {
			struct cmsghdr h;
			char b[CMSG_SPACE(sizeof(int))];
		} c;
		ssize_t r;

		memset(&msg, 0, sizeof(msg));
		msg.msg_iov = &iov;
		msg.msg_iovlen = 1;
		if (fd >= 0) {
			struct cmsghdr *cm;
			memset(&c, 0, sizeof(c));
			msg.msg_control = c.b;
			msg.msg_controllen = sizeof(c.b);
			cm = CMSG_FIRSTHDR(&msg);
			cm->cmsg_len = CMSG_LEN(sizeof(int));
			cm->cmsg_level = SOL_SOCKET;
			cm->cmsg_type = SCM_RIGHTS;
			memcpy(CMSG_DATA(cm), &fd, sizeof(int));
		}
		r = sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (r > 0) {
			off += (size_t)r;
			if (fd >= 0)
				fds_sent++;
			fd = -1;
		} else if (r == -1 && (errno == EAGAIN || errno == EINTR || errno == ENOBUFS)) {
			wait_writable();
		} else {
			leave("epipe", 0);
		}
	}
}

static void
send_imsg(uint32_t type, uint32_t len_word, const unsigned char *payload, size_t plen, int fd)
{
	static unsigned char m[HDR + MAX_IMSGSIZE];
	uint32_t h[4];
	h[0] = type;
	h[1] = len_word;
	h[2] = (uint32_t)rnd();
	h[3] = (uint32_t)rnd();
	memcpy(m, h, HDR);
	if (plen > 0)
		memcpy(m + HDR, payload, plen);
	send_all(m, HDR + plen, fd);
	sent++;
}

static void
benign(void)
{
	unsigned char p[SIZEOF_RESULT + 128];
	int fd = rn(10) == 0 ? devnull : -1;
	uint32_t id, type;
	size_t plen = 0, i;

	switch (rn(4)) {
	case 0: type = VM_SHUTDOWN; break;
	case 1: type = VM_REBOOT; break;
	case 2: type = PAUSE_VM_RESPONSE; break;
	default: type = UNPAUSE_VM_RESPONSE; break;
	}
	if (type == PAUSE_VM_RESPONSE || type == UNPAUSE_VM_RESPONSE) {
		plen = SIZEOF_RESULT;
		for (i = 0; i < plen; i++)
			p[i] = (unsigned char)rnd();
		id = FORGED_ID_BASE + rn(0x10000000);
		memcpy(p + 4, &id, 4);
	} else if (rn(5) == 0) {
		plen = rn(128);
		for (i = 0; i < plen; i++)
			p[i] = (unsigned char)rnd();
	}
	send_imsg(type, (uint32_t)(HDR + plen) | (fd >= 0 ? FD_MARK : 0), p, plen, fd);
}

static void
hostile(void)
{
	static unsigned char p[MAX_IMSGSIZE];
	int fd = rn(4) == 0 ? devnull : -1;
	uint32_t type, len;
	size_t plen, i, cut;

	switch (rn(5)) {
	case 0:	/* a type the vmm never takes from a VM */
		do
			type = rn(3) == 0 ? (uint32_t)rnd() : rn(45);
		while (type == VM_SHUTDOWN || type == VM_REBOOT || type == PAUSE_VM_RESPONSE || type == UNPAUSE_VM_RESPONSE);
		plen = rn(64);
		log_line('H', "badType");
		send_imsg(type, (uint32_t)(HDR + plen) | (fd >= 0 ? FD_MARK : 0), p, plen, fd);
		break;
	case 1:	/* a response of the wrong size */
		do
			plen = rn(2) ? rn(64) : rn(MAX_IMSGSIZE - HDR + 1);
		while (plen == SIZEOF_RESULT);
		for (i = 0; i < plen; i++)
			p[i] = (unsigned char)rnd();
		log_line('H', "badSize");
		send_imsg(rn(2) ? PAUSE_VM_RESPONSE : UNPAUSE_VM_RESPONSE, (uint32_t)(HDR + plen) | (fd >= 0 ? FD_MARK : 0), p, plen, fd);
		break;
	case 2:	/* len below the header */
		len = rn(HDR) | (rn(3) == 0 ? FD_MARK : 0);
		log_line('H', "shortLen");
		send_imsg(rn(45), len, p, 0, fd);
		break;
	case 3:	/* len above MAX_IMSGSIZE */
		len = (MAX_IMSGSIZE + 1 + rn(0x7fffbfff)) | (rn(3) == 0 ? FD_MARK : 0);
		log_line('H', "longLen");
		send_imsg(rn(45), len, p, rn(64), fd);
		break;
	default: {	/* a frame cut short: the vmm waits for the rest, then sees EOF */
		unsigned char m[HDR + 2048];
		uint32_t h[4];
		plen = 1 + rn(2000);
		h[0] = rn(2) ? VM_SHUTDOWN : PAUSE_VM_RESPONSE;
		h[1] = (uint32_t)(HDR + plen);
		h[2] = h[3] = 0;
		memcpy(m, h, HDR);
		cut = 1 + rn((uint32_t)(HDR + plen - 1));
		log_line('H', "truncated");
		send_all(m, cut, fd);
		sent++;
		leave("cut", 0);
	}
	}
}

int
main(int argc, char **argv)
{
	static unsigned char vm[SIZEOF_VMD_VM];
	unsigned char prefix[SIZEOF_PREFIX];
	const char *vmprog = getenv("VMFUZZ_VMPROG");
	const char *logpath = getenv("VMFUZZ_LOG");
	const char *seed = getenv("VMFUZZ_SEED");
	const char *most = getenv("VMFUZZ_BENIGN_MAX");
	unsigned long benign_max = most ? strtoul(most, NULL, 10) : 20000;
	unsigned long benign_first, i;
	ssize_t n;
	int ch;

	while ((ch = getopt(argc, argv, "V:i:j:dvx:")) != -1)
		if (ch == 'V')
			sock = atoi(optarg);
	if (sock < 0 || fcntl(sock, F_GETFD) == -1)
		return 9;

	/* the struct, without consuming it: an innocent VM's program reads it itself */
	for (;;) {
		struct pollfd p = { sock, POLLIN, 0 };
		n = recv(sock, vm, sizeof(vm), MSG_PEEK | MSG_DONTWAIT);
		if (n == (ssize_t)sizeof(vm))
			break;
		if (n == 0)
			return X_EIO;
		if (n > 0)
			usleep(500);
		else if (errno == EAGAIN || errno == EINTR)
			(void)poll(&p, 1, 1000);
		else
			return X_EIO;
	}
	if (memcmp(vm + OFF_NAME, "fz-", 3) != 0) {
		if (vmprog == NULL)
			return 1;
		argv[0] = (char *)vmprog;
		execv(vmprog, argv);
		return 1;
	}

	memcpy(&vmid, vm + OFF_VMID, sizeof(vmid));
	rs = 0x9e3779b97f4a7c15ULL ^ ((uint64_t)(seed ? strtoull(seed, NULL, 10) : 1) << 20) ^ vmid;
	if (rs == 0)
		rs = 1;
	if (logpath != NULL)
		logfd = open(logpath, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
	signal(SIGTERM, on_term);
	signal(SIGPIPE, SIG_IGN);

	/* the child's side of the handshake (vmd.md §7) */
	if (recv(sock, vm, sizeof(vm), MSG_WAITALL) != (ssize_t)sizeof(vm))
		leave("eof", X_EIO);
	for (i = 0; i < SIZEOF_PREFIX;) {
		n = recv(sock, prefix + i, SIZEOF_PREFIX - i, 0);
		if (n > 0)
			i += (size_t)n;
		else if (n == 0)
			leave("eof", X_EIO);
		else if (errno == EAGAIN || errno == EINTR) {
			struct pollfd p = { sock, POLLIN, 0 };
			(void)poll(&p, 1, 1000);
		} else
			leave("eof", X_EIO);
	}
	/* "fz-id-N": answer another VM's id N, then idle (the impersonation probe) */
	if (memcmp(vm + OFF_NAME, "fz-id-", 6) == 0) {
		uint32_t other = (uint32_t)strtoul((char *)vm + OFF_NAME + 6, NULL, 10);
		struct pollfd p = { sock, POLLIN, 0 };
		send_all((unsigned char *)&other, sizeof(other), -1);
		for (;;) {
			(void)poll(&p, 1, 1000);
			drain();
		}
	}
	send_all((unsigned char *)&vmid, sizeof(vmid), -1);

	if (benign_max == 0)
		benign_max = 1;
	benign_first = rn(2) ? rn(benign_max < 200 ? (uint32_t)benign_max : 200) : rn((uint32_t)benign_max);
	for (i = 0; i < benign_first; i++) {
		if ((i & 63) == 0)
			drain();
		benign();
	}
	hostile();
	/* keep talking until the vmm ends us */
	for (;;) {
		drain();
		benign();
		if (sent > benign_first + 1000000)
			leave("never-ended", 3);
	}
}
