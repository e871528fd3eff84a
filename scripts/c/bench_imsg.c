/*
 * C reference and C peer for scripts/bench-imsg.ts.
 *
 * The imsg code below mirrors libutil (imsg.md §2-3): the sender keeps a
 * queue of malloc'd buffers (imsg_compose) and writes it with one sendmsg
 * gathering up to IOV_MAX iovecs, stopping before a second fd-carrying
 * buffer (msgbuf_write); the receiver does one recvmsg into a 64 KiB buffer
 * and parses every message in it, copying each payload into its own
 * malloc'd buffer (msgbuf_read / imsg_get), and closes received fds.
 *
 * Protocol: the peer sends READY; the driver starts its clock. Direction
 * "send" (driver sends): driver sends n DATA messages, peer answers ACK after
 * the n-th. Direction "recv" (driver receives): driver sends GO, peer sends n
 * DATA messages. Messages: current header, bit 31 of len marks an fd.
 *
 *   bench_imsg recv <n>                  peer on fd 3: receive n DATA, send ACK
 *   bench_imsg send <n> <size> <fd 0|1>  peer on fd 3: on GO send n DATA
 *   bench_imsg pair-send <n> <size> <fd> C driver sends to a forked C peer
 *   bench_imsg pair-recv <n> <size> <fd> C driver receives from a forked C peer
 * The pair modes print the elapsed nanoseconds.
 */
#define _GNU_SOURCE
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include <err.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif
#define HDR 16
#define MAX_IMSGSIZE 16384
#define FD_MARK 0x80000000u
#define READ_SIZE 65535
#define T_READY 1
#define T_GO 2
#define T_ACK 3
#define T_DATA 100

struct ibuf {
	struct ibuf *next;
	unsigned char *buf;
	size_t size, rpos;
	int fd;
};

struct msgbuf {
	struct ibuf *head, **tail;
	unsigned queued;
	int sock;
	pid_t pid;
	unsigned char rbuf[READ_SIZE];
	size_t roff;
	int rfd;
};

static void
mb_init(struct msgbuf *mb, int sock)
{
	memset(mb, 0, sizeof(*mb));
	mb->tail = &mb->head;
	mb->sock = sock;
	mb->pid = getpid();
	mb->rfd = -1;
}

/* imsg_compose */
static void
compose(struct msgbuf *mb, uint32_t type, int fd, const void *data, size_t len)
{
	struct ibuf *b = malloc(sizeof(*b));
	uint32_t hdr[4];

	if (b == NULL || (b->buf = malloc(HDR + len)) == NULL)
		err(1, "malloc");
	hdr[0] = type;
	hdr[1] = (uint32_t)(HDR + len) | (fd != -1 ? FD_MARK : 0);
	hdr[2] = 0;
	hdr[3] = (uint32_t)mb->pid;
	memcpy(b->buf, hdr, HDR);
	if (len)
		memcpy(b->buf + HDR, data, len);
	b->size = HDR + len;
	b->rpos = 0;
	b->fd = fd;
	b->next = NULL;
	*mb->tail = b;
	mb->tail = &b->next;
	mb->queued++;
}

static void
dequeue(struct msgbuf *mb)
{
	struct ibuf *b = mb->head;

	mb->head = b->next;
	if (mb->head == NULL)
		mb->tail = &mb->head;
	if (b->fd != -1)
		close(b->fd);
	free(b->buf);
	free(b);
	mb->queued--;
}

