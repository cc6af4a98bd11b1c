// Package guest is the guest init: PID 1 of the confidential VM's initramfs. It reads the
// launch-bound manifest digest from its own hardware report, checks the input disk against
// it, mounts the toolchain through dm-verity, runs the build without network as an
// unprivileged user, collects the artifacts, binds the result record into a fresh report
// and writes everything to the output disk (docs/design.md, data flow step 3).
//
// Every failure ends the same way: a clear message on the console (prefixed
// "cloche-guest: "), error.txt on the output disk (with a result record whose Error is set
// once the manifest has been verified), and power off. A watchdog powers off at a hard
// deadline whatever happens.
package guest

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-configfs-tsm/configfs/linuxtsm"

	"github.com/cloche-dev/cloche/attest"
	attestclient "github.com/cloche-dev/cloche/internal/attest/client"
	"github.com/cloche-dev/cloche/internal/disk"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/source"
)

// Watchdog deadlines: before the manifest is known the guest has nothing slow to do; after,
// the build gets its own time limit plus a margin for setup and writing the output.
const (
	EarlyDeadline  = 300 * time.Second
	DeadlineMargin = 120 * time.Second
	// watchdogWriteLimit bounds the watchdog's attempt to record the failure.
	watchdogWriteLimit = 20 * time.Second
)

// maxArchiveSize bounds the source archive on the input disk (source.Unpack bounds what it
// expands to).
const maxArchiveSize = 8 << 30

// launchProbe is the REPORT_DATA of the first report, which is only read for its launch
// digest: SHA-512("cloche-launch-probe").
var launchProbe = sha512.Sum512([]byte("cloche-launch-probe"))

// Config holds every path the guest init touches, so its parts can run against test trees.
type Config struct {
	ProcRoot    string // /proc
	SysRoot     string // /sys
	DevRoot     string // /dev
	ModuleList  string // /lib/modules/load.list
	ConfigfsDir string // /sys/kernel/config
	// RunDir holds the toolchain mount, the build root and the log (a tmpfs).
	RunDir string
	// SelfExe is re-executed as the sandbox helper.
	SelfExe string
	Console io.Writer
}

// DefaultConfig is the configuration of the real guest.
func DefaultConfig() Config {
	return Config{
		ProcRoot:    "/proc",
		SysRoot:     "/sys",
		DevRoot:     "/dev",
		ModuleList:  "/lib/modules/load.list",
		ConfigfsDir: "/sys/kernel/config",
		RunDir:      "/run/cloche",
		SelfExe:     "/proc/self/exe",
		Console:     os.Stdout,
	}
}

// Main is the body of /init. It never returns: it powers the VM off.
func Main() {
	if IsSandboxInvocation() {
		SandboxMain()
	}
	a := newInitRun(DefaultConfig())
	ctx, cancel := context.WithCancelCause(context.Background())
	a.cancel = cancel
	func() {
		defer func() {
			if r := recover(); r != nil {
				a.fail(fmt.Errorf("internal error (panic): %v", r))
			}
		}()
		a.run(ctx)
	}()
	a.log.Info("powering off")
	powerOff()
}

// initRun is one run of the guest init (PID 1).
type initRun struct {
	cfg  Config
	log  *slog.Logger
	step atomic.Value // string: what the guest init is doing, for the watchdog's message
	// cancel stops the main flow (and kills a running build) when the watchdog fires.
	cancel context.CancelCauseFunc

	// outMu serialises writers of the output disk (the main flow and the watchdog); done
	// records that the output has been written, so nobody writes it twice.
	outMu    sync.Mutex
	done     bool
	out      *os.File
	outSize  int64
	provider attest.Provider
	// state is set once the manifest is verified; from then on failures produce a result
	// record. Guarded by outMu after the build started.
	state *buildState
}

// buildState is what a result record is made of, filled in as the run goes.
type buildState struct {
	manifest  *job.Manifest
	result    job.Result
	logPath   string
	artifacts []ArtifactFile
}

func newInitRun(cfg Config) *initRun {
	a := &initRun{cfg: cfg}
	a.log = slog.New(slog.NewTextHandler(&prefixWriter{w: cfg.Console, prefix: "cloche-guest: "}, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, at slog.Attr) slog.Attr {
			if len(groups) == 0 && at.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return at
		},
	}))
	a.step.Store("start")
	return a
}

