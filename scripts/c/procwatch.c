/*
 * procwatch: samples a process from /proc, for the soak (scripts/soak.ts,
 * test/reliability/soak.test.ts). A C loop so that sampling every few
 * milliseconds costs the vmm little and never waits on Node's event loop.
 *
 *   procwatch -p PID [-i interval_ms] [-r report_ms]
 *
 * Every interval: the number of fds of PID (/proc/PID/fd), its
 * descendants two levels deep (children, and their children: with the C
 * spawner helper the VM processes are the vmm's grandchildren), which of
 * them are zombies (state Z), and its resident memory (/proc/PID/statm).
 * Each zombie is followed from the first sample that shows it to the first
 * that does not.
 *
 * Output, one line each:
 *   s <ms> <fds> <children> <zombies> <rss_kb>     every report_ms
 *   z <pid> <ms> <since> child|grandchild <asleep> <wchan>
 *                       a zombie reaped; <ms> is an upper bound of its life,
 *                       <since> when it was first seen, <asleep> in how
 *                       many samples that showed it its parent (the reaper)
 *                       was asleep (S or D) rather than running or waiting
 *                       for a CPU (R): a reaper asleep beside its zombie is
 *                       blocked somewhere other than its reaping wait (a
 *                       child's death wakes a reaper in its wait at once),
 *                       while a runnable one is only waiting for a CPU;
 *                       <wchan> where it last slept (/proc/PID/wchan), or -
 *   end <samples> <max_zombie_ms> <zombies> <max_fds> <max_children>
 *                       when PID is gone, or on SIGTERM / SIGINT
 */
#include <sys/types.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAXZ 4096
#define MAXP 65536

static long apid[MAXP], appid[MAXP];
static char astate[MAXP];

static volatile sig_atomic_t stop;
static long zpid[MAXZ], zppid[MAXZ];
static double zsince[MAXZ];
static int zasleep[MAXZ];
static char zwchan[MAXZ][48];		/* where the reaper last slept beside it */

/* /proc/PID/wchan (the kernel function a sleeping task waits in) into buf */
static void
wchan_of(long pid, char *buf, size_t len)
{
	char path[64];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%ld/wchan", pid);
	buf[0] = '\0';
	if ((fd = open(path, O_RDONLY)) < 0)
		return;
	n = read(fd, buf, len - 1);
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
}
static int nz;

static void
on_sig(int sig)
{
	(void)sig;
	stop = 1;
}