/* msgbuf_write; the socket is blocking, so a full socket just waits */
static void
msgbuf_write(struct msgbuf *mb)
{
	struct iovec iov[IOV_MAX];
	struct ibuf *b, *b0 = NULL;
	struct msghdr msg;
	union {
		struct cmsghdr hdr;
		char buf[CMSG_SPACE(sizeof(int))];
	} cmsgbuf;
	struct cmsghdr *cmsg;
	unsigned i = 0;
	ssize_t n;

	memset(&msg, 0, sizeof(msg));
	memset(&cmsgbuf, 0, sizeof(cmsgbuf));
	for (b = mb->head; b != NULL && i < IOV_MAX; b = b->next) {
		if (i > 0 && b->fd != -1)
			break;
		iov[i].iov_base = b->buf + b->rpos;
		iov[i].iov_len = b->size - b->rpos;
		i++;
		if (b->fd != -1)
			b0 = b;
	}
	msg.msg_iov = iov;
	msg.msg_iovlen = i;
	if (b0 != NULL) {
		msg.msg_control = cmsgbuf.buf;
		msg.msg_controllen = sizeof(cmsgbuf.buf);
		cmsg = CMSG_FIRSTHDR(&msg);
		cmsg->cmsg_len = CMSG_LEN(sizeof(int));
		cmsg->cmsg_level = SOL_SOCKET;
		cmsg->cmsg_type = SCM_RIGHTS;
		*(int *)CMSG_DATA(cmsg) = b0->fd;
	}
	while ((n = sendmsg(mb->sock, &msg, MSG_NOSIGNAL)) == -1)
		if (errno != EINTR)
			err(1, "sendmsg");
	if (b0 != NULL) {
		close(b0->fd);
		b0->fd = -1;
	}
	while (n > 0) {	/* msgbuf_drain */
		b = mb->head;
		if ((size_t)n >= b->size - b->rpos) {
			n -= b->size - b->rpos;
			dequeue(mb);
		} else {
			b->rpos += n;
			n = 0;
		}
	}
}

static void
flush(struct msgbuf *mb)
{
	while (mb->queued)
		msgbuf_write(mb);
}

struct imsg {
	uint32_t type, len;
	int fd;
	unsigned char *data;
};

/* msgbuf_read + imsg_get: one recvmsg, then every complete message goes to cb. */
static int
read_msgs(struct msgbuf *mb, void (*cb)(struct imsg *, void *), void *arg)
{
	struct msghdr msg;
	struct iovec iov;
	union {
		struct cmsghdr hdr;
		char buf[CMSG_SPACE(sizeof(int))];
	} cmsgbuf;
	struct cmsghdr *cmsg;
	ssize_t n;
	size_t off = 0;
	int fd = -1;

	memset(&msg, 0, sizeof(msg));
	iov.iov_base = mb->rbuf + mb->roff;
	iov.iov_len = sizeof(mb->rbuf) - mb->roff;
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = cmsgbuf.buf;
	msg.msg_controllen = sizeof(cmsgbuf.buf);
	while ((n = recvmsg(mb->sock, &msg, MSG_CMSG_CLOEXEC)) == -1)
		if (errno != EINTR)
			err(1, "recvmsg");
	if (n == 0)
		return 0;
	for (cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
		if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS) {
			int *fds = (int *)CMSG_DATA(cmsg);
			int k, j = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (k = 0; k < j; k++) {
				if (fd == -1)
					fd = fds[k];
				else
					close(fds[k]);
			}
		}
	}
	mb->roff += n;
	while (mb->roff - off >= HDR) {
		uint32_t hdr[4];
		struct imsg im;
		size_t len;

		memcpy(hdr, mb->rbuf + off, HDR);
		len = hdr[1] & ~FD_MARK;
		if (len < HDR || len > MAX_IMSGSIZE)
			errx(1, "bad imsg len %zu", len);
		if (mb->roff - off < len)
			break;
		im.type = hdr[0];
		im.len = len;
		im.fd = -1;
		if ((hdr[1] & FD_MARK) && fd != -1) {
			im.fd = fd;
			fd = -1;
		}
		im.data = NULL;
		if (len > HDR) {
			if ((im.data = malloc(len - HDR)) == NULL)
				err(1, "malloc");
			memcpy(im.data, mb->rbuf + off + HDR, len - HDR);
		}
		off += len;
		cb(&im, arg);
		free(im.data);
		if (im.fd != -1)
			close(im.fd);
	}
	memmove(mb->rbuf, mb->rbuf + off, mb->roff - off);
	mb->roff -= off;
	if (fd != -1)
		close(fd);
	return 1;
}

struct counter {
	uint32_t want;	/* a type to wait for */
	unsigned long n;
	unsigned long sum;
};

static void
count(struct imsg *im, void *arg)
{
	struct counter *c = arg;

	if (im->type == T_DATA) {
		c->n++;
		if (im->len > HDR)
			c->sum += im->data[0];
	} else if (im->type == c->want)
		c->want = 0;
}

