/*
 * The structs of vmd.md §4 declared in C from the spec tables, the way the
 * OpenBSD headers declare them on amd64 (LP64). Prints, for the layout test:
 *   S <struct> <sizeof> <alignof>
 *   F <struct> <member designator> <offsetof> <sizeof member>
 * Only stdint/stddef/stdio are included, so no host header defines these tags.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef int32_t		pid_t_;		/* OpenBSD pid_t */
typedef uint32_t	uid_t_;		/* OpenBSD uid_t */
typedef uint64_t	paddr_t_;
typedef uint64_t	vaddr_t_;
typedef int64_t		time_t_;

#define TAILQ_ENTRY(type)	struct { struct type *tqe_next; struct type **tqe_prev; }

struct timeval { time_t_ tv_sec; long tv_usec; };
struct in_addr { uint32_t s_addr; };
struct in6_addr { union { uint8_t u8[16]; uint16_t u16[8]; uint32_t u32[4]; } u; };

/* lib/libevent/event.h 1.31 */
struct event {
	TAILQ_ENTRY(event) ev_next;
	TAILQ_ENTRY(event) ev_active_next;
	TAILQ_ENTRY(event) ev_signal_next;
	size_t min_heap_idx;
	void *ev_base;
	int ev_fd;
	short ev_events;
	short ev_ncalls;
	short *ev_pncalls;
	struct timeval ev_timeout;
	int ev_pri;
	void (*ev_callback)(int, short, void *);
	void *ev_arg;
	int ev_res;
	int ev_flags;
};

/* lib/libutil/imsg.h, usr.sbin/vmd/proc.h */
struct imsgbuf { void *w; pid_t_ pid; uint32_t maxsize; int fd; int flags; };
struct imsgev {
	struct imsgbuf ibuf;
	void (*handler)(int, short, void *);
	struct event ev;
	void *proc;
	void *data;
	short events;
};

/* sys/dev/vmm/vmm.h */
struct vm_mem_range { paddr_t_ vmr_gpa; vaddr_t_ vmr_va; size_t vmr_size; int vmr_type; };
struct vm_info_result {
	size_t vir_memory_size;
	size_t vir_used_size;
	size_t vir_ncpus;
	uint8_t vir_vcpu_state[64];
	pid_t_ vir_creator_pid;
	uint32_t vir_id;
	char vir_name[64];
};
struct vm_info_params { size_t vip_size; size_t vip_info_ct; struct vm_info_result *vip_info; };
struct vm_terminate_params { uint32_t vtp_vm_id; };
struct vm_create_params {
	size_t vcp_nmemranges;
	size_t vcp_ncpus;
	struct vm_mem_range vcp_memranges[16];
	char vcp_name[64];
	int vcp_sev;
	int vcp_seves;
	uint32_t vcp_id;
	uint32_t vcp_poscbit;
	uint32_t vcp_asid[512];
};

/* usr.sbin/vmd/vmd.h */
struct vmop_result { int vmr_result; uint32_t vmr_id; pid_t_ vmr_pid; char vmr_ttyname[16]; };
struct vmop_info_result {
	size_t vir_memory_size;
	size_t vir_used_size;
	size_t vir_ncpus;
	uint8_t vir_vcpu_state[64];
	pid_t_ vir_creator_pid;
	uint32_t vir_id;
	char vir_name[64];
	char vir_ttyname[16];
	uid_t_ vir_uid;
	int64_t vir_gid;
	unsigned int vir_state;
};
struct vmop_id { uint32_t vid_id; char vid_name[64]; uid_t_ vid_uid; unsigned int vid_flags; };
struct vmop_addr_req { uint32_t var_vmid; unsigned int var_nic_idx; };
struct vmop_addr_result { uint32_t var_vmid; unsigned int var_nic_idx; uint8_t var_addr[6]; };
struct vmop_owner { uid_t_ uid; int64_t gid; };
struct vmop_create_params {
	uint32_t vmc_id;
	char vmc_name[64];
	struct vmop_owner vmc_owner;
	unsigned int vmc_flags;
	unsigned int vmc_checkaccess;
	size_t vmc_ncpus;
	uint32_t vmc_asid[512];
	uint32_t vmc_poscbit;
	int vmc_sev;
	int vmc_seves;
	size_t vmc_nmemranges;
	struct vm_mem_range vmc_memranges[16];
	int vmc_kernel;
	unsigned int vmc_bootdevice;
	size_t vmc_ndisks;
	char vmc_disks[4][1024];
	unsigned int vmc_disktypes[4];	/* enum vm_disk_fmt */
	unsigned int vmc_diskbases[4];
	char vmc_cdrom[1024];
	size_t vmc_nnics;
	char vmc_ifnames[4][16];
	char vmc_ifswitch[4][64];
	char vmc_ifgroup[4][16];
	unsigned int vmc_ifrdomain[4];
	uint8_t vmc_macs[4][6];
	unsigned int vmc_ifflags[4];
	char vmc_instance[64];
	struct vmop_owner vmc_insowner;
	unsigned int vmc_insflags;
};
struct vmd_if {
	char *vif_name;
	char *vif_switch;
	char *vif_group;
	int vif_fd;
	unsigned int vif_rdomain;
	unsigned int vif_flags;
	TAILQ_ENTRY(vmd_if) vif_entry;
};
struct vmd_vm {
	struct vmop_create_params vm_params;
	pid_t_ vm_pid;
	uid_t_ vm_uid;
	uint32_t vm_vmid;
	uint32_t vm_vmmid;
	uint32_t vm_peerid;
	uint32_t vm_sev_handle;
	uint32_t vm_sev_asid[64];
	uint32_t vm_poscbit;
	size_t vm_sev_nmemsegments;
	struct vm_mem_range vm_sev_memsegments[128];
	int vm_kernel;
	char *vm_kernel_path;
	int vm_cdrom;
	int vm_disks[4][4];
	struct vmd_if vm_ifs[4];
	char vm_ttyname[16];
	int vm_tty;
	int vm_from_config;
	struct imsgev vm_iev;
	unsigned int vm_state;
	struct timeval vm_start_tv;
	int vm_start_limit;
	TAILQ_ENTRY(vmd_vm) vm_entry;
};
struct local_prefix {
	struct in_addr lp_in;
	struct in_addr lp_mask;
	struct in6_addr lp_in6;
	struct in6_addr lp_mask6;
};
struct vmd_agentx { int ax_enabled; char ax_path[104]; char ax_context[32 + 1]; };
struct vmd_config {
	unsigned int cfg_flags;
	struct timeval delay;
	int parallelism;
	struct local_prefix cfg_localprefix;
	struct vmd_agentx cfg_agentx;
};

