package guest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cloche-dev/cloche/job"
)

// The build runs in a sandbox made of new mount, PID, network, UTS and IPC namespaces.
// Its first process (PID 1 of the new PID namespace) is this very binary, re-executed with
// SandboxArg: it mounts proc, a minimal /dev and /tmp inside the build root from within the
// new namespaces (so /proc shows the build's own PIDs), chroots, sets no_new_privs, starts
// the command as the build user and reaps every orphan until the command exits. When it
// exits, the kernel kills whatever the build left running in the namespace; on timeout the
// guest SIGKILLs it, which does the same.

// SandboxArg is argv[1] of the sandbox helper process. Main dispatches on it.
const SandboxArg = "__cloche-sandbox"

// The helper gets its configuration (JSON) on fd 4 and answers on fd 3; a pipe, unlike an
// environment variable, has no 128 KiB per-string limit.
const (
	sandboxStatusFD = 3
	sandboxConfigFD = 4
	maxConfigSize   = 8 << 20
)

// BuildUID and BuildGID are the unprivileged build user.
const (
	BuildUID = 1000
	BuildGID = 1000
)

// ErrCommandTimeout is returned when the command outlived its time limit.
var ErrCommandTimeout = errors.New("command exceeded its time limit")

// CommandSpec says what to run and where.
type CommandSpec struct {
	// Root is the host path of the build root the command is chrooted into.
	Root string
	// Dir is the working directory inside Root (absolute).
	Dir  string
	Argv []string
	Env  []string
	UID  int
	GID  int
	// Timeout bounds the command's run time.
	Timeout time.Duration
	// Console receives the output live (up to LogCap bytes).
	Console io.Writer
	// LogPath is where the output is kept, capped at LogCap bytes.
	LogPath string
	LogCap  int64
	// SelfExe is the binary to re-execute as the sandbox helper.
	SelfExe string
	// Rlimits are the manifest's limits (zero fields: job.DefaultRlimits).
	Rlimits job.Rlimits
}

// CommandResult is what happened.
type CommandResult struct {
	// ExitCode is the command's exit status, -1 if it did not exit on its own.
	ExitCode int
	// Err says why the command did not run to an exit (timeout, signal, setup failure).
	Err      error
	Duration time.Duration
	// Log names the bytes kept in LogPath; LogTotal counts everything the command wrote.
	Log          job.Digest
	LogTotal     int64
	LogTruncated bool
}

// sandboxConfig is passed to the helper.
type sandboxConfig struct {
	Root string   `json:"root"`
	Dir  string   `json:"dir"`
	Path string   `json:"path"`
	Argv []string `json:"argv"`
	Env  []string `json:"env"`
	UID  int      `json:"uid"`
	GID  int      `json:"gid"`
	// Rlimits as set on the helper before it execs the command.
	Rlimits job.Rlimits `json:"rlimits"`
}

// sandboxStatus is the helper's answer on its status pipe.
type sandboxStatus struct {
	Exited   bool   `json:"exited"`
	ExitCode int    `json:"exitCode"`
	Signal   int    `json:"signal,omitempty"`
	Error    string `json:"error,omitempty"`
}

const maxStatusSize = 64 << 10

// BuildEnv returns the build's environment: the fixed minimal one (with a dependency disk,
// the go settings that read modules only from its checked tree), then the manifest's
// entries (which may override LANG or TZ, but not PATH or HOME in a way that changes
// where argv[0] was resolved: PATH lookup already happened).
func BuildEnv(m *job.Manifest) []string {
	env := []string{
		"PATH=" + BuildPath,
		"HOME=/tmp",
		"LANG=C.UTF-8",
		"TZ=UTC",
		fmt.Sprintf("SOURCE_DATE_EPOCH=%d", m.SourceDateEpoch),
	}
	env = append(env, depsEnv(m)...)
	fixed := map[string]int{}
	for i, e := range env {
		k, _, _ := cutEnv(e)
		fixed[k] = i
	}
	keys := make([]string, 0, len(m.Env))
	for k := range m.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if i, ok := fixed[k]; ok {
			env[i] = k + "=" + m.Env[k]
			continue
		}
		env = append(env, k+"="+m.Env[k])
	}
	return env
}

func cutEnv(e string) (string, string, bool) {
	for i := 0; i < len(e); i++ {
		if e[i] == '=' {
			return e[:i], e[i+1:], true
		}
	}
	return e, "", false
}