static double
now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int
count_fds(long pid)
{
	char path[64];
	DIR *d;
	struct dirent *e;
	int n = 0;

	snprintf(path, sizeof(path), "/proc/%ld/fd", pid);
	if ((d = opendir(path)) == NULL)
		return -1;
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

static long
rss_kb(long pid)
{
	char path[64], buf[128];
	long size, res;
	int fd;
	ssize_t r;

	snprintf(path, sizeof(path), "/proc/%ld/statm", pid);
	if ((fd = open(path, O_RDONLY)) == -1)
		return -1;
	r = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (r <= 0)
		return -1;
	buf[r] = '\0';
	if (sscanf(buf, "%ld %ld", &size, &res) != 2)
		return -1;
	return res * (sysconf(_SC_PAGESIZE) / 1024);
}

/* state and ppid of N; 0 if gone */
static int
stat_of(long pid, char *state, long *ppid)
{
	char path[64], buf[512], *p;
	int fd;
	ssize_t r;

	snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
	if ((fd = open(path, O_RDONLY)) == -1)
		return 0;
	r = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (r <= 0)
		return 0;
	buf[r] = '\0';
	if ((p = strrchr(buf, ')')) == NULL || sscanf(p + 2, "%c %ld", state, ppid) != 2)
		return 0;
	return 1;
}

int
main(int argc, char **argv)
{
	long pid = -1, interval = 5, report = 100;
	double start, last_report = -1e9, max_z = 0, t;
	unsigned long samples = 0, zombies_seen = 0;
	int ch, max_fds = 0, max_children = 0;

	while ((ch = getopt(argc, argv, "p:i:r:")) != -1) {
		switch (ch) {
		case 'p': pid = atol(optarg); break;
		case 'i': interval = atol(optarg); break;
		case 'r': report = atol(optarg); break;
		default: return 2;
		}
	}
	if (pid <= 0)
		return 2;
	signal(SIGTERM, on_sig);
	signal(SIGINT, on_sig);
	setvbuf(stdout, NULL, _IOLBF, 0);
	start = now_ms();

	while (!stop) {
		long seen[MAXZ];
		long kids[MAXZ], seenppid[MAXZ];
		int nseen = 0, nall, nkids, children = 0, zombies = 0, fds, i, j;
		DIR *d;
		struct dirent *e;

		if ((fds = count_fds(pid)) < 0)
			break;			/* the process is gone */
		/* one pass over /proc, then the tree below PID, two levels deep (a
		 * spawner helper's children are the VM processes) */
		if ((d = opendir("/proc")) == NULL)
			return 1;
		nall = 0;
		while ((e = readdir(d)) != NULL && nall < MAXP) {
			char state;
			long n, ppid;
			if (e->d_name[0] < '0' || e->d_name[0] > '9')
				continue;
			n = atol(e->d_name);
			if (!stat_of(n, &state, &ppid))
				continue;
			apid[nall] = n;
			appid[nall] = ppid;
			astate[nall++] = state;
		}
		closedir(d);
		nkids = 0;
		for (i = 0; i < nall; i++)
			if (appid[i] == pid && nkids < MAXZ)
				kids[nkids++] = apid[i];
		for (i = 0; i < nall; i++) {
			int below = appid[i] == pid;
			for (j = 0; !below && j < nkids; j++)
				below = kids[j] == appid[i];
			if (!below)
				continue;
			children++;
			if (astate[i] == 'Z') {
				zombies++;
				if (nseen < MAXZ) {
					seenppid[nseen] = appid[i];
					seen[nseen++] = apid[i];
				}
			}
		}
		t = now_ms() - start;
		samples++;

		/* zombies that were here and are not any more: reaped */
		for (i = 0; i < nz;) {
			for (j = 0; j < nseen && seen[j] != zpid[i]; j++)
				;
			if (j < nseen) {
				i++;
				continue;
			}
			double life = t - zsince[i] + interval;
			if (life > max_z)
				max_z = life;
			printf("z %ld %.1f %.1f %s %d %s\n", zpid[i], life, zsince[i], zppid[i] == pid ? "child" : "grandchild", zasleep[i],
			    zwchan[i][0] != '\0' ? zwchan[i] : "-");
			zpid[i] = zpid[nz - 1];
			zppid[i] = zppid[nz - 1];
			zsince[i] = zsince[nz - 1];
			zasleep[i] = zasleep[nz - 1];
			memcpy(zwchan[i], zwchan[nz - 1], sizeof(zwchan[i]));
			nz--;
		}
		/* the reaper's state beside each zombie still here */
		for (i = 0; i < nz; i++) {
			for (j = 0; j < nall && apid[j] != zppid[i]; j++)
				;
			if (j < nall && (astate[j] == 'S' || astate[j] == 'D')) {
				zasleep[i]++;
				wchan_of(zppid[i], zwchan[i], sizeof(zwchan[i]));
			}
		}
		/* new zombies */
		for (j = 0; j < nseen; j++) {
			for (i = 0; i < nz && zpid[i] != seen[j]; i++)
				;
			if (i == nz && nz < MAXZ) {
				zpid[nz] = seen[j];
				zppid[nz] = seenppid[j];
				zsince[nz] = t;
				for (i = 0; i < nall && apid[i] != seenppid[j]; i++)
					;
				zasleep[nz] = i < nall && (astate[i] == 'S' || astate[i] == 'D');
				zwchan[nz][0] = '\0';
				if (zasleep[nz])
					wchan_of(seenppid[j], zwchan[nz], sizeof(zwchan[nz]));
				nz++;
				zombies_seen++;
			}
		}
		if (fds > max_fds)
			max_fds = fds;
		if (children > max_children)
			max_children = children;
		if (t - last_report >= report) {
			printf("s %.1f %d %d %d %ld\n", t, fds, children, zombies, rss_kb(pid));
			last_report = t;
		}
		usleep((useconds_t)interval * 1000);
	}
	/* zombies still there at the end (their parent gone first) count from first sight */
	t = now_ms() - start;
	for (int i = 0; i < nz; i++) {
		double life = t - zsince[i];
		if (life > max_z)
			max_z = life;
		printf("z %ld %.1f %.1f open %d %s\n", zpid[i], life, zsince[i], zasleep[i], zwchan[i][0] != '\0' ? zwchan[i] : "-");
	}
	printf("end %lu %.1f %lu %d %d\n", samples, max_z, zombies_seen, max_fds, max_children);
	return 0;
}
