/*
 * vmd-dispatch: installed as /usr/sbin/vmd in front of the C vmd (moved to
 * /usr/sbin/vmd.c), it runs vmd's vmm child (-P vmm) as the TypeScript vmm
 * and everything else as the C vmd. vmd's proc_exec starts each child by
 * executing its own argv[0] again with -P <title>, so the C vmd must keep
 * argv[0] = this dispatcher's path: a shell script's `exec vmd.c "$@"` would
 * set it to vmd.c, and every child would then bypass the dispatcher. A
 * compiled program also needs no interpreter, which vmd's unveil of its
 * argv[0] for exec would not cover.
 *
 * Build (see the README): cc -O2 -o /usr/sbin/vmd c/vmd-dispatch.c
 *   [-DVMD_C='"/usr/sbin/vmd.c"'] [-DNODE='"/usr/local/bin/node"']
 *   [-DVMM='"/usr/local/vmd-vmm/bin/vmm"']
 * The V8 flags are bin/vmm's #! line's (its code cache is only accepted
 * under them; test/cli/dispatch.test.ts checks that they agree).
 */
#include <err.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef VMD_C
#define VMD_C	"/usr/sbin/vmd.c"
#endif
#ifndef NODE
#define NODE	"/usr/local/bin/node"
#endif
#ifndef VMM
#define VMM	"/usr/local/vmd-vmm/bin/vmm"
#endif

static const char *v8flags[] = { "--max-semi-space-size=1", "--optimize-for-size",
    "--verify-snapshot-checksum" };
static const char *vmmflags[] = { "--backend", "vmm", "--spawn", "node", "--vm-exec", VMD_C };

#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))

static int
is_vmm_child(int argc, char **argv)
{
	int i;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-Pvmm") == 0)
			return 1;
		if (strcmp(argv[i], "-P") == 0 && i + 1 < argc &&
		    strcmp(argv[i + 1], "vmm") == 0)
			return 1;
	}
	return 0;
}

int
main(int argc, char **argv)
{
	const char **nargv;
	size_t i, n = 0;

	if (argc < 1 || !is_vmm_child(argc, argv)) {
		execv(VMD_C, argv);		/* argv[0] kept */
		err(1, "execv %s", VMD_C);
	}
	nargv = calloc(1 + NELEM(v8flags) + 1 + (size_t)argc + NELEM(vmmflags) + 1, sizeof(*nargv));
	if (nargv == NULL)
		err(1, "calloc");
	nargv[n++] = NODE;
	for (i = 0; i < NELEM(v8flags); i++)
		nargv[n++] = v8flags[i];
	nargv[n++] = VMM;
	/*
	 * Ours first: proc_exec passes on the parent's own argv after -P vmm,
	 * and a `--` there (vmd -d --) would end bin/vmm's option parsing.
	 */
	for (i = 0; i < NELEM(vmmflags); i++)
		nargv[n++] = vmmflags[i];
	for (i = 1; i < (size_t)argc; i++)
		nargv[n++] = argv[i];
	nargv[n] = NULL;
	execv(NODE, (char *const *)nargv);
	err(1, "execv %s", NODE);
}