// RunCommand runs spec.Argv in the sandbox. A returned error means the sandbox itself could
// not be set up by the guest (before the command could start); everything that happens to
// the command (not found, timeout, signal, exit code) is in the result.
func RunCommand(ctx context.Context, spec CommandSpec) (*CommandResult, error) {
	if len(spec.Argv) == 0 {
		return nil, errors.New("run command: empty argv")
	}
	res := &CommandResult{ExitCode: -1}
	logf, err := os.OpenFile(spec.LogPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating the build log: %w", err)
	}
	defer logf.Close()
	lw := &logWriter{file: logf, console: spec.Console, cap: spec.LogCap, h: sha256.New()}

	prog, err := lookCommand(spec.Root, spec.Argv[0], spec.Dir)
	if err != nil {
		res.Err = err
		fmt.Fprintf(lw, "cloche: %v\n", err)
		return finishCommandResult(res, lw)
	}
	cfg, err := json.Marshal(sandboxConfig{
		Root: spec.Root, Dir: spec.Dir, Path: prog, Argv: spec.Argv, Env: spec.Env,
		UID: spec.UID, GID: spec.GID, Rlimits: spec.Rlimits,
	})
	if err != nil {
		return nil, err
	}
	if err := runSandboxHelper(ctx, spec, cfg, lw, res); err != nil {
		return nil, err
	}
	if res.Err != nil {
		fmt.Fprintf(lw, "\ncloche: %v\n", res.Err)
	}
	return finishCommandResult(res, lw)
}

// finishCommandResult names the log's kept bytes in res. A failed write of the log file
// fails the run: the log is part of the record.
func finishCommandResult(res *CommandResult, lw *logWriter) (*CommandResult, error) {
	if lw.err != nil {
		return nil, fmt.Errorf("writing the build log: %w", lw.err)
	}
	res.Log = job.Digest{SHA256: hex.EncodeToString(lw.h.Sum(nil)), Size: lw.kept}
	res.LogTotal = lw.total
	res.LogTruncated = lw.total > lw.kept
	return res, nil
}

// runSandboxHelper starts the sandbox helper with its configuration cfg, copies its output
// into lw, waits for it (killing it at the time limit or when ctx ends) and records in res
// how long it ran and what became of the command.
func runSandboxHelper(ctx context.Context, spec CommandSpec, cfg []byte, lw *logWriter, res *CommandResult) error {
	p, err := openSandboxPipes()
	if err != nil {
		return err
	}
	defer p.closeParentEnds()
	cmd := sandboxCommand(spec.SelfExe, p)
	start := time.Now()
	err = cmd.Start()
	p.closeChildEnds()
	if err != nil {
		return fmt.Errorf("starting the build sandbox: %w", err)
	}
	go func() {
		// The helper reads this before anything else; if it dies first, the write fails
		// with EPIPE and the missing status says so.
		_, _ = p.cfgW.Write(cfg)
		p.cfgW.Close()
	}()
	waitCopies := p.startCopies(lw)
	killedFor := waitOrKill(ctx, cmd, spec.Timeout)
	res.Duration = time.Since(start)
	statusBytes := waitCopies()
	if killedFor != nil {
		res.Err = killedFor
		return nil
	}
	res.ExitCode, res.Err = decodeSandboxStatus(statusBytes, cmd.ProcessState)
	return nil
}

// sandboxPipes are the helper's output, status and configuration pipes. The guest keeps
// outR, statR and cfgW; the helper gets the other ends.
type sandboxPipes struct {
	outR, outW   *os.File
	statR, statW *os.File
	cfgR, cfgW   *os.File
}

func openSandboxPipes() (*sandboxPipes, error) {
	var p sandboxPipes
	var err error
	if p.outR, p.outW, err = os.Pipe(); err != nil {
		return nil, err
	}
	if p.statR, p.statW, err = os.Pipe(); err != nil {
		p.outR.Close()
		p.outW.Close()
		return nil, err
	}
	if p.cfgR, p.cfgW, err = os.Pipe(); err != nil {
		p.outR.Close()
		p.outW.Close()
		p.statR.Close()
		p.statW.Close()
		return nil, err
	}
	return &p, nil
}

// closeChildEnds closes the helper's ends once it has them (or failed to start), so that
// the guest's reads end at EOF when the helper's namespace is gone.
func (p *sandboxPipes) closeChildEnds() {
	p.outW.Close()
	p.statW.Close()
	p.cfgR.Close()
}

func (p *sandboxPipes) closeParentEnds() {
	p.outR.Close()
	p.statR.Close()
	p.cfgW.Close()
}

// sandboxCommand is the helper process: PID 1 of new mount, PID, network, UTS and IPC
// namespaces, with an empty environment, killed if the guest init dies.
func sandboxCommand(selfExe string, p *sandboxPipes) *exec.Cmd {
	cmd := exec.Command(selfExe, SandboxArg)
	cmd.Env = []string{}
	cmd.Stdout = p.outW
	cmd.Stderr = p.outW
	cmd.ExtraFiles = []*os.File{p.statW, p.cfgR}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC,
		Pdeathsig:  syscall.SIGKILL,
	}
	return cmd
}

