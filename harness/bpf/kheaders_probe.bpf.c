// SPDX-License-Identifier: GPL-2.0
/*
 * A tracing program compiled the way BCC and samples/bpf compile against
 * kernel headers (no BTF, no vmlinux.h): real kernel types from the
 * archive, read with helpers whose numbers come from the archived uapi.
 */
#include <linux/types.h>
#include <linux/sched.h>
#include <linux/ptrace.h>
#include <uapi/linux/bpf.h>

#define SEC(name) __attribute__((section(name), used))

static long (*bpf_probe_read_kernel)(void *dst, __u32 size, const void *src) =
	(void *)BPF_FUNC_probe_read_kernel;
static __u64 (*bpf_get_current_task)(void) = (void *)BPF_FUNC_get_current_task;
static long (*bpf_trace_printk)(const char *fmt, __u32 fmt_size, ...) =
	(void *)BPF_FUNC_trace_printk;

#if defined(__x86_64__)
#define FIRST_ARG(r) ((r)->di)
#elif defined(__aarch64__)
#define FIRST_ARG(r) ((r)->regs[0])
#else
#error "add this architecture's first-argument register"
#endif

SEC("kprobe/do_nanosleep")
int kheaders_probe(struct pt_regs *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	char comm[TASK_COMM_LEN];
	pid_t tgid = 0;
	unsigned long arg = FIRST_ARG(ctx);
	static const char fmt[] = "kheaders_probe %s %d %lx\n";

	bpf_probe_read_kernel(&tgid, sizeof(tgid), &task->tgid);
	bpf_probe_read_kernel(comm, sizeof(comm), task->comm);
	bpf_trace_printk(fmt, sizeof(fmt), comm, tgid, arg);
	return 0;
}

char _license[] SEC("license") = "GPL";