static void
wait_type(struct msgbuf *mb, uint32_t type)
{
	struct counter c = { type, 0, 0 };

	while (c.want != 0)
		if (read_msgs(mb, count, &c) == 0)
			errx(1, "EOF waiting for type %u", type);
}

static void
drain_until_eof(struct msgbuf *mb)
{
	struct counter c = { 0, 0, 0 };

	while (read_msgs(mb, count, &c) == 1)
		;
}

static void
send_data(struct msgbuf *mb, unsigned long n, size_t size, int withfd)
{
	unsigned char *payload = calloc(1, size ? size : 1);
	unsigned long i, batch = (256 * 1024) / (size + HDR);
	int null = open("/dev/null", O_RDONLY | O_CLOEXEC);

	if (batch == 0)
		batch = 1;
	for (i = 0; i < n; i++) {
		payload[0] = i & 0xff;
		compose(mb, T_DATA, withfd ? fcntl(null, F_DUPFD_CLOEXEC, 0) : -1, payload, size);
		if ((i + 1) % batch == 0 || i + 1 == n)
			flush(mb);
	}
	close(null);
	free(payload);
}

static void
recv_data(struct msgbuf *mb, unsigned long n)
{
	struct counter c = { 0, 0, 0 };

	while (c.n < n)
		if (read_msgs(mb, count, &c) == 0)
			errx(1, "EOF after %lu of %lu", c.n, n);
}

/* the peer roles */
static void
peer_recv(int sock, unsigned long n)
{
	static struct msgbuf mb;

	mb_init(&mb, sock);
	compose(&mb, T_READY, -1, NULL, 0);
	flush(&mb);
	recv_data(&mb, n);
	compose(&mb, T_ACK, -1, NULL, 0);
	flush(&mb);
	drain_until_eof(&mb);
}

static void
peer_send(int sock, unsigned long n, size_t size, int withfd)
{
	static struct msgbuf mb;

	mb_init(&mb, sock);
	compose(&mb, T_READY, -1, NULL, 0);
	flush(&mb);
	wait_type(&mb, T_GO);
	send_data(&mb, n, size, withfd);
	drain_until_eof(&mb);
}

static long long
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void
pair(int driver_sends, unsigned long n, size_t size, int withfd)
{
	static struct msgbuf mb;
	int sv[2], status;
	long long t0, t1;
	pid_t pid;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1)
		err(1, "socketpair");
	if ((pid = fork()) == -1)
		err(1, "fork");
	if (pid == 0) {
		close(sv[0]);
		if (driver_sends)
			peer_recv(sv[1], n);
		else
			peer_send(sv[1], n, size, withfd);
		_exit(0);
	}
	close(sv[1]);
	mb_init(&mb, sv[0]);
	wait_type(&mb, T_READY);
	t0 = now_ns();
	if (driver_sends) {
		send_data(&mb, n, size, withfd);
		wait_type(&mb, T_ACK);
	} else {
		compose(&mb, T_GO, -1, NULL, 0);
		flush(&mb);
		recv_data(&mb, n);
	}
	t1 = now_ns();
	close(sv[0]);
	waitpid(pid, &status, 0);
	printf("%lld\n", t1 - t0);
}

int
main(int argc, char *argv[])
{
	int fl;

	/* the peer end comes non-blocking from ImsgChannel.socketpair; this code blocks instead of polling */
	if ((fl = fcntl(3, F_GETFL)) != -1)
		fcntl(3, F_SETFL, fl & ~O_NONBLOCK);
	if (argc == 3 && strcmp(argv[1], "recv") == 0)
		peer_recv(3, strtoul(argv[2], NULL, 10));
	else if (argc == 5 && strcmp(argv[1], "send") == 0)
		peer_send(3, strtoul(argv[2], NULL, 10), strtoul(argv[3], NULL, 10), atoi(argv[4]));
	else if (argc == 5 && strncmp(argv[1], "pair-", 5) == 0)
		pair(strcmp(argv[1], "pair-send") == 0, strtoul(argv[2], NULL, 10), strtoul(argv[3], NULL, 10),
		    atoi(argv[4]));
	else
		errx(2, "usage: bench_imsg recv n | send n size fd | pair-send|pair-recv n size fd");
	return 0;
}
