/**
 * Raw handshake latency (the VM start path, src/vmm/startVm.ts): on a fresh
 * non-blocking socketpair, write 13352 + 40 bytes raw, then read a 4-byte id,
 * against a peer that is already running (a forked C process that gets its
 * end of each socketpair over a control socket, reads the 13392 bytes with
 * poll+read and answers 4 bytes). Beside it the same loop in C (blocking
 * poll+read). The two take turns in rounds, so load changes hit both alike.
 * Not a test. Run: npx tsx scripts/bench-handshake.ts [ITERATIONS=2000] [ROUND=100]
 *
 * Also measures `open` after the handshake (the socket becomes the VM's
 * channel), then the EOF on it (the peer has closed) and its close.
 */
import { execFileSync, spawn } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Effect, Stream } from "effect"
import { ImsgChannelNative } from "../src/layers/ImsgChannelNative.ts"
import * as libc from "../src/native/libc.ts"

const N = Number(process.argv[2] ?? 2000)
const ROUND = Number(process.argv[3] ?? 100)
const VM = 13352
const PREFIX = 40

const C_SOURCE = String.raw`
#define _GNU_SOURCE
#include <sys/socket.h>
#include <sys/wait.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define VM 13352
#define PREFIX 40

static int
io(int fd, void *buf, size_t len, int wr)
{
	char *p = buf;
	while (len > 0) {
		ssize_t n = wr ? write(fd, p, len) : read(fd, p, len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && errno == EAGAIN) {
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
recvfd(int ctl)
{
	char c, cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { &c, 1 };
	struct msghdr m = { 0 };
	struct cmsghdr *cm;
	m.msg_iov = &iov;
	m.msg_iovlen = 1;
	m.msg_control = cbuf;
	m.msg_controllen = sizeof(cbuf);
	if (recvmsg(ctl, &m, MSG_CMSG_CLOEXEC) <= 0)
		return -1;
	cm = CMSG_FIRSTHDR(&m);
	if (cm == NULL)
		return -1;
	int fd;
	memcpy(&fd, CMSG_DATA(cm), sizeof(fd));
	return fd;
}

static int
sendfd(int ctl, int fd)
{
	char c = 's', cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { &c, 1 };
	struct msghdr m = { 0 };
	struct cmsghdr *cm;
	m.msg_iov = &iov;
	m.msg_iovlen = 1;
	m.msg_control = cbuf;
	m.msg_controllen = sizeof(cbuf);
	cm = CMSG_FIRSTHDR(&m);
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	memcpy(CMSG_DATA(cm), &fd, sizeof(fd));
	return sendmsg(ctl, &m, 0) == 1 ? 0 : -1;
}

/* The VM side: for each fd received on ctl, read VM + PREFIX bytes, answer an id. */
static int
peer(int ctl)
{
	static char buf[VM + PREFIX];
	unsigned id = 7;
	int fd;
	while ((fd = recvfd(ctl)) != -1) {
		if (io(fd, buf, sizeof(buf), 0) == -1 || io(fd, &id, 4, 1) == -1)
			return 2;
		close(fd);
	}
	return 0;
}

static double
now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* The C reference: n handshakes against a forked peer, one line of ms each. */
static int
ref(int n)
{
	static char vm[VM], prefix[PREFIX];
	int ctl[2];
	pid_t pid;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) == -1)
		return 1;
	pid = fork();
	if (pid == 0) {
		close(ctl[0]);
		_exit(peer(ctl[1]));
	}
	close(ctl[1]);
	memset(vm, 0x5a, sizeof(vm));
	for (int i = 0; i < n; i++) {
		int s[2];
		unsigned id;
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, s) == -1 || sendfd(ctl[0], s[1]) == -1)
			return 1;
		close(s[1]);
		double t0 = now();
		if (io(s[0], vm, VM, 1) == -1 || io(s[0], prefix, PREFIX, 1) == -1 || io(s[0], &id, 4, 0) == -1)
			return 1;
		printf("%.4f\n", now() - t0);
		close(s[0]);
	}
	close(ctl[0]);
	waitpid(pid, NULL, 0);
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "peer") == 0)
		return peer(atoi(argv[2]));
	if (argc == 3 && strcmp(argv[1], "ref") == 0)
		return ref(atoi(argv[2]));
	fprintf(stderr, "usage: bench_handshake peer FD | ref N\n");
	return 64;
}
`

