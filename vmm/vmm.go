// Package vmm launches the confidential VM through QEMU: direct kernel boot, virtio-blk
// disks found by serial number, the serial console streamed live, the simulated-TEE channel,
// and a wall-clock limit. QEMU and everything on the host side are untrusted by the design
// (docs/design.md, threat model); this package is about never hanging and never leaving a
// QEMU behind, not about protecting the guest.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/cloche-dev/cloche/attest"
	"golang.org/x/sys/unix"
)

// Config describes one VM run.
type Config struct {
	// QEMU is the binary, looked up in PATH; default "qemu-system-x86_64".
	QEMU string
	// Accel is "tcg", "kvm" or "auto" (the default: ProbeAccel with DefaultProbeTimeout;
	// snp and tdx always run under KVM, and refuse "tcg").
	Accel string

	Kernel, Initrd, Cmdline string
	// VCPUs and MemoryMiB default to 2 and 2048.
	VCPUs, MemoryMiB int

	// Raw image files. The input and toolchain disks are attached read-only; the guest finds
	// each by its serial: cloche-input, cloche-toolchain, cloche-output. An empty path leaves
	// that disk out.
	InputDisk, ToolchainDisk, OutputDisk string

	// TEE is "sim" (needs SimService), "snp" or "tdx" (need Firmware, LaunchDigest and the
	// hardware: Run checks the host first and fails with ErrTEEUnavailable naming what is
	// missing). Empty launches a VM without any evidence channel.
	TEE attest.TEE
	// LaunchDigest is the job manifest digest bound at launch: SEV-SNP HOST_DATA, TDX
	// MRCONFIGID = LaunchDigest || 16 zero bytes. Required for snp and tdx.
	LaunchDigest [32]byte
	// Firmware is the -bios image for snp (the AmdSev OVMF build, which measures the
	// kernel, initrd and command line) and tdx (TDVF). Unused otherwise.
	Firmware string
	SNP      SNPOptions
	TDX      TDXOptions
	// SimService serves the simulated secure processor over the guest's virtio-serial port
	// named attest.SimPortName. It must return when ctx is done or conn reaches EOF; Run closes
	// conn when the VM is gone. An error other than the end of the channel fails Run with
	// ErrSimService.
	SimService func(ctx context.Context, conn io.ReadWriter) error

	// Console receives the serial console live, as it arrives (nil = discarded).
	Console io.Writer
	// Timeout is the wall-clock limit for the whole VM run (required, > 0).
	Timeout time.Duration
	// RunDir holds the sim channel's socket. Empty: a private temporary directory, removed
	// afterwards.
	RunDir string
	// Log receives progress and diagnostics (nil = slog.Default()).
	Log *slog.Logger

	// host replaces the real /sys, /dev and CPUID in the launch pre-flight (tests).
	host *hostPaths
}

// Result describes a VM run that ended with the guest powering off.
type Result struct {
	Duration time.Duration // from QEMU's start to its exit
	Accel    string        // the accelerator used: "tcg" or "kvm"
}

var (
	// ErrTimeout: the VM ran into Config.Timeout and was killed.
	ErrTimeout = errors.New("vmm: VM wall-clock limit reached")
	// ErrQEMU: QEMU failed (exit status not 0, killed by someone else, or a KVM internal
	// error after which it would stop the guest and wait forever).
	ErrQEMU = errors.New("vmm: QEMU failed")
	// ErrSimService: the simulated secure processor channel failed (QEMU did not connect, or
	// SimService returned an error while the VM ran).
	ErrSimService = errors.New("vmm: simulated TEE channel failed")
)

const (
	// stderrTail is how much of QEMU's stderr is kept for error messages.
	stderrTail = 8 << 10
	// kvmInternalError is what QEMU prints before it stops a guest KVM cannot run.
	kvmInternalError = "KVM internal error"
	// simAcceptLimit bounds the wait for QEMU to connect to the sim socket; QEMU connects
	// while it starts, long before the guest runs.
	simAcceptLimit = 30 * time.Second
	// pipeDrainLimit bounds the wait for the console copy after QEMU is gone, in case
	// Config.Console blocks.
	pipeDrainLimit = 5 * time.Second
	// maxSocketPath is sun_path's size minus its NUL.
	maxSocketPath = 107
	simSocketName = "simtee.sock"
)

