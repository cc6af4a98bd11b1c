package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// Probe firmware: a 64 KiB -bios image whose reset vector (physical 0xFFFF0, the image's last
// 16 bytes) writes probeExitValue to QEMU's isa-debug-exit port, which makes QEMU exit with
// status (value<<1)|1. A guest that reaches it has executed its first instructions.
const (
	probeFirmwareSize = 64 << 10
	probeResetVector  = probeFirmwareSize - 16
	probeExitPort     = 0xf4
	probeExitValue    = 0x2a
	probeExitStatus   = probeExitValue<<1 | 1
)

// DefaultProbeTimeout is what Run gives ProbeAccel for Accel "auto".
const DefaultProbeTimeout = 3 * time.Second

// probeFirmware returns the probe's firmware image.
func probeFirmware() []byte {
	fw := make([]byte, probeFirmwareSize)
	for i := range fw {
		fw[i] = 0xf4 // hlt, should anything jump elsewhere
	}
	code := []byte{
		0xb0, probeExitValue, // mov al, probeExitValue
		0xe6, probeExitPort, // out probeExitPort, al
		0xf4,       // hlt
		0xeb, 0xfd, // jmp back to hlt
	}
	copy(fw[probeResetVector:], code)
	return fw
}

// kvmProbe holds the host paths the KVM probe looks at, so tests can point them elsewhere.
type kvmProbe struct {
	devKVM    string // the KVM device
	sysModule string // /sys/module, where the hardware KVM modules show up
}

// ProbeAccel returns "kvm" only if a KVM guest actually runs within timeout, else "tcg".
//
// It never waits longer than timeout: on some hosts /dev/kvm exists but QEMU stops a stock
// Linux guest on a KVM internal error and then waits forever. Three checks, all needed:
//  1. /dev/kvm opens read-write;
//  2. a hardware KVM module (kvm_intel or kvm_amd) is loaded: a software KVM (such as PVM's
//     kvm_pvm, which shadows page tables and cannot emulate VEX instructions) runs tiny
//     firmware but not a Linux kernel, and SEV-SNP/TDX need the hardware modules anyway;
//  3. the probe firmware boots under -accel kvm and exits with the expected status.
func ProbeAccel(ctx context.Context, qemu string, timeout time.Duration) string {
	if ProbeKVM(ctx, qemu, timeout) == nil {
		return AccelKVM
	}
	return AccelTCG
}

// ProbeKVM runs ProbeAccel's checks and returns nil if a KVM guest runs within timeout, else
// the reason it does not (for `cloche doctor`).
func ProbeKVM(ctx context.Context, qemu string, timeout time.Duration) error {
	host := kvmProbe{devKVM: "/dev/kvm", sysModule: "/sys/module"}
	return host.usable(ctx, qemu, timeout)
}

// usable returns nil if KVM runs a guest, else why not.
func (p kvmProbe) usable(ctx context.Context, qemu string, timeout time.Duration) error {
	f, err := os.OpenFile(p.devKVM, os.O_RDWR, 0)
	if err != nil {
		return err // an *os.PathError: "open /dev/kvm: <reason>"
	}
	f.Close()
	hardware := false
	for _, m := range []string{"kvm_intel", "kvm_amd"} {
		if _, err := os.Stat(filepath.Join(p.sysModule, m)); err == nil {
			hardware = true
		}
	}
	if !hardware {
		return fmt.Errorf("neither kvm_intel nor kvm_amd is loaded (%s)", p.sysModule)
	}
	return runProbeFirmware(ctx, qemu, AccelKVM, timeout)
}

// runProbeFirmware boots the probe firmware with accel and returns nil if QEMU exits with the
// probe's status within timeout. QEMU is killed (whole process group) otherwise.
func runProbeFirmware(ctx context.Context, qemu, accel string, timeout time.Duration) error {
	if timeout <= 0 {
		return fmt.Errorf("probe timeout %s must be positive", timeout)
	}
	if qemu == "" {
		qemu = DefaultQEMU
	}
	bin, err := exec.LookPath(qemu)
	if err != nil {
		return fmt.Errorf("QEMU binary %q: %w", qemu, err)
	}
	dir, err := os.MkdirTemp("", "cloche-probe-")
	if err != nil {
		return fmt.Errorf("probe directory: %w", err)
	}
	defer os.RemoveAll(dir)
	fw := filepath.Join(dir, "probe.bin")
	if err := os.WriteFile(fw, probeFirmware(), 0o600); err != nil {
		return fmt.Errorf("write probe firmware: %w", err)
	}

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin,
		"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-serial", "none",
		"-no-reboot", "-machine", "q35", "-accel", accel, "-m", "16",
		"-bios", fw,
		"-device", fmt.Sprintf("isa-debug-exit,iobase=%#x,iosize=1", probeExitPort),
	)
	stderr := newTailBuffer(4<<10, "")
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	err = cmd.Run()
	if ctx.Err() != nil {
		return fmt.Errorf("probe guest did not exit within %s: %w", timeout, ctx.Err())
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == probeExitStatus {
		return nil
	}
	if err == nil {
		return fmt.Errorf("probe guest exited 0 without reaching the debug-exit port")
	}
	return fmt.Errorf("probe guest failed: %w: %s", err, stderr.String())
}