const dir = mkdtempSync(join(tmpdir(), "bench-handshake-"))
const bin = join(dir, "bench_handshake")
writeFileSync(join(dir, "bench_handshake.c"), C_SOURCE)
execFileSync("cc", ["-O2", "-o", bin, join(dir, "bench_handshake.c")], { stdio: "inherit" })

const cRound = (n: number): Array<number> =>
  execFileSync(bin, ["ref", String(n)], { encoding: "utf8" }).trim().split("\n").map(Number)

const pct = (xs: ReadonlyArray<number>, p: number): number => {
  const a = [...xs].sort((x, y) => x - y)
  return a[Math.min(a.length - 1, Math.floor(a.length * p))] ?? NaN
}
const mean = (xs: ReadonlyArray<number>): number => xs.reduce((x, y) => x + y, 0) / xs.length

const main = Effect.gen(function* () {
  const imsg = ImsgChannelNative.service
  const ctl = libc.socketpair(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_CLOEXEC)
  if (typeof ctl === "number") throw new Error("socketpair")
  const peer = spawn(bin, ["peer", "3"], { stdio: ["ignore", "inherit", "inherit", ctl[1]] })
  const exited = new Promise<number | null>((resolve) => peer.on("exit", resolve))
  libc.close(ctl[1])
  const scm = new libc.ScmBuffer()
  const one = new Uint8Array(1)
  const vm = new Uint8Array(VM).fill(0x5a)
  const prefix = new Uint8Array(PREFIX)
  const ts: Array<number> = []
  const open1: Array<number> = []
  const eof: Array<number> = []
  const c: Array<number> = []
  const tsRound = (n: number, keep: boolean) =>
    Effect.gen(function* () {
      for (let i = 0; i < n; i++) {
        const [ours, theirs] = yield* imsg.socketpair("bench")
        if (scm.send(ctl[0], one, theirs.num) !== 1) throw new Error("sendfd")
        theirs.closeSync()
        const t0 = performance.now()
        yield* imsg.writeRaw(ours, vm, 5000)
        yield* imsg.writeRaw(ours, prefix, 5000)
        yield* imsg.readRaw(ours, 4, 5000)
        const t1 = performance.now()
        // the socket becomes a channel; its first message: EOF, since the peer closed
        let t2 = 0
        yield* Effect.scoped(
          Effect.gen(function* () {
            const ch = yield* imsg.open(ours)
            t2 = performance.now()
            yield* Stream.runDrain(ch.messages)
          })
        )
        const t3 = performance.now()
        if (keep) {
          ts.push(t1 - t0)
          open1.push(t2 - t1)
          eof.push(t3 - t2)
        }
      }
    })
  yield* tsRound(50, false)
  cRound(50)
  for (let done = 0; done < N; done += ROUND) {
    const n = Math.min(ROUND, N - done)
    c.push(...cRound(n))
    yield* tsRound(n, true)
  }
  libc.close(ctl[0])
  scm.free()
  yield* Effect.promise(() => exited)
  const f = (x: number) => x.toFixed(3)
  console.log(`raw handshake latency, ms (${N} iterations each, in turns of ${ROUND}; node ${process.version})`)
  console.log("| variant | p50 | p90 | p99 | mean |")
  console.log("| --- | ---: | ---: | ---: | ---: |")
  for (const [name, xs] of [
    ["C poll+read", c],
    ["writeRaw+readRaw", ts],
    ["then open", open1],
    ["then EOF+close", eof]
  ] as const) {
    console.log(`| ${name} | ${f(pct(xs, 0.5))} | ${f(pct(xs, 0.9))} | ${f(pct(xs, 0.99))} | ${f(mean(xs))} |`)
  }
})

Effect.runPromise(main)
  .catch((e: unknown) => {
    console.error(e)
    process.exitCode = 1
  })
  .finally(() => rmSync(dir, { recursive: true, force: true }))
