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
	// DepsDisk is the dependency disk (serial cloche-deps), attached read-only; empty for a
	// job without one.
	DepsDisk string

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
	qemu, err := checkRun(ctx, &cfg)
	if err != nil {
		return nil, err
	}
	accel, err := chooseAccel(ctx, cfg, qemu, log)
	if err != nil {
		return nil, err
	}
	runDir, removeRunDir, err := makeRunDir(cfg.RunDir)
	if err != nil {
		return nil, err
	}
	defer removeRunDir()
	var sim *simChannel
	simSocket := ""
	if cfg.TEE == attest.TEESim {
		if sim, simSocket, err = openSimChannel(runDir); err != nil {
			return nil, err
		}
		defer sim.close()
	}
	args, err := Args(cfg, accel, simSocket)
	if err != nil {
		return nil, err
	}
	vm := newQEMUCommand(qemu, args, cfg.Console, log)
	vm.sim = sim

	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("vmm: not started: %w", err)
	}
	log.Debug("vmm: starting QEMU", "qemu", qemu, "args", args)
	start := time.Now()
	if err := vm.cmd.Start(); err != nil {
		return nil, fmt.Errorf("%w: start %s: %w", ErrQEMU, qemu, err)
	}
	vm.pid = vm.cmd.Process.Pid
	log.Info("vmm: VM started", "pid", vm.pid, "accel", accel, "tee", cfg.TEE, "timeout", cfg.Timeout)
	end := vm.supervise(ctx, cfg, start)
	if err := end.err(vm.stderr); err != nil {
		return nil, err
	}
	return &Result{Duration: end.duration, Accel: accel}, nil
}

// checkRun checks cfg (and the host, for a hardware TEE, which may fill in cfg's SNP
// defaults) before anything is started, and finds the QEMU binary.
func checkRun(ctx context.Context, cfg *Config) (qemu string, err error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("vmm: not started: %w", err)
	}
	if cfg.Timeout <= 0 {
		return "", fmt.Errorf("vmm: Config.Timeout is %s, expected a positive wall-clock limit", cfg.Timeout)
	}
	if _, err := backendFor(cfg.TEE); err != nil {
		return "", err
	}
	if cfg.TEE == attest.TEESim && cfg.SimService == nil {
		return "", fmt.Errorf("vmm: the sim TEE needs Config.SimService")
	}
	if err := checkShape(*cfg); err != nil {
		return "", err
	}
	if err := checkFiles(*cfg); err != nil {
		return "", err
	}
	host := defaultHostPaths()
	if cfg.host != nil {
		host = *cfg.host
	}
	if err := host.preflight(cfg); err != nil {
		return "", err
	}
	qemu, err = exec.LookPath(cfg.QEMU)
	if err != nil {
		return "", fmt.Errorf("vmm: QEMU binary %q not found (install qemu-system-x86 or set Config.QEMU): %w", cfg.QEMU, err)
	}
	return qemu, nil
}

// chooseAccel resolves Config.Accel: hardware TEEs always run under KVM, "auto" (or
// empty) probes whether KVM works here and falls back to TCG.
func chooseAccel(ctx context.Context, cfg Config, qemu string, log *slog.Logger) (string, error) {
	accel := cfg.Accel
	switch {
	case accel == AccelTCG || accel == AccelKVM:
		return accel, nil
	case (accel == "" || accel == AccelAuto) && (cfg.TEE == attest.TEESNP || cfg.TEE == attest.TEETDX):
		// Hardware TEEs run only under KVM; preflight has checked the hardware modules.
		return AccelKVM, nil
	case accel == "" || accel == AccelAuto:
		probe := kvmProbe{devKVM: "/dev/kvm", sysModule: "/sys/module"}
		if why := probe.usable(ctx, qemu, DefaultProbeTimeout); why != nil {
			log.Debug("vmm: KVM not usable, using TCG", "reason", why)
			return AccelTCG, nil
		}
		return AccelKVM, nil
	default:
		return "", fmt.Errorf("vmm: Config.Accel %q, expected %q, %q or %q", accel, AccelTCG, AccelKVM, AccelAuto)
	}
}

// makeRunDir creates dir, or a private temporary directory when dir is empty; remove
// deletes the temporary one (a caller's directory is left alone).
func makeRunDir(dir string) (runDir string, remove func(), err error) {
	if dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", nil, fmt.Errorf("vmm: create run directory %s: %w", dir, err)
		}
		return dir, func() {}, nil
	}
	runDir, err = os.MkdirTemp("", "cloche-vm-")
	if err != nil {
		return "", nil, fmt.Errorf("vmm: create run directory: %w", err)
	}
	return runDir, func() { os.RemoveAll(runDir) }, nil
}

// openSimChannel listens on the sim channel's socket in runDir, whose absolute path must
// fit in sun_path.
func openSimChannel(runDir string) (*simChannel, string, error) {
	simSocket := filepath.Join(runDir, simSocketName)
	if abs, err := filepath.Abs(simSocket); err == nil {
		simSocket = abs
	}
	if len(simSocket) > maxSocketPath {
		return nil, "", fmt.Errorf("vmm: socket path %s is %d bytes, limit %d: use a shorter Config.RunDir", simSocket, len(simSocket), maxSocketPath)
	}
	sim, err := listenSim(simSocket)
	if err != nil {
		return nil, "", err
	}
	return sim, simSocket, nil
}

