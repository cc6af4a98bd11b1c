package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	sevtestdata "github.com/google/go-sev-guest/verify/testdata"

	"github.com/cloche-dev/cloche/internal/benchpair"
	"github.com/cloche-dev/cloche/verify/verifytest"
)

// milanTime is when go-sev-guest's sample Milan VCEK was valid.
var milanTime = time.Date(2022, time.September, 24, 1, 0, 0, 0, time.UTC)

// BenchmarkVerifyProcess times whole processes, as a user waits for them: in each iteration
// the baseline, a minimal go-sev-guest program verifying its sample Milan report and VCEK
// (testdata/sevverify), then `cloche evidence verify` of the same report and `cloche verify`
// of a complete simulated-TEE bundle (signature, statement, evidence, reference values,
// bindings, expectations). Both cloche figures are paired with that iteration's baseline.
// The binaries are built as a release builds them (static, stripped).
func BenchmarkVerifyProcess(b *testing.B) {
	dir := b.TempDir()
	cloche, baseline := filepath.Join(dir, "cloche"), filepath.Join(dir, "sevverify")
	goBuild(b, cloche, ".")
	goBuild(b, baseline, "./testdata/sevverify")
	report, vcek := filepath.Join(dir, "milan.bin"), filepath.Join(dir, "vcek.der")
	if err := os.WriteFile(report, sevtestdata.AttestationBytes, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(vcek, sevtestdata.VcekBytes, 0o644); err != nil {
		b.Fatal(err)
	}
	k, err := verifytest.NewKit(filepath.Join(dir, "kit"))
	if err != nil {
		b.Fatal(err)
	}
	f, err := k.Build(filepath.Join(dir, "fixture"), verifytest.Hooks{})
	if err != nil {
		b.Fatal(err)
	}
	trust := k.Trust()
	base := []string{baseline, report, vcek, fmt.Sprint(milanTime.Unix())}
	evidence := []string{cloche, "evidence", "verify", "--tee", "snp", "--certs", vcek, "--at", milanTime.Format(time.RFC3339),
		"--allow-debug", "--no-default-min-tcb", report}
	bundle := []string{cloche, "verify", "--bundle", f.BundlePath, "--key", trust.HostKeyPath,
		"--allow-simulated", "--trusted-sim-root", trust.SimRootPath,
		"--reference-values", f.ReferencePath, "--reference-key", trust.ReleaseKeyPath,
		"--source-tree", verifytest.SourceTree, "--toolchain-digest", verifytest.ToolchainDigest, f.Artifact}
	// One untimed run of each: page cache and the kernel's exec paths warm for all three.
	for _, argv := range [][]string{base, evidence, bundle} {
		timeProcess(b, argv)
	}
	var ev, bu benchpair.Pairs
	b.ResetTimer()
	for range b.N {
		tb := timeProcess(b, base)
		ev.Add(tb, timeProcess(b, evidence))
		bu.Add(tb, timeProcess(b, bundle))
	}
	ev.Report(b, "evidence-verify")
	bu.Report(b, "verify")
}

// goBuild builds pkg (relative to this package) to out as a release binary is built.
func goBuild(b *testing.B, out, pkg string) {
	b.Helper()
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -buildid=", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build %s: %v\n%s", pkg, err, msg)
	}
}

// timeProcess runs argv to completion and returns its wall-clock time; it must succeed.
func timeProcess(b *testing.B, argv []string) time.Duration {
	b.Helper()
	start := time.Now()
	msg, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	d := time.Since(start)
	if err != nil {
		b.Fatalf("%v: %v\n%s", argv, err, msg)
	}
	return d
}
