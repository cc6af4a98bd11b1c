package hostcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cloche-dev/cloche/internal/vmm"
)

func TestParseQEMUVersion(t *testing.T) {
	for in, want := range map[string]Version{
		"QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright (c) 2003-2025": {10, 0, 2},
		"QEMU emulator version 9.1.0\n": {9, 1, 0},
		"QEMU emulator version 10.1":    {10, 1, 0},
	} {
		got, err := ParseQEMUVersion(in)
		if err != nil || got != want {
			t.Errorf("ParseQEMUVersion(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "qemu-img version 10.0.2", "QEMU emulator version x.y"} {
		if _, err := ParseQEMUVersion(bad); err == nil {
			t.Errorf("ParseQEMUVersion(%q) accepted", bad)
		}
	}
	for _, tc := range []struct {
		v, min Version
		want   bool
	}{
		{Version{9, 1, 0}, MinQEMUSNP, true},
		{Version{9, 0, 9}, MinQEMUSNP, false},
		{Version{10, 0, 2}, MinQEMUSNP, true},
		{Version{10, 0, 2}, MinQEMUTDX, false},
		{Version{10, 1, 0}, MinQEMUTDX, true},
		{Version{11, 0, 0}, MinQEMUTDX, true},
	} {
		if got := tc.v.AtLeast(tc.min); got != tc.want {
			t.Errorf("%v.AtLeast(%v) = %t", tc.v, tc.min, got)
		}
	}
}

// fakeHost is a host with every piece for SNP and TDX present; tests take pieces away.
type fakeHost struct {
	root string
	h    Host
	qgs  net.Listener
}

func newFakeHost(t *testing.T, qemuVersion string) *fakeHost {
	t.Helper()
	root := t.TempDir()
	f := &fakeHost{root: root}
	write := func(rel, content string) string {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("sys/module/kvm_amd/parameters/sev_snp", "Y\n")
	write("sys/module/kvm_intel/parameters/tdx", "Y\n")
	os.MkdirAll(filepath.Join(root, "dev"), 0o755)
	if err := unix.Mknod(filepath.Join(root, "dev", "sev"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))); err != nil {
		t.Skipf("cannot create a fake /dev/sev device node: %v", err)
	}
	sock := filepath.Join(root, "qgs.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	f.qgs = l
	f.h = Host{
		SysRoot: filepath.Join(root, "sys"), DevRoot: filepath.Join(root, "dev"), QEMU: "qemu-system-x86_64",
		Run: func(ctx context.Context, name string, args ...string) ([]byte, error) {
			if name != "qemu-system-x86_64" || !slices.Equal(args, []string{"--version"}) {
				return nil, errors.New("unexpected command")
			}
			return []byte("QEMU emulator version " + qemuVersion + "\nCopyright\n"), nil
		},
		ProbeKVM: func(context.Context) error { return nil },
		SEVCPUID: func() (vmm.SEVCPUID, error) {
			return vmm.SEVCPUID{SEV: true, SEVES: true, SNP: true, CBitPos: 51, ReducedPhysBits: 1}, nil
		},
		Kernel:      write("image/vmlinuz", "k"),
		Initrd:      write("image/initrd", "i"),
		SNPFirmware: write("fw/OVMF.amdsev.fd", "fw"),
		TDXFirmware: write("fw/TDVF.fd", "fw"),
		QGS:         "unix:" + sock,
	}
	return f
}

func checkNamed(r *Report, name string) Check {
	for _, c := range r.Checks {
		if c.Name == name {
			return c
		}
	}
	return Check{}
}

func TestReadyHost(t *testing.T) {
	f := newFakeHost(t, "10.1.0")
	r := f.h.Check(context.Background())
	if !r.SNP || !r.TDX || !r.Sim {
		t.Fatalf("report %+v", r)
	}
	if !slices.Equal(r.Labels, []string{LabelSNP, LabelTDX}) {
		t.Errorf("labels %q", r.Labels)
	}
	for _, c := range r.Checks {
		if c.Status != StatusOK {
			t.Errorf("check %+v not ok on a ready host", c)
		}
	}
	if c := checkNamed(r, "snp-cpu"); !strings.Contains(c.Detail, "C-bit 51") {
		t.Errorf("snp-cpu detail %q", c.Detail)
	}
}

func TestEachMissingPiece(t *testing.T) {
	for _, tc := range []struct {
		name      string
		qemu      string
		breakIt   func(t *testing.T, f *fakeHost)
		check     string
		detail    string
		snp, tdx  bool
		wantLabel []string
	}{
		{"qemu 10.0: snp only", "10.0.2", func(*testing.T, *fakeHost) {}, "tdx-qemu", "need 10.1.0", true, false, []string{LabelSNP}},
		{"qemu 9.0: neither", "9.0.0", func(*testing.T, *fakeHost) {}, "snp-qemu", "need 9.1.0", false, false, []string{LabelSim}},
		{"no qemu", "10.1.0", func(t *testing.T, f *fakeHost) {
			f.h.Run = func(context.Context, string, ...string) ([]byte, error) {
				return nil, errors.New("executable file not found")
			}
		}, "qemu", "not found", false, false, nil},
		{"kvm hangs guests", "10.1.0", func(t *testing.T, f *fakeHost) {
			f.h.ProbeKVM = func(context.Context) error { return errors.New("neither kvm_intel nor kvm_amd is loaded") }
		}, "kvm", "neither kvm_intel nor kvm_amd", false, false, []string{LabelSim}},
		{"intel cpu", "10.1.0", func(t *testing.T, f *fakeHost) {
			f.h.SEVCPUID = func() (vmm.SEVCPUID, error) { return vmm.ParseSEVCPUID(0x80000008, 0, 0) }
		}, "snp-cpu", "not available", false, true, []string{LabelTDX}},
		{"sev without snp", "10.1.0", func(t *testing.T, f *fakeHost) {
			f.h.SEVCPUID = func() (vmm.SEVCPUID, error) { return vmm.SEVCPUID{SEV: true, CBitPos: 47}, nil }
		}, "snp-cpu", "does not report SEV-SNP", false, true, []string{LabelTDX}},
		{"sev_snp off", "10.1.0", func(t *testing.T, f *fakeHost) {
			os.WriteFile(filepath.Join(f.h.SysRoot, "module/kvm_amd/parameters/sev_snp"), []byte("N\n"), 0o644)
		}, "snp-kvm", "sev_snp=N", false, true, []string{LabelTDX}},
		{"kvm_amd not loaded", "10.1.0", func(t *testing.T, f *fakeHost) {
			os.RemoveAll(filepath.Join(f.h.SysRoot, "module/kvm_amd"))
		}, "snp-kvm", "kvm_amd is not loaded", false, true, []string{LabelTDX}},
		{"kernel without sev_snp", "10.1.0", func(t *testing.T, f *fakeHost) {
			os.Remove(filepath.Join(f.h.SysRoot, "module/kvm_amd/parameters/sev_snp"))
		}, "snp-kvm", "kernel too old", false, true, []string{LabelTDX}},
		{"no /dev/sev", "10.1.0", func(t *testing.T, f *fakeHost) { os.Remove(filepath.Join(f.h.DevRoot, "sev")) },
			"snp-device", "no such file", false, true, []string{LabelTDX}},
		{"snp firmware not configured", "10.1.0", func(t *testing.T, f *fakeHost) { f.h.SNPFirmware = "" },
			"snp-firmware", "not configured", false, true, []string{LabelTDX}},
		{"snp firmware missing", "10.1.0", func(t *testing.T, f *fakeHost) { os.Remove(f.h.SNPFirmware) },
			"snp-firmware", "no such file", false, true, []string{LabelTDX}},
		{"tdx off", "10.1.0", func(t *testing.T, f *fakeHost) {
			os.WriteFile(filepath.Join(f.h.SysRoot, "module/kvm_intel/parameters/tdx"), []byte("N\n"), 0o644)
		}, "tdx-kvm", "tdx=N", true, false, []string{LabelSNP}},
		{"qgs down", "10.1.0", func(t *testing.T, f *fakeHost) { f.qgs.Close() },
			"tdx-qgs", "QGS at unix:", true, false, []string{LabelSNP}},
		{"qgs bad address", "10.1.0", func(t *testing.T, f *fakeHost) { f.h.QGS = "tcp:1.2.3.4:1" },
			"tdx-qgs", "expected unix:PATH or vsock:CID:PORT", true, false, []string{LabelSNP}},
		{"qgs vsock refused", "10.1.0", func(t *testing.T, f *fakeHost) {
			f.h.QGS = "vsock:2:4050"
			f.h.DialVsock = func(_ context.Context, cid, port uint32) error {
				return fmt.Errorf("connecting to vsock %d:%d: %w", cid, port, unix.ECONNREFUSED)
			}
		}, "tdx-qgs", "QGS at vsock:2:4050: connecting to vsock 2:4050: connection refused", true, false, []string{LabelSNP}},
		{"tdvf missing", "10.1.0", func(t *testing.T, f *fakeHost) { f.h.TDXFirmware = filepath.Join(f.root, "none.fd") },
			"tdx-firmware", "no such file", true, false, []string{LabelSNP}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeHost(t, tc.qemu)
			tc.breakIt(t, f)
			r := f.h.Check(context.Background())
			c := checkNamed(r, tc.check)
			if c.Status != StatusMissing || !strings.Contains(c.Detail, tc.detail) {
				t.Errorf("check %s = %+v, want missing with %q", tc.check, c, tc.detail)
			}
			if c.Fix == "" {
				t.Errorf("check %s has no fix", tc.check)
			}
			if r.SNP != tc.snp || r.TDX != tc.tdx {
				t.Errorf("SNP %t TDX %t, want %t %t", r.SNP, r.TDX, tc.snp, tc.tdx)
			}
			if !slices.Equal(r.Labels, tc.wantLabel) {
				t.Errorf("labels %q, want %q", r.Labels, tc.wantLabel)
			}
		})
	}
}

func TestGuestImageNotBuiltIsOnlyAWarning(t *testing.T) {
	f := newFakeHost(t, "10.1.0")
	f.h.Kernel, f.h.Initrd = "", ""
	r := f.h.Check(context.Background())
	if c := checkNamed(r, "guest-kernel"); c.Status != StatusWarn {
		t.Errorf("guest-kernel %+v, want a warning", c)
	}
	if !r.SNP || !r.TDX {
		t.Error("a guest image built on first use blocked a TEE")
	}
	// A configured but missing image is a real problem.
	f.h.Kernel = filepath.Join(f.root, "gone")
	r = f.h.Check(context.Background())
	if c := checkNamed(r, "guest-kernel"); c.Status != StatusMissing || r.SNP || r.TDX {
		t.Errorf("missing kernel: %+v, SNP %t TDX %t", c, r.SNP, r.TDX)
	}
}

func TestThisHost(t *testing.T) {
	if _, err := os.Stat("/usr/bin/" + vmm.DefaultQEMU); err != nil {
		t.Skipf("QEMU not installed: %v", err)
	}
	r := Default("").Check(context.Background())
	for _, c := range r.Checks {
		t.Logf("%-13s %-4s %-8s %s | %s", c.Name, c.TEE, c.Status, c.Detail, c.Fix)
		if c.Status == StatusMissing && c.Fix == "" {
			t.Errorf("check %s is missing without a fix", c.Name)
		}
	}
	if !r.Sim {
		t.Error("QEMU is installed but the report says the simulated TEE cannot run")
	}
	if _, err := os.Stat("/dev/sev"); err != nil && r.SNP {
		t.Error("SNP reported ready without /dev/sev")
	}
	if !r.SNP && !r.TDX && !slices.Equal(r.Labels, []string{LabelSim}) {
		t.Errorf("labels %q on a host without hardware TEEs, want [%s]", r.Labels, LabelSim)
	}
}

// A QGS on vsock is reached through a real connection, as QEMU reaches it: no
// /dev/vhost-vsock is needed (a host process reaching its own CID uses vsock_loopback).
func TestQGSOverVsockIsProbed(t *testing.T) {
	f := newFakeHost(t, "10.1.0")
	f.h.QGS = "vsock:2:4050"
	var dialed []uint32
	f.h.DialVsock = func(_ context.Context, cid, port uint32) error {
		dialed = append(dialed, cid, port)
		return nil
	}
	c := checkNamed(f.h.Check(context.Background()), "tdx-qgs")
	if c.Status != StatusOK || c.Detail != "QGS at vsock:2:4050 accepts connections" || !slices.Equal(dialed, []uint32{2, 4050}) {
		t.Errorf("tdx-qgs = %+v after dialing %v, want ok after dialing 2:4050", c, dialed)
	}
}