// startCopies copies the helper's output into lw and reads its status. The returned wait
// ends the copies and gives the status bytes.
func (p *sandboxPipes) startCopies(lw *logWriter) (wait func() []byte) {
	var copyDone sync.WaitGroup
	copyDone.Add(2)
	go func() {
		defer copyDone.Done()
		_, _ = io.Copy(lw, p.outR)
	}()
	var statusBytes []byte
	go func() {
		defer copyDone.Done()
		statusBytes, _ = io.ReadAll(io.LimitReader(p.statR, maxStatusSize))
	}()
	return func() []byte {
		// Every writer of the pipes lived in the namespace, which is gone now; the copies
		// end at EOF promptly. Bound the wait anyway: the guest must never hang.
		copied := make(chan struct{})
		go func() { copyDone.Wait(); close(copied) }()
		select {
		case <-copied:
		case <-time.After(10 * time.Second):
			p.outR.Close()
			p.statR.Close()
			<-copied
		}
		return statusBytes
	}
}

// waitOrKill waits for the helper to exit. At the time limit, or when ctx ends, it kills
// the helper and says why.
func waitOrKill(ctx context.Context, cmd *exec.Cmd, timeout time.Duration) (killedFor error) {
	waitDone := make(chan error, 1)
	go func() { waitDone <- cmd.Wait() }()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-waitDone:
	case <-timer.C:
		killedFor = fmt.Errorf("%w of %s and was killed", ErrCommandTimeout, timeout)
	case <-ctx.Done():
		killedFor = fmt.Errorf("command stopped: %w", context.Cause(ctx))
	}
	if killedFor != nil {
		// SIGKILL to the namespace's init makes the kernel kill every process in it.
		_ = cmd.Process.Kill()
		<-waitDone
	}
	return killedFor
}

// decodeSandboxStatus reads the helper's answer: the command's exit code, or (with exit
// code -1) why it did not exit on its own.
func decodeSandboxStatus(statusBytes []byte, ps *os.ProcessState) (int, error) {
	var st sandboxStatus
	if err := json.Unmarshal(statusBytes, &st); err != nil {
		return -1, fmt.Errorf("the build sandbox ended without a status (%w): %s", err, ps)
	}
	switch {
	case st.Error != "":
		return -1, errors.New(st.Error)
	case st.Exited:
		return st.ExitCode, nil
	case st.Signal != 0:
		return -1, fmt.Errorf("command killed by signal %d (%s)", st.Signal, unix.SignalName(syscall.Signal(st.Signal)))
	default:
		return -1, errors.New("the build sandbox sent an empty status")
	}
}

// logWriter keeps the first cap bytes in the log file (hashing them) and shows the same
// bytes on the console; the rest is counted and dropped, with one note on the console.
type logWriter struct {
	mu      sync.Mutex
	file    io.Writer
	console io.Writer
	cap     int64
	h       hash.Hash
	kept    int64
	total   int64
	noted   bool
	err     error
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(p)
	w.total += int64(n)
	keep := p
	if room := w.cap - w.kept; int64(len(keep)) > room {
		if room < 0 {
			room = 0
		}
		keep = keep[:room]
	}
	if len(keep) > 0 && w.err == nil {
		if _, err := w.file.Write(keep); err != nil {
			w.err = err
		} else {
			w.h.Write(keep)
			w.kept += int64(len(keep))
		}
	}
	if w.console != nil {
		if len(keep) > 0 {
			_, _ = w.console.Write(keep) // the console is best effort; the log file is the record
		}
		if len(keep) < len(p) && !w.noted {
			w.noted = true
			fmt.Fprintf(w.console, "\ncloche-guest: build log reached the %d-byte cap; further output is dropped\n", w.cap)
		}
	}
	return n, nil
}

// IsSandboxInvocation reports whether this process was started as the sandbox helper.
func IsSandboxInvocation() bool {
	return len(os.Args) == 2 && os.Args[1] == SandboxArg
}

// SandboxMain is the sandbox helper (PID 1 of the build's PID namespace). It never returns.
func SandboxMain() {
	// Inherited descriptors are not close-on-exec: without this the build would inherit
	// the status pipe and could write its own verdict.
	unix.CloseOnExec(sandboxStatusFD)
	unix.CloseOnExec(sandboxConfigFD)
	st := runSandbox()
	b, _ := json.Marshal(st)
	status := os.NewFile(sandboxStatusFD, "status")
	_, _ = status.Write(b)
	_ = status.Close()
	os.Exit(0)
}