// update changes the build state under outMu, so that the watchdog, which may record a
// failure from its own goroutine, never sees it half-changed.
func (a *initRun) update(f func(st *buildState)) {
	a.outMu.Lock()
	defer a.outMu.Unlock()
	if a.state != nil {
		f(a.state)
	}
}

func (a *initRun) setStep(s string) {
	a.step.Store(s)
	a.log.Info(s)
}

// stepError names the step that failed.
type stepError struct {
	step string
	err  error
}

func (e *stepError) Error() string { return e.step + ": " + e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

// run does the whole job and records its outcome on the output disk.
func (a *initRun) run(ctx context.Context) {
	res, err := a.runJob(ctx)
	if err != nil {
		a.fail(err)
		return
	}
	a.finish(ctx, res)
}

// runJob runs steps 1 to 7. With an error, whatever is in a.state describes the failure.
func (a *initRun) runJob(ctx context.Context) (*buildState, error) {
	wd, err := a.startGuest()
	if err != nil {
		return nil, err
	}
	disks, launch, err := a.openDevices(ctx)
	if err != nil {
		return nil, err
	}
	input, m, err := a.checkManifest(disks[SerialInput], launch)
	if err != nil {
		return nil, err
	}
	st := a.newBuildState(m, hex.EncodeToString(launch[:]))
	if err := a.doStep("digesting the ACPI tables the host gave", func() (err error) {
		st.result.ACPITablesSHA256, err = ACPITablesDigest(filepath.Join(a.cfg.SysRoot, "firmware", "acpi", "tables"))
		return err
	}); err != nil {
		return st, err
	}
	wd.Reset(time.Duration(m.TimeoutSeconds)*time.Second + DeadlineMargin)
	a.log.Info("manifest verified", "invocation", m.InvocationID, "command", strings.Join(m.Command, " "))

	root, before, err := a.prepareBuild(ctx, disks[SerialToolchain], input, st)
	if err != nil {
		return st, err
	}
	if err := a.prepareDeps(ctx, root, st); err != nil {
		return st, err
	}
	res, err := a.runBuild(ctx, root, st)
	if err != nil {
		return st, err
	}
	if res.ExitCode != 0 {
		// A failed build is a result, not a guest failure: no artifacts are collected.
		return st, nil
	}
	if err := a.collectArtifacts(root, m, before, res); err != nil {
		return st, err
	}
	return st, nil
}

// doStep announces a step (on the console and for the watchdog's message), runs it and
// names it in its error.
func (a *initRun) doStep(name string, f func() error) error {
	a.setStep(name)
	if err := f(); err != nil {
		return &stepError{step: name, err: err}
	}
	return nil
}

// startGuest mounts the early file systems, checks that SysRq is off, arms the early
// watchdog and loads the kernel modules.
func (a *initRun) startGuest() (*watchdog, error) {
	if err := a.doStep("mounting proc, sysfs, devtmpfs and tmpfs", mountEarly); err != nil {
		return nil, err
	}
	if err := a.doStep("checking that magic SysRq is off", func() error { return requireSysRqOff("/proc") }); err != nil {
		return nil, err
	}
	wd := newWatchdog(EarlyDeadline, a.watchdogFired)
	if err := a.doStep("loading kernel modules", func() error {
		hw, err := DetectTEE(a.cfg.ProcRoot, a.cfg.SysRoot)
		if err != nil {
			return err
		}
		return LoadModules(a.cfg.ModuleList, finitModule, hw, a.log)
	}); err != nil {
		return nil, err
	}
	return wd, nil
}

// openDevices opens the output disk first (so every later failure can be recorded on it),
// finds the input and toolchain disks, opens the TEE evidence device and reads the
// launch-bound manifest digest from the guest's own report.
func (a *initRun) openDevices(ctx context.Context) (disks map[string]BlockDevice, launch [32]byte, err error) {
	if err := a.doStep("finding the output disk", a.openOutputDisk); err != nil {
		return nil, launch, err
	}
	if err := a.doStep("finding the input and toolchain disks", func() (err error) {
		disks, err = FindDisks(a.cfg.SysRoot, a.cfg.DevRoot, SerialInput, SerialToolchain)
		return err
	}); err != nil {
		return nil, launch, err
	}
	if err := a.doStep("opening the TEE evidence device", func() (err error) {
		a.provider, err = a.openProvider()
		return err
	}); err != nil {
		return nil, launch, err
	}
	if err := a.doStep("reading the launch-bound manifest digest from the guest's own report", func() error {
		var err error
		launch, err = attest.GuestLaunchDigest(ctx, a.provider, launchProbe)
		return err
	}); err != nil {
		return nil, launch, err
	}
	a.log.Info("launch-bound manifest digest", "sha256", hex.EncodeToString(launch[:]), "tee", a.provider.TEE())
	return disks, launch, nil
}

// openOutputDisk finds and opens the output disk for the failure and result records.
func (a *initRun) openOutputDisk() error {
	d, err := FindDisks(a.cfg.SysRoot, a.cfg.DevRoot, SerialOutput)
	if err != nil {
		return err
	}
	f, size, err := OpenBlockDevice(d[SerialOutput], os.O_RDWR)
	if err != nil {
		return err
	}
	a.outMu.Lock()
	a.out, a.outSize = f, size
	a.outMu.Unlock()
	return nil
}

// checkManifest reads the input disk's manifest, checks it against the launch digest and
// checks that it asks for the TEE the guest's evidence comes from.
func (a *initRun) checkManifest(d BlockDevice, launch [32]byte) (input *disk.Input, m *job.Manifest, err error) {
	err = a.doStep("reading and checking the manifest on the input disk", func() error {
		var err error
		input, m, err = readManifest(d, launch)
		if err != nil {
			return err
		}
		if m.TEE != string(a.provider.TEE()) {
			return fmt.Errorf("the manifest asks for tee %q but the guest's evidence comes from %q", m.TEE, a.provider.TEE())
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return input, m, nil
}

// newBuildState starts the result record of a verified manifest and makes it a.state, so
// that from here on every failure produces a result record.
func (a *initRun) newBuildState(m *job.Manifest, launchHex string) *buildState {
	st := &buildState{
		manifest: m,
		result: job.Result{
			Type:            job.ResultType,
			ManifestSHA256:  launchHex,
			ExitCode:        -1,
			Artifacts:       []job.Artifact{},
			GuestClockStart: time.Now().UTC().Format(time.RFC3339Nano),
		},
		logPath: filepath.Join(a.cfg.RunDir, "log.txt"),
	}
	a.outMu.Lock()
	a.state = st
	a.outMu.Unlock()
	return st
}

// prepareBuild creates the run directory and the (empty) log, mounts the toolchain,
// prepares the build root and unpacks and attests the source into it. before is the
// source tree's snapshot when the manifest lists no artifact patterns.
func (a *initRun) prepareBuild(ctx context.Context, toolchain BlockDevice, input *disk.Input, st *buildState) (root *BuildRoot, before TreeSnapshot, err error) {
	m := st.manifest
	if err := os.MkdirAll(a.cfg.RunDir, 0o700); err != nil {
		return nil, nil, err
	}
	// The log file exists from here on, so a failure record always has a log to digest.
	if err := os.WriteFile(st.logPath, nil, 0o600); err != nil {
		return nil, nil, err
	}
	toolchainDir := filepath.Join(a.cfg.RunDir, "toolchain")
	if err := a.doStep("mounting the toolchain through dm-verity", func() error {
		return mountToolchain(a.cfg.SysRoot, a.cfg.DevRoot, verityName, toolchain, m.Toolchain, toolchainDir)
	}); err != nil {
		return nil, nil, err
	}
	if err := a.doStep("preparing the build root", func() (err error) {
		root, err = prepareBuildRoot(toolchainDir, filepath.Join(a.cfg.RunDir, "build"), BuildUID, BuildGID)
		return err
	}); err != nil {
		return nil, nil, err
	}
	var tree string
	if err := a.doStep("unpacking the source archive", func() (err error) {
		tree, before, err = unpackSource(ctx, input, m, root)
		return err
	}); err != nil {
		return nil, nil, err
	}
	a.update(func(st *buildState) { st.result.SourceTree = tree })
	a.log.Info("source unpacked", "tree", tree)
	if err := a.doStep("checking the commit object against the unpacked tree", func() error {
		return a.recordSourceCommit(m, tree)
	}); err != nil {
		return nil, nil, err
	}
	return root, before, nil
}

// recordSourceCommit puts the commit (and tag) computed from the manifest's git objects
// into the result record; nothing without a commit object.
func (a *initRun) recordSourceCommit(m *job.Manifest, tree string) error {
	att, err := attestSource(m, tree)
	if err != nil || att == nil {
		return err
	}
	a.update(func(st *buildState) {
		st.result.SourceCommit, st.result.SourceTag, st.result.SourceTagObject = att.Commit, att.Tag, att.TagObject
	})
	a.log.Info("source commit attested", "commit", att.Commit, "tag", att.Tag)
	return nil
}

// runBuild runs the command in the sandbox and records its duration, log and exit code. A
// command that ran to an exit is not an error, whatever its exit code.
func (a *initRun) runBuild(ctx context.Context, root *BuildRoot, st *buildState) (*CommandResult, error) {
	m := st.manifest
	a.setStep("running the command")
	res, err := RunCommand(ctx, CommandSpec{
		Root: root.Dir, Dir: path.Join("/src", m.Workdir), Argv: m.Command, Env: BuildEnv(m),
		UID: BuildUID, GID: BuildGID, Timeout: time.Duration(m.TimeoutSeconds) * time.Second,
		Console: a.cfg.Console, LogPath: st.logPath, LogCap: m.MaxOutputBytes, SelfExe: a.cfg.SelfExe,
		Rlimits: m.Rlimits,
	})
	if err != nil {
		return nil, &stepError{step: "running the command", err: err}
	}
	a.update(func(st *buildState) {
		st.result.DurationMillis = res.Duration.Milliseconds()
		st.result.Log = res.Log
	})
	// A corrupted toolchain block reads as EIO to the build; say so plainly.
	if err := verityStatus(a.cfg.DevRoot, verityName); err != nil {
		return nil, &stepError{step: "checking the toolchain's dm-verity status", err: err}
	}
	if res.Err != nil {
		return nil, &stepError{step: "running the command", err: res.Err}
	}
	a.update(func(st *buildState) { st.result.ExitCode = res.ExitCode })
	a.log.Info("command finished", "exit", res.ExitCode, "duration", res.Duration.Round(time.Millisecond), "log_bytes", res.LogTotal)
	if res.LogTruncated {
		a.log.Info("build log truncated", "kept", res.Log.Size, "total", res.LogTotal)
	}
	return res, nil
}

// collectArtifacts collects the artifacts of a successful build into the result record.
func (a *initRun) collectArtifacts(root *BuildRoot, m *job.Manifest, before TreeSnapshot, res *CommandResult) error {
	return a.doStep("collecting artifacts", func() error {
		arts, err := CollectArtifacts(root.Src, m.Artifacts, before, res.Log.Size, min(m.MaxOutputBytes, a.outSize))
		if err != nil {
			return err
		}
		a.update(func(st *buildState) {
			st.artifacts = arts
			for _, x := range arts {
				st.result.Artifacts = append(st.result.Artifacts, x.Artifact)
			}
		})
		return nil
	})
}

// readManifest reads the input disk and checks its manifest against the launch digest
// before parsing it.
func readManifest(d BlockDevice, launch [32]byte) (*disk.Input, *job.Manifest, error) {
	f, size, err := OpenBlockDevice(d, os.O_RDONLY)
	if err != nil {
		return nil, nil, err
	}
	// f stays open: input.Archive reads from it later (the VM ends with the process).
	in, err := disk.ReadInput(f, size, job.MaxManifestSize, maxArchiveSize)
	if err != nil {
		return nil, nil, err
	}
	got := job.ManifestDigest(in.Manifest)
	if got != launch {
		return nil, nil, fmt.Errorf("input disk manifest digest %x does not match the launch-bound digest %x", got, launch)
	}
	m, err := job.ParseManifest(in.Manifest)
	if err != nil {
		return nil, nil, err
	}
	return in, m, nil
}

// unpackSource unpacks and identifies the source, and snapshots it when the manifest
// collects "every file the build created or changed".
func unpackSource(ctx context.Context, in *disk.Input, m *job.Manifest, root *BuildRoot) (tree string, before TreeSnapshot, err error) {
	if in.ArchiveSize != m.Source.ArchiveSize {
		return "", nil, fmt.Errorf("the input disk holds a %d-byte archive, the manifest expects %d bytes", in.ArchiveSize, m.Source.ArchiveSize)
	}
	// The tree id comes out of the unpacking itself: reading the tree back would double
	// the guest's I/O for a large source.
	tree, err = source.UnpackTreeID(ctx, in.Archive, m.Source.ArchiveSHA256, m.Source.ArchiveSize, root.Src, source.DefaultLimits(), BuildUID, BuildGID, true, m.Source.ObjectFormat)
	if err != nil {
		return "", nil, err
	}
	if len(m.Artifacts) == 0 {
		if before, err = SnapshotTree(root.Src); err != nil {
			return "", nil, err
		}
	}
	return tree, before, nil
}

// attestSource computes the commit (and tag) ids from the manifest's git objects once
// their tree is the one unpacked; nil without a commit object. The host's checkout may say
// anything: only ids computed here reach the result record.
func attestSource(m *job.Manifest, tree string) (*source.Attested, error) {
	if m.Source.CommitObject == nil {
		return nil, nil
	}
	att, err := source.AttestCommit(m.Source.GitObjects(), tree)
	if err != nil {
		return nil, err
	}
	if err := source.CheckTagRef(m.Source.Ref, att.Tag); err != nil {
		return nil, err
	}
	return att, nil
}

// openProvider prefers configfs-tsm (real SNP/TDX), then the guest drivers' devices
// (/dev/sev-guest, /dev/tdx_guest), and falls back to the simulated TEE's virtio-serial port.
// Whichever it picks, the rest of the run is the same code path.
func (a *initRun) openProvider() (attest.Provider, error) {
	var tsmErr error
	if err := mountConfigfs(a.cfg.ConfigfsDir); err != nil {
		tsmErr = err
	} else if _, err := os.Stat(filepath.Join(a.cfg.ConfigfsDir, "tsm", "report")); err != nil {
		tsmErr = fmt.Errorf("no configfs-tsm: %w", err)
	} else {
		client, err := linuxtsm.MakeClient()
		if err == nil {
			var p attest.Provider
			if p, err = attestclient.NewTSMProvider(client); err == nil {
				// TDX: the launch digest from the TDREPORT, not from a quote the host relayed.
				return attestclient.WithTDReportLaunchDigest(p, a.cfg.DevRoot), nil
			}
		}
		tsmErr = err
	}
	// Kernels without configfs-tsm reports still have the guest drivers' character devices.
	// The device stays open for the whole run: the guest init powers off when done.
	p, _, devErr := attestclient.OpenGuestDeviceProvider(a.cfg.DevRoot)
	if devErr == nil {
		a.log.Info("configfs-tsm unavailable, using the guest device", "tee", p.TEE(), "tsm", tsmErr)
		return p, nil
	}
	port, err := findSimPort(a.cfg.SysRoot, a.cfg.DevRoot, attest.SimPortName)
	if err != nil {
		return nil, fmt.Errorf("no TEE evidence device: configfs-tsm: %v; guest device: %v; simulated TEE: %w", tsmErr, devErr, err)
	}
	f, err := os.OpenFile(port, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the simulated TEE port %s: %w", port, err)
	}
	a.log.Info("using the SIMULATED TEE: its evidence proves nothing about the host", "port", port, "tsm", tsmErr)
	return attestclient.NewSimProvider(f), nil
}

// finish writes a completed run (or a failed build) to the output disk.
func (a *initRun) finish(ctx context.Context, st *buildState) {
	a.outMu.Lock()
	defer a.outMu.Unlock()
	if a.done {
		return
	}
	err := a.writeResult(ctx, st, nil)
	if err != nil {
		// Nothing is trusted from a half-written disk: rewrite it as a failure. After a
		// device write error (the host's disk is full) the rewrite is small and lands on
		// blocks already written, so it usually succeeds; else error.txt alone may.
		cause := fmt.Errorf("writing the output disk: %w", err)
		if err = a.writeFailureResult(ctx, st, cause); err != nil {
			if eerr := a.writeErrorOnly(cause); eerr != nil {
				err = errors.Join(err, eerr)
			} else {
				err = nil
			}
		}
	}
	if err != nil {
		a.log.Error("could not write the output disk", "err", err)
		return
	}
	a.done = true
	a.log.Info("output written", "exit", st.result.ExitCode, "artifacts", len(st.result.Artifacts))
}

// fail records err: as a result record with Error set once the manifest is verified, as
// error.txt alone before that.
func (a *initRun) fail(err error) {
	a.log.Error("FAILED", "step", a.step.Load(), "err", err)
	a.outMu.Lock()
	defer a.outMu.Unlock()
	if a.done {
		return
	}
	if a.out == nil {
		a.log.Error("no output disk to record the failure on; the console is the only record")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), watchdogWriteLimit)
	defer cancel()
	var werr error
	if a.state != nil && a.provider != nil {
		werr = a.writeFailureResult(ctx, a.state, err)
	} else {
		werr = a.writeErrorOnly(err)
	}
	if werr != nil {
		a.log.Error("could not write the failure to the output disk", "err", werr)
		return
	}
	a.done = true
}

func (a *initRun) writeFailureResult(ctx context.Context, st *buildState, cause error) error {
	st.result.Error = cause.Error()
	st.result.ExitCode = -1
	st.result.Artifacts = []job.Artifact{}
	st.artifacts = nil
	if d, err := digestFile(st.logPath, st.manifest.MaxOutputBytes); err == nil {
		st.result.Log = d
	} else {
		st.result.Log = emptyDigest()
		st.logPath = ""
	}
	return a.writeResult(ctx, st, cause)
}

// writeResult binds the result record into fresh evidence and writes result.json,
// evidence.json, log.txt, the artifacts and, if cause is set, error.txt. If no evidence can
// be had, it writes error.txt alone and reports that as the error.
func (a *initRun) writeResult(ctx context.Context, st *buildState, cause error) error {
	errText := ""
	if cause != nil {
		errText = "cloche-guest: " + cause.Error() + "\n"
	}
	rec, err := job.Marshal(&st.result)
	if err != nil {
		return fmt.Errorf("encoding the result record: %w", err)
	}
	ev, err := a.provider.GetEvidence(ctx, job.ReportData(rec))
	if err == nil && ev.TEE == attest.TEETDX && ev.EventLog == nil {
		// What TDVF measured into RTMR0 (the TD HOB, the UEFI variables, the host's ACPI
		// tables): a verifier replays it to the quote's RTMR0 and refuses a quote without it.
		ev.EventLog, err = CCEventLog(filepath.Join(a.cfg.SysRoot, "firmware", "acpi", "tables"))
	}
	if err != nil {
		everr := fmt.Errorf("getting evidence for the result record: %w", err)
		if cause != nil {
			everr = fmt.Errorf("%w; then %w", cause, everr)
		}
		return errors.Join(everr, a.writeErrorOnly(everr))
	}
	evBytes, err := ev.Marshal()
	if err != nil {
		return fmt.Errorf("encoding the evidence: %w", err)
	}
	w := disk.NewOutputWriter(a.out, a.outSize)
	add := func(name string, b []byte) error {
		return w.AddFile(name, strings.NewReader(string(b)), int64(len(b)))
	}
	if err := add(disk.ResultName, rec); err != nil {
		return err
	}
	if err := add(disk.EvidenceName, evBytes); err != nil {
		return err
	}
	if err := addLog(w, st.logPath, st.result.Log); err != nil {
		return err
	}
	for _, x := range st.artifacts {
		if err := addArtifact(w, x); err != nil {
			return err
		}
	}
	if errText != "" {
		if err := add(disk.ErrorName, []byte(errText)); err != nil {
			return err
		}
	}
	return a.closeOutput(w)
}

// writeErrorOnly writes error.txt alone (no verified manifest, or no evidence).
func (a *initRun) writeErrorOnly(cause error) error {
	text := fmt.Sprintf("cloche-guest: %s\n", cause)
	if len(text) > disk.MaxDocumentSize {
		text = text[:disk.MaxDocumentSize-1] + "\n"
	}
	w := disk.NewOutputWriter(a.out, a.outSize)
	if err := w.AddFile(disk.ErrorName, strings.NewReader(text), int64(len(text))); err != nil {
		return err
	}
	return a.closeOutput(w)
}

func (a *initRun) closeOutput(w *disk.OutputWriter) error {
	if err := w.Close(); err != nil {
		return err
	}
	if err := a.out.Sync(); err != nil {
		return fmt.Errorf("syncing the output disk: %w", err)
	}
	return nil
}

// addLog copies the first want.Size bytes of the log file, checking they are the bytes the
// result record names. The log only ever grows (a build killed by the watchdog may still
// be flushing into it), so its prefix is stable.
func addLog(w *disk.OutputWriter, logPath string, want job.Digest) error {
	if logPath == "" {
		return w.AddFile(disk.LogName, strings.NewReader(""), 0)
	}
	f, size, err := openRegular(logPath)
	if err != nil {
		return fmt.Errorf("opening the build log: %w", err)
	}
	defer f.Close()
	if size < want.Size {
		return fmt.Errorf("the build log is %d bytes, the result record says %d", size, want.Size)
	}
	hr := &hashingReader{r: io.LimitReader(f, want.Size), h: sha256.New()}
	if err := w.AddFile(disk.LogName, hr, want.Size); err != nil {
		return err
	}
	if got := hex.EncodeToString(hr.h.Sum(nil)); got != want.SHA256 {
		return fmt.Errorf("the build log's digest changed from %s to %s", want.SHA256, got)
	}
	return nil
}

func addArtifact(w *disk.OutputWriter, x ArtifactFile) error {
	f, size, err := openRegular(x.HostPath)
	if err != nil {
		return fmt.Errorf("opening artifact %q: %w", x.Path, err)
	}
	defer f.Close()
	if size != x.Size {
		return checkErrorf(ErrArtifactChanged, "artifact %q was %d bytes, now %d", x.Path, x.Size, size)
	}
	hr := &hashingReader{r: f, h: sha256.New(), stat: f.Stat}
	if err := w.AddFile(disk.ArtifactsDir+x.Path, hr, size); err != nil {
		return err
	}
	if got := hex.EncodeToString(hr.h.Sum(nil)); got != x.SHA256 {
		return checkErrorf(ErrArtifactChanged, "artifact %q changed after it was hashed (%s, now %s)", x.Path, x.SHA256, got)
	}
	return nil
}

// hashingReader hashes what it reads; stat (if set) lets the output writer see the file
// mode through it.
type hashingReader struct {
	r    io.Reader
	h    hash.Hash
	stat func() (fs.FileInfo, error)
}

func (h *hashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	return n, err
}

func (h *hashingReader) Stat() (fs.FileInfo, error) {
	if h.stat == nil {
		return nil, errors.New("no file information")
	}
	return h.stat()
}

func digestFile(p string, limit int64) (job.Digest, error) {
	f, size, err := openRegular(p)
	if err != nil {
		return job.Digest{}, err
	}
	defer f.Close()
	if size > limit {
		return job.Digest{}, fmt.Errorf("%s is %d bytes, over the %d-byte cap", p, size, limit)
	}
	h := sha256.New()
	if _, err := io.CopyN(h, f, size); err != nil {
		return job.Digest{}, err
	}
	return job.Digest{SHA256: hex.EncodeToString(h.Sum(nil)), Size: size}, nil
}

func emptyDigest() job.Digest {
	sum := sha256.Sum256(nil)
	return job.Digest{SHA256: hex.EncodeToString(sum[:]), Size: 0}
}

// watchdogFired runs on the watchdog's goroutine at the hard deadline: it tries, for a
// bounded time, to record the failure, then powers off whatever the main flow is doing.
func (a *initRun) watchdogFired(limit time.Duration) {
	err := fmt.Errorf("watchdog: hard deadline of %s passed while %s", limit, a.step.Load())
	if a.cancel != nil {
		a.cancel(err)
	}
	done := make(chan struct{})
	go func() {
		a.fail(err)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(watchdogWriteLimit + 5*time.Second):
		a.log.Error("watchdog: recording the failure did not finish in time")
	}
	a.log.Info("powering off")
	powerOff()
}

// prefixWriter prefixes every line written to w (status lines on the console).
type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	lines := strings.SplitAfter(string(b), "\n")
	var out strings.Builder
	for _, l := range lines {
		if l == "" {
			continue
		}
		out.WriteString(p.prefix)
		out.WriteString(l)
	}
	if _, err := io.WriteString(p.w, out.String()); err != nil {
		return 0, err
	}
	return len(b), nil
}