#define S(t)	printf("S %s %zu %zu\n", #t, sizeof(struct t), _Alignof(struct t))
#define F(t, m)	printf("F %s %s %zu %zu\n", #t, #m, offsetof(struct t, m), \
		    sizeof(((struct t *)0)->m))

int
main(void)
{
	S(timeval);
	F(timeval, tv_sec); F(timeval, tv_usec);

	S(vm_mem_range);
	F(vm_mem_range, vmr_gpa); F(vm_mem_range, vmr_va); F(vm_mem_range, vmr_size);
	F(vm_mem_range, vmr_type);

	S(vmop_result);
	F(vmop_result, vmr_result); F(vmop_result, vmr_id); F(vmop_result, vmr_pid);
	F(vmop_result, vmr_ttyname);

	S(vmop_id);
	F(vmop_id, vid_id); F(vmop_id, vid_name); F(vmop_id, vid_uid); F(vmop_id, vid_flags);

	S(vmop_addr_req);
	F(vmop_addr_req, var_vmid); F(vmop_addr_req, var_nic_idx);

	S(vmop_addr_result);
	F(vmop_addr_result, var_vmid); F(vmop_addr_result, var_nic_idx);
	F(vmop_addr_result, var_addr);

	S(vmop_owner);
	F(vmop_owner, uid); F(vmop_owner, gid);

	S(local_prefix);
	F(local_prefix, lp_in); F(local_prefix, lp_mask); F(local_prefix, lp_in6);
	F(local_prefix, lp_mask6);

	S(vmd_agentx);
	F(vmd_agentx, ax_enabled); F(vmd_agentx, ax_path); F(vmd_agentx, ax_context);

	S(vmd_config);
	F(vmd_config, cfg_flags); F(vmd_config, delay); F(vmd_config, delay.tv_usec);
	F(vmd_config, parallelism); F(vmd_config, cfg_localprefix);
	F(vmd_config, cfg_localprefix.lp_mask6); F(vmd_config, cfg_agentx);
	F(vmd_config, cfg_agentx.ax_context);

	S(vmop_info_result);
	F(vmop_info_result, vir_memory_size); F(vmop_info_result, vir_used_size);
	F(vmop_info_result, vir_ncpus); F(vmop_info_result, vir_vcpu_state);
	F(vmop_info_result, vir_creator_pid); F(vmop_info_result, vir_id);
	F(vmop_info_result, vir_name); F(vmop_info_result, vir_ttyname);
	F(vmop_info_result, vir_uid); F(vmop_info_result, vir_gid);
	F(vmop_info_result, vir_state);

	S(vm_info_result);
	F(vm_info_result, vir_memory_size); F(vm_info_result, vir_used_size);
	F(vm_info_result, vir_ncpus); F(vm_info_result, vir_vcpu_state);
	F(vm_info_result, vir_creator_pid); F(vm_info_result, vir_id);
	F(vm_info_result, vir_name);

	S(vm_info_params);
	F(vm_info_params, vip_size); F(vm_info_params, vip_info_ct); F(vm_info_params, vip_info);

	S(vm_terminate_params);
	F(vm_terminate_params, vtp_vm_id);

	S(vm_create_params);
	F(vm_create_params, vcp_nmemranges); F(vm_create_params, vcp_ncpus);
	F(vm_create_params, vcp_memranges); F(vm_create_params, vcp_memranges[15].vmr_type);
	F(vm_create_params, vcp_name); F(vm_create_params, vcp_sev); F(vm_create_params, vcp_seves);
	F(vm_create_params, vcp_id); F(vm_create_params, vcp_poscbit); F(vm_create_params, vcp_asid);

	S(vmop_create_params);
	F(vmop_create_params, vmc_id); F(vmop_create_params, vmc_name);
	F(vmop_create_params, vmc_owner); F(vmop_create_params, vmc_owner.gid);
	F(vmop_create_params, vmc_flags); F(vmop_create_params, vmc_checkaccess);
	F(vmop_create_params, vmc_ncpus); F(vmop_create_params, vmc_asid);
	F(vmop_create_params, vmc_asid[511]);
	F(vmop_create_params, vmc_poscbit); F(vmop_create_params, vmc_sev);
	F(vmop_create_params, vmc_seves); F(vmop_create_params, vmc_nmemranges);
	F(vmop_create_params, vmc_memranges); F(vmop_create_params, vmc_memranges[1].vmr_size);
	F(vmop_create_params, vmc_kernel); F(vmop_create_params, vmc_bootdevice);
	F(vmop_create_params, vmc_ndisks); F(vmop_create_params, vmc_disks);
	F(vmop_create_params, vmc_disks[3]); F(vmop_create_params, vmc_disktypes);
	F(vmop_create_params, vmc_diskbases); F(vmop_create_params, vmc_cdrom);
	F(vmop_create_params, vmc_nnics); F(vmop_create_params, vmc_ifnames);
	F(vmop_create_params, vmc_ifnames[2]); F(vmop_create_params, vmc_ifswitch);
	F(vmop_create_params, vmc_ifswitch[3]); F(vmop_create_params, vmc_ifgroup);
	F(vmop_create_params, vmc_ifrdomain); F(vmop_create_params, vmc_macs);
	F(vmop_create_params, vmc_macs[3]); F(vmop_create_params, vmc_ifflags);
	F(vmop_create_params, vmc_instance); F(vmop_create_params, vmc_insowner);
	F(vmop_create_params, vmc_insowner.gid); F(vmop_create_params, vmc_insflags);

	S(vmd_if);
	F(vmd_if, vif_name); F(vmd_if, vif_switch); F(vmd_if, vif_group); F(vmd_if, vif_fd);
	F(vmd_if, vif_rdomain); F(vmd_if, vif_flags); F(vmd_if, vif_entry);

	S(vmd_vm);
	F(vmd_vm, vm_params); F(vmd_vm, vm_params.vmc_name); F(vmd_vm, vm_params.vmc_ndisks);
	F(vmd_vm, vm_params.vmc_nnics); F(vmd_vm, vm_params.vmc_insflags);
	F(vmd_vm, vm_pid); F(vmd_vm, vm_uid); F(vmd_vm, vm_vmid); F(vmd_vm, vm_vmmid);
	F(vmd_vm, vm_peerid); F(vmd_vm, vm_sev_handle); F(vmd_vm, vm_sev_asid);
	F(vmd_vm, vm_poscbit); F(vmd_vm, vm_sev_nmemsegments); F(vmd_vm, vm_sev_memsegments);
	F(vmd_vm, vm_sev_memsegments[127].vmr_type);
	F(vmd_vm, vm_kernel); F(vmd_vm, vm_kernel_path); F(vmd_vm, vm_cdrom); F(vmd_vm, vm_disks);
	F(vmd_vm, vm_disks[0][0]); F(vmd_vm, vm_disks[1][2]); F(vmd_vm, vm_disks[3][3]);
	F(vmd_vm, vm_ifs);
	F(vmd_vm, vm_ifs[0].vif_fd); F(vmd_vm, vm_ifs[1].vif_fd); F(vmd_vm, vm_ifs[2].vif_fd);
	F(vmd_vm, vm_ifs[3].vif_fd); F(vmd_vm, vm_ifs[3].vif_flags); F(vmd_vm, vm_ifs[3].vif_entry);
	F(vmd_vm, vm_ttyname); F(vmd_vm, vm_tty); F(vmd_vm, vm_from_config); F(vmd_vm, vm_iev);
	F(vmd_vm, vm_iev.ibuf.fd); F(vmd_vm, vm_state); F(vmd_vm, vm_start_tv);
	F(vmd_vm, vm_start_tv.tv_usec); F(vmd_vm, vm_start_limit); F(vmd_vm, vm_entry);
	return 0;
}
