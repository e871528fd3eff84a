/*
 * A tiny child for the ProcessNode tests (compiled by gcc in the test run).
 *
 *   child fdinfo OUT FD...  write to fd OUT: "pid P", "sid S", one line
 *                           "fd N dev D ino I" (or "fd N errno E") per FD,
 *                           then "open A B C ..." from /proc/self/fd
 *   child exit N            exit(N)
 *   child sleep             wait for a signal (SIGTERM ends it)
 *   child ignterm OUT       ignore SIGTERM, write "r" to OUT, wait forever
 *   child byte OUT          write one byte to OUT, exit 0
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void
put(int fd, const char *s)
{
	size_t len = strlen(s);
	while (len > 0) {
		ssize_t n = write(fd, s, len);
		if (n <= 0)
			_exit(100);
		s += n;
		len -= (size_t)n;
	}
}

static int
fdinfo(int out, int argc, char **argv)
{
	char line[256];
	struct stat st;
	DIR *d;
	struct dirent *de;
	int i;

	snprintf(line, sizeof(line), "pid %ld\nsid %ld\n", (long)getpid(), (long)getsid(0));
	put(out, line);
	for (i = 0; i < argc; i++) {
		int fd = atoi(argv[i]);
		if (fstat(fd, &st) == -1)
			snprintf(line, sizeof(line), "fd %d errno %d\n", fd, errno);
		else
			snprintf(line, sizeof(line), "fd %d dev %llu ino %llu\n", fd,
			    (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
		put(out, line);
	}
	put(out, "open");
	if ((d = opendir("/proc/self/fd")) == NULL)
		return 101;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.' || atoi(de->d_name) == dirfd(d))
			continue;
		put(out, " ");
		put(out, de->d_name);
	}
	closedir(d);
	put(out, "\n");
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc < 2)
		return 64;
	if (strcmp(argv[1], "fdinfo") == 0 && argc >= 3)
		return fdinfo(atoi(argv[2]), argc - 3, argv + 3);
	if (strcmp(argv[1], "exit") == 0 && argc == 3)
		return atoi(argv[2]);
	if (strcmp(argv[1], "sleep") == 0) {
		for (;;)
			pause();
	}
	if (strcmp(argv[1], "ignterm") == 0 && argc == 3) {
		signal(SIGTERM, SIG_IGN);
		put(atoi(argv[2]), "r");
		for (;;)
			pause();
	}
	if (strcmp(argv[1], "byte") == 0 && argc == 3) {
		put(atoi(argv[2]), "b");
		return 0;
	}
	return 64;
}
