package guest

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cloche-dev/cloche/job"
)

// deniedSyscalls are the system calls the build may not make: large kernel attack surfaces
// a build never needs. They fail with EPERM (programs treat that as "disabled" and fall
// back), they do not kill the build.
//
//	io_uring_*          a second syscall interface with a long record of kernel bugs;
//	bpf, perf_event_open kernel programs and hardware counters;
//	keyctl, add_key, request_key
//	                    the kernel keyrings, which are not namespaced;
//	userfaultfd         the classic tool for winning kernel races.
var deniedSyscalls = []uint32{
	unix.SYS_IO_URING_SETUP, unix.SYS_IO_URING_ENTER, unix.SYS_IO_URING_REGISTER,
	unix.SYS_BPF, unix.SYS_PERF_EVENT_OPEN,
	unix.SYS_KEYCTL, unix.SYS_ADD_KEY, unix.SYS_REQUEST_KEY,
	unix.SYS_USERFAULTFD,
}

// x32SyscallBit marks the x32 ABI's system call numbers, which alias the x86-64 ones; the
// filter refuses them all rather than check each twice.
const x32SyscallBit = 0x40000000

// seccomp_data offsets (linux/seccomp.h): nr, then arch.
const (
	seccompDataNR   = 0
	seccompDataArch = 4
)

// seccompFilter is the classic BPF program: kill anything that is not the x86-64 ABI,
// refuse x32 and deniedSyscalls with EPERM, allow the rest.
func seccompFilter() []unix.SockFilter {
	stmt := func(code uint16, k uint32) unix.SockFilter { return unix.SockFilter{Code: code, K: k} }
	jeq := func(k uint32, jt, jf uint8) unix.SockFilter {
		return unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: jt, Jf: jf, K: k}
	}
	deny := stmt(unix.BPF_RET|unix.BPF_K, unix.SECCOMP_RET_ERRNO|uint32(unix.EPERM))
	p := []unix.SockFilter{
		stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, seccompDataArch),
		jeq(unix.AUDIT_ARCH_X86_64, 1, 0),
		stmt(unix.BPF_RET|unix.BPF_K, unix.SECCOMP_RET_KILL_PROCESS),
		stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, seccompDataNR),
		{Code: unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K, Jt: 0, Jf: 1, K: x32SyscallBit},
		deny,
	}
	for _, nr := range deniedSyscalls {
		p = append(p, jeq(nr, 0, 1), deny)
	}
	return append(p, stmt(unix.BPF_RET|unix.BPF_K, unix.SECCOMP_RET_ALLOW))
}

// installSeccomp applies seccompFilter to the calling thread, which must have
// no_new_privs set and stay locked to its goroutine: the filter is inherited by the
// processes this thread forks, as no_new_privs is.
func installSeccomp() error {
	filter := seccompFilter()
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&prog)), 0, 0); err != nil {
		return fmt.Errorf("installing the seccomp filter: %w", err)
	}
	return nil
}

// rlimit is one resource limit set on the build (soft and hard).
type rlimit struct {
	resource int
	limit    uint64
}

// sandboxRlimits are the manifest's limits (job.Rlimits, defaults filled in) as setrlimit
// calls; core dumps are always off.
func sandboxRlimits(r job.Rlimits) []rlimit {
	r = r.Effective()
	fsize := r.FileSizeBytes
	if fsize == 0 {
		fsize = unix.RLIM_INFINITY
	}
	return []rlimit{
		{unix.RLIMIT_CORE, 0},
		{unix.RLIMIT_NPROC, r.Processes},
		{unix.RLIMIT_NOFILE, r.OpenFiles},
		{unix.RLIMIT_FSIZE, fsize},
	}
}

// setSandboxRlimits applies limits (soft and hard) to this process; the build
// inherits them. A limit above the current hard limit needs CAP_SYS_RESOURCE, which the
// guest's PID 1 has; without it the limit stays at the current hard one.
func setSandboxRlimits(limits []rlimit) error {
	for _, r := range limits {
		err := unix.Setrlimit(r.resource, &unix.Rlimit{Cur: r.limit, Max: r.limit})
		if errors.Is(err, unix.EPERM) {
			var cur unix.Rlimit
			if err = unix.Getrlimit(r.resource, &cur); err == nil {
				l := min(r.limit, cur.Max)
				err = unix.Setrlimit(r.resource, &unix.Rlimit{Cur: l, Max: l})
			}
		}
		if err != nil {
			return fmt.Errorf("setting rlimit %d to %d: %w", r.resource, r.limit, err)
		}
	}
	return nil
}