// qemuVM is a QEMU process and what the run watches it by.
type qemuVM struct {
	cmd    *exec.Cmd
	pid    int // set once started
	stderr *tailBuffer
	sim    *simChannel // nil without the sim TEE
	log    *slog.Logger
}

// newQEMUCommand prepares QEMU with the console streamed to console, the tail of its
// stderr kept, in its own process group.
func newQEMUCommand(qemu string, args []string, console io.Writer, log *slog.Logger) *qemuVM {
	cmd := exec.Command(qemu, args...)
	cmd.Stdin = nil
	if console != nil {
		cmd.Stdout = &consoleWriter{w: console, log: log}
	}
	stderr := newTailBuffer(stderrTail, kvmInternalError)
	cmd.Stderr = stderr
	// Own process group: killing it kills anything QEMU started. Pdeathsig: a crashed
	// caller does not leave a VM running. (Linux sends it when the forking thread exits; Go
	// only ends threads of goroutines that exit while locked to them, and then the cost is
	// a failed run, never a leaked VM.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = pipeDrainLimit
	return &qemuVM{cmd: cmd, stderr: stderr, log: log}
}

// vmEnd is how a started VM ended.
type vmEnd struct {
	duration time.Duration
	// stopErr says why the run stopped the VM (nil: QEMU exited by itself).
	stopErr error
	waitErr error // from reaping QEMU
	simErr  error // from closing the sim channel
}

// supervise serves the sim channel while the VM runs, stops it at the first of its exit,
// the time limit, ctx's end, a KVM internal error or a sim channel failure, kills QEMU's
// whole process group and reaps it.
func (vm *qemuVM) supervise(ctx context.Context, cfg Config, start time.Time) vmEnd {
	exited := waitExitedNoReap(vm.pid)
	var simFailed <-chan error
	svcCtx, stopService := context.WithCancel(ctx)
	defer stopService()
	if vm.sim != nil {
		simFailed = vm.sim.serve(svcCtx, vm.pid, simAcceptLimit, cfg.SimService, vm.log)
	}
	var end vmEnd
	end.stopErr = vm.waitForStop(ctx, cfg.Timeout, exited, simFailed)
	// Kill the whole group, whether QEMU exited by itself (stragglers) or not.
	if err := syscall.Kill(-vm.pid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
		vm.log.Warn("vmm: kill QEMU process group", "pgid", vm.pid, "err", err)
	}
	end.waitErr = vm.cmd.Wait()
	end.duration = time.Since(start)
	stopService()
	if vm.sim != nil {
		end.simErr = vm.sim.close()
	}
	vm.log.Info("vmm: VM ended", "pid", vm.pid, "duration", end.duration.Round(time.Millisecond), "err", end.stopErr)
	return end
}

// waitExitedNoReap closes the returned channel when pid exits, without reaping it, so the
// process group id cannot be reused before the group is killed.
func waitExitedNoReap(pid int) <-chan struct{} {
	exited := make(chan struct{})
	go func() {
		var info unix.Siginfo
		for {
			err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
			if err != unix.EINTR {
				break
			}
		}
		close(exited)
	}()
	return exited
}

// waitForStop waits for the VM's end or a reason to stop it, and returns that reason (nil
// when QEMU exited by itself).
func (vm *qemuVM) waitForStop(ctx context.Context, timeout time.Duration, exited <-chan struct{}, simFailed <-chan error) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-exited:
		return nil
	case <-timer.C:
		return fmt.Errorf("%w: killed after %s", ErrTimeout, timeout)
	case <-ctx.Done():
		return fmt.Errorf("vmm: VM stopped: %w", ctx.Err())
	case <-vm.stderr.tripped:
		return fmt.Errorf("%w: %s (QEMU would stop the guest and wait forever; use Accel tcg on this host): %s",
			ErrQEMU, kvmInternalError, vm.stderr.String())
	case err := <-simFailed:
		return err
	}
}

// err judges the end: why the run stopped the VM, else how QEMU exited, else the sim
// channel's failure.
func (end vmEnd) err(stderr *tailBuffer) error {
	if end.stopErr != nil {
		return end.stopErr
	}
	if end.waitErr != nil {
		var exit *exec.ExitError
		if errors.As(end.waitErr, &exit) {
			return qemuExitError(exit, stderr.String())
		}
		if errors.Is(end.waitErr, exec.ErrWaitDelay) {
			// QEMU exited 0 but the console writer did not drain in time.
			return fmt.Errorf("vmm: console output was still being written %s after QEMU exited: %w", pipeDrainLimit, end.waitErr)
		}
		return fmt.Errorf("%w: %w: %s", ErrQEMU, end.waitErr, stderr.String())
	}
	return end.simErr
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
		{"output disk", cfg.OutputDisk, true}, {"dependency disk", cfg.DepsDisk, true},
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
