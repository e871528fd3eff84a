/*
 * vmd_wire.h: what the C programs of this repository (c/vmprog.c, the test
 * and benchmark programs under test/ and scripts/) share of vmd's wire:
 * OpenBSD errno numbers, struct vmd_vm offsets on amd64 (vmd.md §4.5),
 * message numbers (vmd.md §3, IMSG_PROC_MAX = 5), the imsg header, and
 * blocking exact reads and writes (atomicio). The TypeScript side has the
 * same numbers in src/schema/; test/schema checks the offsets against gcc.
 */
#ifndef VMD_WIRE_H
#define VMD_WIRE_H

#include <sys/types.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

/* OpenBSD errno, as vmm reads a VM process's exit status */
#define X_EIO		5
#define X_EBADF		9
#define X_EINVAL	22
#define X_EAGAIN	35

/* struct vmd_vm, amd64 */
#define SIZEOF_VMD_VM	13352
#define OFF_NAME	4	/* vm_params.vmc_name, char[64] */
#define OFF_NDISKS	2696	/* vm_params.vmc_ndisks, size_t */
#define OFF_CDROMPATH	6832	/* vm_params.vmc_cdrom, char[1024] */
#define OFF_PID	8392	/* vm_pid, the VM process itself */
#define OFF_VMID	8400
#define OFF_KERNEL	12784
#define OFF_CDROM	12800
#define OFF_DISKS	12804	/* int[4][4] */
#define OFF_VIF_FD	12896	/* + 56 * nic */
#define OFF_TTY		13112
#define SIZEOF_PREFIX	40	/* struct local_prefix */

/* message types */
#define CTL_VERBOSE		3
#define PAUSE_VM		11
#define PAUSE_VM_RESPONSE	12
#define UNPAUSE_VM		13
#define UNPAUSE_VM_RESPONSE	14
#define GET_INFO_VM_REQUEST	19
#define GET_INFO_VM_DATA	20
#define GET_INFO_VM_END_DATA	21
#define PRIV_GET_ADDR_RESPONSE	36
#define VM_SHUTDOWN		37
#define VM_REBOOT		38

/* imsg framing */
#define HDR		16
#define FD_MARK		0x80000000u
#define MAX_IMSGSIZE	16384

/* read exactly n bytes: 1, or 0 on EOF, a short read or an error */
static inline int
readn(int fd, void *buf, size_t n)
{
	char *p = buf;
	while (n > 0) {
		ssize_t r = read(fd, p, n);
		if (r == -1 && errno == EINTR)
			continue;
		if (r <= 0)
			return 0;
		p += r;
		n -= (size_t)r;
	}
	return 1;
}

/* write exactly n bytes: 1, or 0 on an error */
static inline int
writen(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n > 0) {
		ssize_t r = write(fd, p, n);
		if (r == -1 && errno == EINTR)
			continue;
		if (r <= 0)
			return 0;
		p += r;
		n -= (size_t)r;
	}
	return 1;
}

/* the int32 at byte off of a struct */
static inline int32_t
int_at(const unsigned char *vm, size_t off)
{
	int32_t v;
	memcpy(&v, vm + off, sizeof(v));
	return v;
}

static inline int
is_open(int fd)
{
	return fd >= 0 && fcntl(fd, F_GETFD) != -1;
}

#endif /* VMD_WIRE_H */
