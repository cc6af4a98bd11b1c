package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/host"
	"github.com/cloche-dev/cloche/internal/hostcheck"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/internal/vmm"
)

func thisHostHasNoHardwareTEE(t *testing.T) {
	t.Helper()
	for _, p := range []string{"/dev/sev", "/sys/module/kvm_intel/parameters/tdx"} {
		if _, err := os.Stat(p); err == nil {
			t.Skipf("this host has %s", p)
		}
	}
}

func TestDoctorOnThisHost(t *testing.T) {
	testfixture.RequireQEMU(t)
	thisHostHasNoHardwareTEE(t)
	state := t.TempDir()

	code, stdout, stderr := cli(t, "doctor", "--state-dir", state, "--json")
	if code != 0 {
		t.Fatalf("doctor --json exited %d: %s", code, stderr)
	}
	var r hostcheck.Report
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatalf("doctor --json output is not a report: %v\n%s", err, stdout)
	}
	if r.SNP || r.TDX || !r.Sim || !slices.Equal(r.Labels, []string{hostcheck.LabelSim}) {
		t.Errorf("report snp=%t tdx=%t sim=%t labels=%q", r.SNP, r.TDX, r.Sim, r.Labels)
	}
	names := map[string]hostcheck.Check{}
	for _, c := range r.Checks {
		names[c.Name] = c
	}
	for _, want := range []string{"qemu", "kvm", "snp-kvm", "snp-device", "snp-qemu", "snp-firmware", "tdx-kvm", "tdx-qgs", "tdx-qemu", "tdx-firmware"} {
		if _, ok := names[want]; !ok {
			t.Errorf("no %s check", want)
		}
	}
	if c := names["snp-firmware"]; !strings.Contains(c.Detail, filepath.Join(state, "firmware", "OVMF.amdsev.fd")) {
		t.Errorf("snp-firmware does not look at the state directory's default: %+v", c)
	}

	code, stdout, _ = cli(t, "doctor", "--state-dir", state)
	if code != 0 || !strings.Contains(stdout, "CHECK") || !strings.Contains(stdout, "runner labels: cloche-sim") {
		t.Errorf("doctor table (exit %d):\n%s", code, stdout)
	}
	t.Logf("cloche doctor on this host:\n%s", stdout)

	for _, tee := range []string{"snp", "tdx"} {
		code, _, stderr = cli(t, "doctor", "--state-dir", state, "--require", tee)
		if code != exitHost || !strings.Contains(stderr, strings.ToUpper(tee)+" is not available on this host") || !strings.Contains(stderr, "fix:") {
			t.Errorf("doctor --require %s: exit %d, stderr %q", tee, code, stderr)
		}
	}
	if code, _, stderr := cli(t, "doctor", "--state-dir", state, "--require", "sgx"); code != exitUsage || !strings.Contains(stderr, "expected snp or tdx") {
		t.Errorf("doctor --require sgx: exit %d, %q", code, stderr)
	}
}

func TestRunRefusesHardwareTEEThisHostLacks(t *testing.T) {
	testfixture.RequireQEMU(t)
	thisHostHasNoHardwareTEE(t)
	state := t.TempDir()
	for _, tc := range []struct{ tee, want string }{
		{"snp", "--tee snp: this host cannot launch SNP guests: "},
		{"tdx", "--tee tdx: this host cannot launch TDX guests: "},
		{"auto", "no SEV-SNP or TDX host support was found"},
	} {
		code, _, stderr := cli(t, "run", "--state-dir", state, "--source", t.TempDir(), "--tee", tc.tee, "--", "true")
		if code != exitHost || !strings.Contains(stderr, tc.want) {
			t.Errorf("run --tee %s: exit %d (want %d), stderr %q", tc.tee, code, exitHost, stderr)
		}
	}
}

// readyHost is a fake host with SEV-SNP ready and TDX missing.
func readyHost(t *testing.T) hostcheck.Host {
	root := t.TempDir()
	p := filepath.Join(root, "sys/module/kvm_amd/parameters/sev_snp")
	os.MkdirAll(filepath.Dir(p), 0o755)
	os.WriteFile(p, []byte("Y\n"), 0o644)
	os.MkdirAll(filepath.Join(root, "dev"), 0o755)
	if err := unix.Mknod(filepath.Join(root, "dev", "sev"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))); err != nil {
		t.Skipf("cannot create a fake /dev/sev: %v", err)
	}
	fw := filepath.Join(root, "OVMF.fd")
	os.WriteFile(fw, []byte("fw"), 0o644)
	return hostcheck.Host{
		SysRoot: filepath.Join(root, "sys"), DevRoot: filepath.Join(root, "dev"), QEMU: "qemu",
		Run: func(context.Context, string, ...string) ([]byte, error) {
			return []byte("QEMU emulator version 10.0.2\n"), nil
		},
		ProbeKVM:    func(context.Context) error { return nil },
		SEVCPUID:    func() (vmm.SEVCPUID, error) { return vmm.SEVCPUID{SEV: true, SNP: true, CBitPos: 51}, nil },
		SNPFirmware: fw, TDXFirmware: filepath.Join(root, "none.fd"),
	}
}

func TestResolveTEE(t *testing.T) {
	h := readyHost(t)
	probed := 0
	check := func() hostcheck.Host { probed++; return h }
	for _, tc := range []struct {
		in   attest.TEE
		want attest.TEE
		err  string
	}{
		{"sim", attest.TEESim, ""},
		{"auto", attest.TEESNP, ""},
		{"snp", attest.TEESNP, ""},
		{"tdx", "", "tdx-kvm: kernel module kvm_intel is not loaded"},
		{"sgx", "", "expected auto, snp, tdx or sim"},
	} {
		got, err := host.ResolveTEE(context.Background(), tc.in, check)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("resolveTEE(%q) = %q, %v; want error %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("resolveTEE(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	if probed != 3 {
		t.Errorf("host probed %d times, want 3 (never for sim or a bad value)", probed)
	}
}
