package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/internal/testfixture"
)

// The build in the guest runs under the sandbox's seccomp filter and rlimits: a C program
// compiled and run there finds io_uring, bpf, perf_event_open, keyctl and userfaultfd
// refused with EPERM, core dumps off, and ordinary calls working.
func TestBuildSandboxSyscalls(t *testing.T) {
	testfixture.RequireQEMU(t)
	src := t.TempDir()
	prog := `#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
static void probe(const char *name, long nr) {
	long r = syscall(nr, 0, 0, 0, 0, 0, 0);
	printf("%s=%s\n", name, r == -1 && errno == EPERM ? "EPERM" : "allowed");
}
int main(void) {
	struct rlimit core;
	probe("io_uring_setup", SYS_io_uring_setup);
	probe("bpf", SYS_bpf);
	probe("perf_event_open", SYS_perf_event_open);
	probe("keyctl", SYS_keyctl);
	probe("userfaultfd", SYS_userfaultfd);
	printf("getpid=%s\n", syscall(SYS_getpid) > 0 ? "ok" : "failed");
	getrlimit(RLIMIT_CORE, &core);
	printf("core=%lu\n", (unsigned long)core.rlim_max);
	return 0;
}
`
	if err := os.WriteFile(filepath.Join(src, "probe.c"), []byte(prog), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	code, _, stderr := cli(t, "run", "--state-dir", t.TempDir(), "--source", src, "--out", out, "--tee", "sim",
		"--guest-image", testfixture.GuestImage(t), "--toolchain", testfixture.GCCToolchain(t), "--accel", "tcg",
		"--artifact", "probe.txt", "--", "sh", "-c", "gcc -o probe probe.c && ./probe > probe.txt")
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, stderr)
	}
	got, err := os.ReadFile(filepath.Join(out, "probe.txt"))
	if err != nil {
		t.Fatal(err)
	}
	want := "io_uring_setup=EPERM\nbpf=EPERM\nperf_event_open=EPERM\nkeyctl=EPERM\nuserfaultfd=EPERM\ngetpid=ok\ncore=0\n"
	if string(got) != want {
		t.Fatalf("in the guest's sandbox:\n%s\nwant:\n%s", got, want)
	}
	if strings.Contains(stderr, "FAILED") {
		t.Fatal(stderr)
	}
}