// Run starts QEMU and waits until the guest powers off (QEMU exits 0). It returns ErrTimeout
// after cfg.Timeout and ctx's error on cancel; in every case QEMU's whole process group is
// killed and reaped before Run returns, the sim service goroutine has ended, and nothing is
// left behind. A QEMU that exits non-zero gives ErrQEMU with the tail of its stderr.
//
// With -no-reboot a guest reboot also ends QEMU with status 0: success here only means the
// VM ended by the guest's own doing; callers judge the run by the output disk's contents.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg = withDefaults(cfg)
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("vmm: not started: %w", err)
	}
	if cfg.Timeout <= 0 {
		return nil, fmt.Errorf("vmm: Config.Timeout is %s, expected a positive wall-clock limit", cfg.Timeout)
	}
	if _, err := backendFor(cfg.TEE); err != nil {
		return nil, err
	}
	if cfg.TEE == attest.TEESim && cfg.SimService == nil {
		return nil, fmt.Errorf("vmm: the sim TEE needs Config.SimService")
	}
	if err := checkShape(cfg); err != nil {
		return nil, err
	}
	if err := checkFiles(cfg); err != nil {
		return nil, err
	}
	host := defaultHostPaths()
	if cfg.host != nil {
		host = *cfg.host
	}
	if err := host.preflight(&cfg); err != nil {
		return nil, err
	}
	qemu, err := exec.LookPath(cfg.QEMU)
	if err != nil {
		return nil, fmt.Errorf("vmm: QEMU binary %q not found (install qemu-system-x86 or set Config.QEMU): %w", cfg.QEMU, err)
	}

	accel := cfg.Accel
	switch {
	case accel == AccelTCG || accel == AccelKVM:
	case (accel == "" || accel == AccelAuto) && (cfg.TEE == attest.TEESNP || cfg.TEE == attest.TEETDX):
		// Hardware TEEs run only under KVM; preflight has checked the hardware modules.
		accel = AccelKVM
	case accel == "" || accel == AccelAuto:
		probe := kvmProbe{devKVM: "/dev/kvm", sysModule: "/sys/module"}
		if why := probe.usable(ctx, qemu, DefaultProbeTimeout); why != nil {
			log.Debug("vmm: KVM not usable, using TCG", "reason", why)
			accel = AccelTCG
		} else {
			accel = AccelKVM
		}
	default:
		return nil, fmt.Errorf("vmm: Config.Accel %q, expected %q, %q or %q", accel, AccelTCG, AccelKVM, AccelAuto)
	}

	runDir := cfg.RunDir
	if runDir == "" {
		runDir, err = os.MkdirTemp("", "cloche-vm-")
		if err != nil {
			return nil, fmt.Errorf("vmm: create run directory: %w", err)
		}
		defer os.RemoveAll(runDir)
	} else if err := os.MkdirAll(runDir, 0o700); err != nil {
		return nil, fmt.Errorf("vmm: create run directory %s: %w", runDir, err)
	}

	var sim *simChannel
	simSocket := ""
	if cfg.TEE == attest.TEESim {
		simSocket = filepath.Join(runDir, simSocketName)
		if abs, err := filepath.Abs(simSocket); err == nil {
			simSocket = abs
		}
		if len(simSocket) > maxSocketPath {
			return nil, fmt.Errorf("vmm: socket path %s is %d bytes, limit %d: use a shorter Config.RunDir", simSocket, len(simSocket), maxSocketPath)
		}
		sim, err = listenSim(simSocket)
		if err != nil {
			return nil, err
		}
		defer sim.close()
	}

	args, err := Args(cfg, accel, simSocket)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(qemu, args...)
	cmd.Stdin = nil
	if cfg.Console != nil {
		cmd.Stdout = &consoleWriter{w: cfg.Console, log: log}
	}
	stderr := newTailBuffer(stderrTail, kvmInternalError)
	cmd.Stderr = stderr
	// Own process group: killing it kills anything QEMU started. Pdeathsig: a crashed
	// caller does not leave a VM running. (Linux sends it when the forking thread exits; Go
	// only ends threads of goroutines that exit while locked to them, and then the cost is
	// a failed run, never a leaked VM.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = pipeDrainLimit

	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("vmm: not started: %w", err)
	}
	log.Debug("vmm: starting QEMU", "qemu", qemu, "args", args)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%w: start %s: %v", ErrQEMU, qemu, err)
	}
	pid := cmd.Process.Pid
	log.Info("vmm: VM started", "pid", pid, "accel", accel, "tee", cfg.TEE, "timeout", cfg.Timeout)

	exited := make(chan struct{})
	go func() {
		// Wait for the exit without reaping, so the process group id cannot be reused
		// before the group is killed below.
		var info unix.Siginfo
		for {
			err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
			if err != unix.EINTR {
				break
			}
		}
		close(exited)
	}()

	var simFailed <-chan error
	svcCtx, stopService := context.WithCancel(ctx)
	defer stopService()
	if sim != nil {
		simFailed = sim.serve(svcCtx, pid, simAcceptLimit, cfg.SimService, log)
	}

	timer := time.NewTimer(cfg.Timeout)
	defer timer.Stop()
	var stopErr error
	select {
	case <-exited:
	case <-timer.C:
		stopErr = fmt.Errorf("%w: killed after %s", ErrTimeout, cfg.Timeout)
	case <-ctx.Done():
		stopErr = fmt.Errorf("vmm: VM stopped: %w", ctx.Err())
	case <-stderr.tripped:
		stopErr = fmt.Errorf("%w: %s (QEMU would stop the guest and wait forever; use Accel tcg on this host): %s",
			ErrQEMU, kvmInternalError, stderr.String())
	case err := <-simFailed:
		stopErr = err
	}
	// Kill the whole group, whether QEMU exited by itself (stragglers) or not.
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
		log.Warn("vmm: kill QEMU process group", "pgid", pid, "err", err)
	}
	waitErr := cmd.Wait()
	duration := time.Since(start)
	stopService()
	var simErr error
	if sim != nil {
		simErr = sim.close()
	}
	log.Info("vmm: VM ended", "pid", pid, "duration", duration.Round(time.Millisecond), "err", stopErr)

	if stopErr != nil {
		return nil, stopErr
	}
	if waitErr != nil {
		var exit *exec.ExitError
		if errors.As(waitErr, &exit) {
			return nil, qemuExitError(exit, stderr.String())
		}
		if errors.Is(waitErr, exec.ErrWaitDelay) {
			// QEMU exited 0 but the console writer did not drain in time.
			return nil, fmt.Errorf("vmm: console output was still being written %s after QEMU exited: %w", pipeDrainLimit, waitErr)
		}
		return nil, fmt.Errorf("%w: %v: %s", ErrQEMU, waitErr, stderr.String())
	}
	if simErr != nil {
		return nil, simErr
	}
	return &Result{Duration: duration, Accel: accel}, nil
}

