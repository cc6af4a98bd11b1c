package guest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cloche-dev/cloche/job"
)

// seccompChildEnv makes the test binary, re-executed, be a process under the build's
// seccomp filter that reports which system calls it may make.
const seccompChildEnv = "CLOCHE_TEST_SECCOMP_CHILD"

// seccompChild runs under the filter and prints one line per probed system call.
func seccompChild() {
	runtime.LockOSThread()
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		os.Stdout.WriteString("no_new_privs: " + err.Error() + "\n")
		os.Exit(2)
	}
	if err := installSeccomp(); err != nil {
		os.Stdout.WriteString(err.Error() + "\n")
		os.Exit(2)
	}
	report := func(name string, nr uintptr) {
		_, _, errno := unix.Syscall6(nr, 0, 0, 0, 0, 0, 0)
		os.Stdout.WriteString(name + "=" + errnoName(errno) + "\n")
	}
	report("io_uring_setup", unix.SYS_IO_URING_SETUP)
	report("bpf", unix.SYS_BPF)
	report("perf_event_open", unix.SYS_PERF_EVENT_OPEN)
	report("keyctl", unix.SYS_KEYCTL)
	report("add_key", unix.SYS_ADD_KEY)
	report("userfaultfd", unix.SYS_USERFAULTFD)
	report("x32_getpid", unix.SYS_GETPID|x32SyscallBit)
	report("getpid", unix.SYS_GETPID)
	report("getppid", unix.SYS_GETPPID)
	os.Exit(0)
}

func errnoName(e unix.Errno) string {
	if e == 0 {
		return "ok"
	}
	return unix.ErrnoName(e)
}

// The filter on the real kernel: the denied calls fail with EPERM, x32 numbers too, and
// ordinary calls still work.
func TestSeccompFilter(t *testing.T) {
	if os.Getenv(seccompChildEnv) == "1" {
		seccompChild()
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestSeccompFilter$")
	cmd.Env = append(os.Environ(), seccompChildEnv+"=1")
	out, err := cmd.Output()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	got := strings.TrimSpace(string(out))
	want := strings.Join([]string{"io_uring_setup=EPERM", "bpf=EPERM", "perf_event_open=EPERM", "keyctl=EPERM",
		"add_key=EPERM", "userfaultfd=EPERM", "x32_getpid=EPERM", "getpid=ok", "getppid=ok"}, "\n")
	if got != want {
		t.Fatalf("under the filter (%v):\n%s\nwant:\n%s", err, got, want)
	}
}

// The rlimits the build inherits, from the manifest (defaults for zero fields): each one
// set, soft and hard; without CAP_SYS_RESOURCE (a container; the guest's PID 1 has it) a
// limit is not raised past the hard one. A file-size limit makes a larger write fail.
func TestSandboxRlimits(t *testing.T) {
	if v, ok := strings.CutPrefix(os.Getenv(seccompChildEnv), "rlimit:"); ok {
		var r job.Rlimits
		if err := json.Unmarshal([]byte(v), &r); err != nil {
			os.Stdout.WriteString(err.Error())
			os.Exit(2)
		}
		checkRlimitsChild(r)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []job.Rlimits{{}, {Processes: 100, OpenFiles: 64, FileSizeBytes: 1 << 20}} {
		b, _ := json.Marshal(r)
		cmd := exec.Command(exe, "-test.run=^TestSandboxRlimits$")
		cmd.Env = append(os.Environ(), seccompChildEnv+"=rlimit:"+string(b))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("limits %s: %v: %s", b, err, out)
		}
	}
}

// checkRlimitsChild sets r in this (child) process, checks every limit and exits.
func checkRlimitsChild(r job.Rlimits) {
	fail := func(format string, a ...any) {
		os.Stdout.WriteString(fmt.Sprintf(format, a...))
		os.Exit(2)
	}
	limits := sandboxRlimits(r)
	hard := map[int]uint64{}
	var cur unix.Rlimit
	for _, l := range limits {
		unix.Getrlimit(l.resource, &cur)
		hard[l.resource] = cur.Max
	}
	if err := setSandboxRlimits(limits); err != nil {
		fail("%v", err)
	}
	want := map[int]uint64{unix.RLIMIT_CORE: 0, unix.RLIMIT_NPROC: r.Effective().Processes,
		unix.RLIMIT_NOFILE: r.Effective().OpenFiles, unix.RLIMIT_FSIZE: unix.RLIM_INFINITY}
	if r.FileSizeBytes != 0 {
		want[unix.RLIMIT_FSIZE] = r.FileSizeBytes
	}
	if len(limits) != len(want) {
		fail("%d limits set, want %d", len(limits), len(want))
	}
	for res, w := range want {
		if !capSysResource() {
			w = min(w, hard[res])
		}
		if err := unix.Getrlimit(res, &cur); err != nil || cur.Cur != w || cur.Max != w {
			fail("rlimit %d is %d/%d, want %d", res, cur.Cur, cur.Max, w)
		}
	}
	if r.FileSizeBytes != 0 {
		// Go ignores SIGXFSZ, so the write past the limit fails with EFBIG.
		f, err := os.CreateTemp("", "fsize")
		if err != nil {
			fail("%v", err)
		}
		defer os.Remove(f.Name())
		if _, err := f.Write(make([]byte, r.FileSizeBytes+1)); !errors.Is(err, unix.EFBIG) {
			fail("writing past RLIMIT_FSIZE: %v, want EFBIG", err)
		}
	}
	os.Exit(0)
}

// capSysResource reports whether this process may raise hard limits.
func capSysResource() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:\t"); ok {
			var caps uint64
			for _, c := range v {
				caps <<= 4
				switch {
				case c >= '0' && c <= '9':
					caps |= uint64(c - '0')
				case c >= 'a' && c <= 'f':
					caps |= uint64(c-'a') + 10
				}
			}
			return caps&(1<<unix.CAP_SYS_RESOURCE) != 0
		}
	}
	return false
}
