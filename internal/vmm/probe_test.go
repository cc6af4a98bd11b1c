package vmm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func needQEMU(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/usr/bin/" + DefaultQEMU); err != nil {
		t.Skipf("%s not installed (apt-get install qemu-system-x86): %v", DefaultQEMU, err)
	}
}

func TestProbeFirmwareExitsWithKnownStatus(t *testing.T) {
	// The probe guest, run under TCG: proves the firmware image and the debug-exit wiring work,
	// so a "tcg" answer from ProbeAccel means KVM failed, not the probe.
	needQEMU(t)
	if err := runProbeFirmware(context.Background(), "", AccelTCG, 30*time.Second); err != nil {
		t.Fatalf("probe firmware under TCG: %v", err)
	}
	fw := probeFirmware()
	if len(fw) != 64<<10 {
		t.Errorf("firmware is %d bytes, want 64 KiB", len(fw))
	}
}

func TestProbeAccelOnThisHost(t *testing.T) {
	needQEMU(t)
	const timeout = 3 * time.Second
	start := time.Now()
	got := ProbeAccel(context.Background(), "", timeout)
	elapsed := time.Since(start)
	if elapsed > timeout+2*time.Second {
		t.Errorf("ProbeAccel took %s with a %s timeout", elapsed, timeout)
	}
	_, pvm := os.Stat("/sys/module/kvm_pvm")
	_, intel := os.Stat("/sys/module/kvm_intel")
	_, amd := os.Stat("/sys/module/kvm_amd")
	if pvm == nil && intel != nil && amd != nil {
		// The development machines: /dev/kvm runs tiny firmware but hangs Linux guests.
		if got != AccelTCG {
			t.Errorf("ProbeAccel = %q on a software-KVM host, want tcg", got)
		}
	} else if got != AccelTCG && got != AccelKVM {
		t.Errorf("ProbeAccel = %q", got)
	}
	t.Logf("ProbeAccel = %s in %s", got, elapsed)
}

func TestKVMProbeChecks(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	noModules := filepath.Join(dir, "module")
	if err := os.Mkdir(noModules, 0o755); err != nil {
		t.Fatal(err)
	}
	devKVM := filepath.Join(dir, "kvm")
	if err := os.WriteFile(devKVM, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	err := kvmProbe{devKVM: filepath.Join(dir, "no-kvm"), sysModule: noModules}.usable(context.Background(), "", time.Second)
	if err == nil || strings.Count(err.Error(), "no-kvm") != 1 || !strings.HasPrefix(err.Error(), "open ") {
		t.Errorf("missing KVM device: %v; want the path named once (cloche doctor once said open /dev/kvm: open /dev/kvm)", err)
	}
	start := time.Now()
	err = kvmProbe{devKVM: devKVM, sysModule: noModules}.usable(context.Background(), "", time.Second)
	if err == nil || !strings.Contains(err.Error(), "kvm_intel nor kvm_amd") {
		t.Errorf("no hardware KVM module: %v", err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("module check took %s: it must not boot anything", d)
	}

	// Why the module check exists: a software KVM runs the probe firmware fine, so the
	// firmware alone would answer "kvm" on hosts where Linux guests hang.
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
			f.Close()
			pretend := filepath.Join(dir, "pretend")
			if err := os.MkdirAll(filepath.Join(pretend, "kvm_intel"), 0o755); err != nil {
				t.Fatal(err)
			}
			err := kvmProbe{devKVM: "/dev/kvm", sysModule: pretend}.usable(context.Background(), "", 10*time.Second)
			t.Logf("probe firmware under the software KVM: %v", err)
		}
	}
}

func TestProbeKillsHangingQEMU(t *testing.T) {
	// A "QEMU" that never exits stands for KVM hanging the probe guest.
	dir := t.TempDir()
	fake := filepath.Join(dir, "qemu")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nwhile :; do sleep 1; done\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := runProbeFirmware(context.Background(), fake, AccelKVM, 500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "did not exit") {
		t.Errorf("hanging probe: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("probe returned after %s with a 500ms timeout", d)
	}
	if p := qemuProcesses(t, dir); len(p) != 0 {
		t.Errorf("probe left processes: %v", p)
	}
	// Cancelling the caller's context stops it too.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if got := ProbeAccel(ctx, fake, time.Minute); got != AccelTCG {
		t.Errorf("ProbeAccel with a cancelled context = %q", got)
	}
}

func TestProbeRejectsWrongExit(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "qemu")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := runProbeFirmware(context.Background(), fake, AccelKVM, 5*time.Second); err == nil {
		t.Error("a QEMU exiting 0 passed the probe: only the debug-exit status may")
	}
}
