/*
 * bench-info: the C reference for info and for start-up in bench-vmm.ts.
 * A minimal vmm in C on fd 3: it answers GET_INFO_VM_REQUEST as get_info_vm
 * does in the process backend: for each VM (the pids on the command line)
 * read /proc/<pid>/statm, compose a GET_INFO_VM_DATA (16-byte header +
 * struct vmop_info_result, 200 bytes) with the request's peerid, then
 * GET_INFO_VM_END_DATA (int 0). Messages are gathered in one buffer and
 * written together, as msgbuf_write does. Other messages are ignored; EOF
 * ends it.
 *
 * With no pids it is the "tiny C program that sets up the same socket and
 * answers the same request" for the start-up figure.
 *
 *   bench-info [pid...] [-- anything]     (arguments after the pids are ignored)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "../../c/vmd_wire.h"

#define SIZEOF_INFO		200

/* resident bytes from /proc/<pid>/statm; -1 if gone */
static int64_t
resident(pid_t pid, long pagesize)
{
	char path[64], buf[256];
	long size, rss;
	ssize_t r;
	int fd;

	snprintf(path, sizeof(path), "/proc/%ld/statm", (long)pid);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
		return -1;
	r = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (r <= 0)
		return -1;
	buf[r] = '\0';
	if (sscanf(buf, "%ld %ld", &size, &rss) != 2)
		return -1;
	return (int64_t)rss * pagesize;
}

static void
header(unsigned char *p, uint32_t type, uint32_t len, uint32_t peerid)
{
	uint32_t h[4] = { type, len, peerid, 1 };
	memcpy(p, h, sizeof(h));
}

int
main(int argc, char **argv)
{
	static unsigned char in[MAX_IMSGSIZE];
	long pagesize = sysconf(_SC_PAGESIZE);
	int nvm = 0, i;
	pid_t *pids = calloc((size_t)argc, sizeof(pid_t));
	unsigned char *out = malloc((size_t)argc * (HDR + SIZEOF_INFO) + HDR + 4);
	uint32_t h[4];

	if (pids == NULL || out == NULL)
		return 1;
	for (i = 1; i < argc && argv[i][0] >= '0' && argv[i][0] <= '9'; i++)
		pids[nvm++] = (pid_t)atol(argv[i]);
	fcntl(3, F_SETFL, fcntl(3, F_GETFL) & ~O_NONBLOCK);

	for (;;) {
		size_t len, n = 0;

		if (!readn(3, h, sizeof(h)))
			return 0;
		len = h[1] & ~0x80000000u;
		if (len < HDR || len > MAX_IMSGSIZE || !readn(3, in, len - HDR))
			return 0;
		if (h[0] != GET_INFO_VM_REQUEST)
			continue;
		for (i = 0; i < nvm; i++) {
			unsigned char *p = out + n, *v = p + HDR;
			uint64_t mem = 512ULL << 20, ncpus = 1, used;
			int64_t rss = resident(pids[i], pagesize);
			int32_t cpid = pids[i];
			uint32_t id = (uint32_t)i + 1;

			if (rss < 0)
				continue;
			used = (uint64_t)rss;
			header(p, GET_INFO_VM_DATA, HDR + SIZEOF_INFO, h[2]);
			memset(v, 0, SIZEOF_INFO);
			memcpy(v + 0, &mem, 8);
			memcpy(v + 8, &used, 8);
			memcpy(v + 16, &ncpus, 8);
			memcpy(v + 88, &cpid, 4);
			memcpy(v + 92, &id, 4);
			snprintf((char *)v + 96, 64, "vm%d", i + 1);
			n += HDR + SIZEOF_INFO;
		}
		header(out + n, GET_INFO_VM_END_DATA, HDR + 4, h[2]);
		memset(out + n + HDR, 0, 4);
		n += HDR + 4;
		if (!writen(3, out, n))
			return 0;
	}
}
