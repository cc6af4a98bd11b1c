package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/internal/testfixture"
)

// cloche selftest --tee sim launches the tiny job in a real VM, verifies it with the
// measurement computed from the guest image, and leaves a diagnostic bundle with every
// phase, the doctor report, the console, the provenance and every check.
func TestSelftestSim(t *testing.T) {
	testfixture.RequireQEMU(t)
	state, out := t.TempDir(), filepath.Join(t.TempDir(), "bundle")
	code, stdout, stderr := cli(t, "selftest", "--state-dir", state, "--tee", "sim", "--accel", "tcg",
		"--guest-image", testfixture.GuestImage(t), "--out", out)
	if code != 0 || !strings.Contains(stderr, "PASSED: selftest of sim") || stdout != "" {
		t.Fatalf("exit %d\nstdout %q\n%s", code, stdout, stderr)
	}
	var sum selftestSummary
	readJSON(t, filepath.Join(out, "summary.json"), &sum)
	var names []string
	for _, p := range sum.Phases {
		names = append(names, p.Name)
		if p.Error != "" {
			t.Errorf("phase %s: %s", p.Name, p.Error)
		}
	}
	if !sum.Passed || strings.Join(names, ",") != "doctor,versions,toolchain image,host,build,verify" {
		t.Errorf("summary: passed %v, phases %v", sum.Passed, names)
	}
	if !strings.HasPrefix(sum.Versions["qemu"].(string), "QEMU emulator version") {
		t.Errorf("versions: %v", sum.Versions)
	}
	var checks struct {
		Passed bool `json:"passed"`
		Checks []struct {
			Name, Outcome string
		} `json:"checks"`
	}
	readJSON(t, filepath.Join(out, "checks.json"), &checks)
	measured := false
	for _, c := range checks.Checks {
		measured = measured || (c.Name == "measurement" && c.Outcome == "passed")
	}
	if !checks.Passed || !measured {
		t.Errorf("checks.json: %+v", checks)
	}
	console, err := os.ReadFile(filepath.Join(out, "console.log"))
	if err != nil || !strings.Contains(string(console), "selftest-ok") {
		t.Errorf("console.log lacks the job's output (%v):\n%s", err, console)
	}
	hostLog, err := os.ReadFile(filepath.Join(out, "host.log"))
	if err != nil || !strings.Contains(string(hostLog), `msg="vmm: starting QEMU"`) || !strings.Contains(string(hostLog), "-initrd") {
		t.Errorf("host.log lacks QEMU's command line (%v):\n%s", err, hostLog)
	}
	for _, f := range []string{"doctor.json", "out/provenance.sigstore.json", "out/selftest.txt"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("bundle lacks %s: %v", f, err)
		}
	}
}

// Bad flags fail at once, before anything is checked or launched.
func TestSelftestBadInput(t *testing.T) {
	file := filepath.Join(t.TempDir(), "f")
	os.WriteFile(file, nil, 0o644)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"selftest"}, `--tee "": expected snp, tdx or sim`},
		{[]string{"selftest", "--tee", "sgx"}, `--tee "sgx": expected snp, tdx or sim`},
		{[]string{"selftest", "--tee", "sim", "--accel", "hvf"}, `--accel "hvf": expected auto, kvm or tcg`},
		{[]string{"selftest", "--tee", "sim", "--out", file}, "expected a directory, not a file"},
	} {
		code, _, stderr := cli(t, append(tc.args, "--state-dir", t.TempDir())...)
		if code != exitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, %q; want 2 naming %q", tc.args, code, stderr, tc.want)
		}
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