// checkFiles checks that the files Run hands to QEMU exist with the right kind, so the
// error names the file instead of being a line of QEMU's stderr.
func checkFiles(cfg Config) error {
	for _, f := range []struct {
		what, path string
		device     bool // a block device is fine too (disks)
	}{
		{"kernel", cfg.Kernel, false}, {"initrd", cfg.Initrd, false},
		{"input disk", cfg.InputDisk, true}, {"toolchain disk", cfg.ToolchainDisk, true},
		{"output disk", cfg.OutputDisk, true},
	} {
		if f.path == "" {
			continue
		}
		fi, err := os.Stat(f.path)
		if err != nil {
			return fmt.Errorf("vmm: %s: %w", f.what, err)
		}
		mode := fi.Mode()
		if !mode.IsRegular() && !(f.device && mode&fs.ModeDevice != 0 && mode&fs.ModeCharDevice == 0) {
			want := "a regular file"
			if f.device {
				want += " or a block device"
			}
			return fmt.Errorf("vmm: %s %s is a %s, expected %s", f.what, f.path, mode.Type(), want)
		}
	}
	return nil
}

// consoleWriter passes the console to Config.Console and keeps QEMU's stdout drained even
// when that writer fails: QEMU blocks on a full pipe, which would stall the guest until the
// wall-clock limit.
type consoleWriter struct {
	w      io.Writer
	log    *slog.Logger
	failed bool
}

func (c *consoleWriter) Write(p []byte) (int, error) {
	if c.failed {
		return len(p), nil
	}
	if _, err := c.w.Write(p); err != nil {
		c.failed = true
		c.log.Warn("vmm: console writer failed; discarding the rest of the console", "err", err)
	}
	return len(p), nil
}

// qemuExitError describes how QEMU ended: its exit status, or the signal that killed it
// by name ("SIGKILL"; syscall's own text would read "killed by signal killed").
func qemuExitError(exit *exec.ExitError, stderr string) error {
	if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return fmt.Errorf("%w: QEMU was killed by signal %d (%s): %s", ErrQEMU, int(ws.Signal()), unix.SignalName(ws.Signal()), stderr)
	}
	return fmt.Errorf("%w: exit status %d: %s", ErrQEMU, exit.ExitCode(), stderr)
}