func runSandbox() sandboxStatus {
	fail := func(format string, a ...any) sandboxStatus {
		return sandboxStatus{Error: "build sandbox: " + fmt.Sprintf(format, a...)}
	}
	cfgFile := os.NewFile(sandboxConfigFD, "config")
	raw, err := io.ReadAll(io.LimitReader(cfgFile, maxConfigSize+1))
	cfgFile.Close()
	if err != nil || len(raw) > maxConfigSize {
		return fail("reading the configuration: %v (%d bytes, limit %d)", err, len(raw), maxConfigSize)
	}
	var cfg sandboxConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return fail("decoding the configuration: %v", err)
	}
	if os.Getpid() != 1 {
		return fail("expected to be PID 1 of a new PID namespace, am PID %d", os.Getpid())
	}
	if err := prepareSandboxMounts(cfg.Root); err != nil {
		return fail("%v", err)
	}
	if err := unix.Chroot(cfg.Root); err != nil {
		return fail("chroot %s: %v", cfg.Root, err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fail("chdir / after chroot: %v", err)
	}
	// No setuid binary in the toolchain may hand the build its privileges back.
	// no_new_privs is a per-thread attribute, inherited by a child from the thread that
	// forks it: pin this goroutine to its thread so that cmd.Start forks from the thread
	// that set it (Go may otherwise fork from any thread of the process).
	runtime.LockOSThread()
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fail("setting no_new_privs: %v", err)
	}
	if err := installSeccomp(); err != nil {
		return fail("%v", err)
	}
	if err := setSandboxRlimits(sandboxRlimits(cfg.Rlimits)); err != nil {
		return fail("%v", err)
	}
	unix.Umask(0o022)
	if fi, err := os.Stat(cfg.Dir); err != nil || !fi.IsDir() {
		return fail("working directory %s does not exist inside the build root", cfg.Dir)
	}
	cmd := exec.Command(cfg.Path)
	cmd.Args = cfg.Argv
	cmd.Env = cfg.Env
	cmd.Dir = cfg.Dir
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uint32(cfg.UID), Gid: uint32(cfg.GID), Groups: []uint32{}},
		Setsid:     true,
	}
	if err := cmd.Start(); err != nil {
		return fail("starting %s: %v", cfg.Path, err)
	}
	child := cmd.Process.Pid
	// Reap every process until the command itself exits; orphans are re-parented to us.
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fail("waiting for the command: %v", err)
		}
		if pid != child {
			continue
		}
		switch {
		case ws.Exited():
			return sandboxStatus{Exited: true, ExitCode: ws.ExitStatus()}
		case ws.Signaled():
			return sandboxStatus{Signal: int(ws.Signal())}
		}
	}
}

// prepareSandboxMounts runs inside the new mount namespace: it detaches it from the
// guest's (so nothing propagates back) and mounts proc, a minimal /dev and /tmp in root.
func prepareSandboxMounts(root string) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making the mount namespace private: %w", err)
	}
	mnt := func(src, target, fstype string, flags uintptr, data string, mode os.FileMode) error {
		p := filepath.Join(root, target)
		if err := os.MkdirAll(p, mode); err != nil {
			return fmt.Errorf("creating %s in the build root: %w", target, err)
		}
		if err := unix.Mount(src, p, fstype, flags, data); err != nil {
			return fmt.Errorf("mounting %s on %s in the build root: %w", fstype, target, err)
		}
		return nil
	}
	const nsd = unix.MS_NOSUID | unix.MS_NODEV
	if err := mnt("proc", "/proc", "proc", nsd|unix.MS_NOEXEC, "", 0o555); err != nil {
		return err
	}
	if err := mnt("tmpfs", "/tmp", "tmpfs", nsd, "mode=1777", 0o1777); err != nil {
		return err
	}
	if err := mnt("tmpfs", "/dev", "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=64k,nr_inodes=64", 0o755); err != nil {
		return err
	}
	dev := filepath.Join(root, "dev")
	for _, n := range []struct {
		name         string
		major, minor uint32
	}{{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}} {
		p := filepath.Join(dev, n.name)
		if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(n.major, n.minor))); err != nil {
			return fmt.Errorf("creating /dev/%s in the build root: %w", n.name, err)
		}
		// mknod applies the umask; the build user needs rw.
		if err := os.Chmod(p, 0o666); err != nil {
			return err
		}
	}
	for name, target := range map[string]string{
		"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2",
	} {
		if err := os.Symlink(target, filepath.Join(dev, name)); err != nil {
			return fmt.Errorf("creating /dev/%s in the build root: %w", name, err)
		}
	}
	if err := mnt("tmpfs", "/dev/shm", "tmpfs", nsd, "mode=1777", 0o1777); err != nil {
		return err
	}
	return nil
}
