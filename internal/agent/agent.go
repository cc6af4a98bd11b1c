package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cloche-dev/cloche/internal/atomicfile"
	"github.com/cloche-dev/cloche/internal/build"
)

// Options configure an Agent.
type Options struct {
	// Config has its defaults applied (Config.WithDefaults) and is validated by New.
	Config   Config
	Launcher Launcher
	Logger   *slog.Logger
	// Version is the cloche version the agent reports.
	Version string
	// PublicKeyPath is reported with every result, for `cloche verify --key`.
	PublicKeyPath string
}

// Layout of a job's directory under <state>/jobs/<id>/.
const (
	recordName = "job.json"
	// stateLogName holds a launched job's later states, unsynced, one JSON record a line
	// (writeStatus).
	stateLogName = "states.jsonl"
	consoleName  = "console.log"
	resultName   = "result.tar"
	srcDirName   = "src"
	outDirName   = "out"
	workDirName  = "w"
	// maxRecordSize bounds a job record read back at start-up.
	maxRecordSize = 1 << 20
)

// Agent is the daemon. Create it with New, then Serve.
type Agent struct {
	cfg           Config
	launcher      Launcher
	log           *slog.Logger
	version       string
	publicKeyPath string
	uid           int
	jobsDir       string
	metrics       *metrics

	listener, metricsListener net.Listener
	kick                      chan struct{}
	running                   sync.WaitGroup

	mu        sync.Mutex
	runCtx    context.Context // parent of every job's context; set by Serve
	jobs      map[string]*jobEntry
	queue     fairQueue
	receiving map[int]int   // by uid: submissions whose source is still arriving (they count toward the queue limits)
	arriving  map[int]int64 // by uid: the declared sizes of those sources, not yet on disk
	inUse     Usage
	stopping  bool
}

// jobEntry is one job in memory. Everything in it is guarded by Agent.mu, except dir and
// need, which never change, and rec.
type jobEntry struct {
	dir  string
	need Usage
	// rec is held while a launched job's status changes (transition): its record is then
	// written without holding Agent.mu, so other jobs' requests and changes go on. It is
	// taken before Agent.mu, never while holding it (persistLoop only tries it).
	rec     sync.Mutex
	status  JobStatus
	cancel  context.CancelCauseFunc // set while the job holds the budget
	changed chan struct{}           // closed and replaced on every state or log change
	logSize int64
}

// stopCause ends a job's context: the state it ends in and why.
type stopCause struct {
	state  State
	reason string
}

func (c stopCause) Error() string { return c.reason }

// New checks the configuration, prepares the state directory and recovers from a previous
// run: jobs that were in flight are marked failed ("agent restarted"), their leftover
// files are removed, and any QEMU still running for them is killed.
func New(o Options) (*Agent, error) {
	if o.Launcher == nil {
		return nil, errors.New("agent: no launcher")
	}
	if err := o.Config.Validate(); err != nil {
		return nil, err
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	a := &Agent{
		cfg:           o.Config,
		launcher:      o.Launcher,
		log:           log,
		version:       o.Version,
		publicKeyPath: o.PublicKeyPath,
		uid:           os.Geteuid(),
		jobsDir:       filepath.Join(o.Config.StateDir, "jobs"),
		metrics:       newMetrics(),
		kick:          make(chan struct{}, 1),
		jobs:          map[string]*jobEntry{},
		queue:         newFairQueue(),
		receiving:     map[int]int{},
		arriving:      map[int]int64{},
	}
	if err := os.MkdirAll(a.jobsDir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: state directory: %w", err)
	}
	if err := a.recover(); err != nil {
		return nil, err
	}
	return a, nil
}

// recover loads every job record and fails the ones a previous run left unfinished.
func (a *Agent) recover() error {
	killed, err := KillLeftoverVMs(a.jobsDir)
	if err != nil {
		return fmt.Errorf("agent: leftover VMs: %w", err)
	}
	for _, pid := range killed {
		a.log.Warn("killed a VM left by a previous agent run", "pid", pid)
	}
	entries, err := os.ReadDir(a.jobsDir)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	now := time.Now().UTC()
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(a.jobsDir, e.Name())
		st, err := readRecord(filepath.Join(dir, recordName))
		if errors.Is(err, os.ErrNotExist) {
			// A submission whose source never finished arriving: it was never a job.
			a.log.Info("removing an incomplete submission", "dir", dir)
			os.RemoveAll(dir)
			continue
		}
		if err != nil || st.ID != e.Name() {
			a.log.Error("skipping an unreadable job record", "dir", dir, "err", err)
			continue
		}
		for _, sub := range []string{srcDirName, outDirName, workDirName} {
			if err := os.RemoveAll(filepath.Join(dir, sub)); err != nil {
				a.log.Warn("removing a leftover job directory", "dir", filepath.Join(dir, sub), "err", err)
			}
		}
		if st.State.Terminal() {
			os.Remove(filepath.Join(dir, stateLogName)) // left by a crash just after the end was recorded
		} else if later := latestState(dir, st.ID); later != nil {
			st = later
		}
		j := &jobEntry{dir: dir, status: *st, changed: make(chan struct{})}
		if fi, err := os.Stat(filepath.Join(dir, consoleName)); err == nil {
			j.logSize = fi.Size()
		}
		if !st.State.Terminal() {
			a.log.Warn("job was in flight when the agent stopped; marking it failed", "job", st.ID, "state", st.State)
			j.status.State = StateFailed
			j.status.Reason = fmt.Sprintf("%s while the job was %s; its VM is gone", ReasonRestarted, st.State)
			j.status.FinishedAt = &now
			j.status.QueuePosition = 0
			// On a full disk this fails: the job is failed in memory and the record is
			// retried (persistLoop), so the agent still starts instead of exiting into a
			// restart loop.
			a.persistLocked(j)
		}
		a.jobs[st.ID] = j
	}
	a.mu.Lock()
	pruned := a.pruneLocked()
	a.mu.Unlock()
	a.removeJobDirs(pruned)
	return nil
}

// Listen creates the API socket (and the metrics listener when configured). Serve calls
// it when it was not called before.
func (a *Agent) Listen() error {
	if a.listener != nil {
		return nil
	}
	mode, err := a.cfg.socketMode()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(a.cfg.Socket), 0o755); err != nil {
		return fmt.Errorf("agent: socket directory: %w", err)
	}
	if err := removeStaleSocket(a.cfg.Socket); err != nil {
		return err
	}
	l, err := net.Listen("unix", a.cfg.Socket)
	if err != nil {
		return fmt.Errorf("agent: listen on %s: %w", a.cfg.Socket, err)
	}
	if err := os.Chmod(a.cfg.Socket, mode); err != nil {
		l.Close()
		return fmt.Errorf("agent: socket mode: %w", err)
	}
	if a.cfg.SocketGID != nil {
		if err := os.Chown(a.cfg.Socket, -1, *a.cfg.SocketGID); err != nil {
			l.Close()
			return fmt.Errorf("agent: socket group: %w", err)
		}
	}
	if a.cfg.MetricsListen != "" {
		ml, err := net.Listen("tcp", a.cfg.MetricsListen)
		if err != nil {
			l.Close()
			return fmt.Errorf("agent: metrics listener %s: %w", a.cfg.MetricsListen, err)
		}
		a.metricsListener = ml
	}
	a.listener = l
	return nil
}

// removeStaleSocket removes a socket file nobody listens on any more (a crashed agent's),
// and refuses to start next to a live agent.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("agent: socket %s: %w", path, err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("agent: %s exists and is not a socket", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("agent: another agent is listening on %s", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("agent: removing the stale socket %s: %w", path, err)
	}
	return nil
}

// MetricsAddr is the metrics listener's address ("" when off); valid after Listen.
func (a *Agent) MetricsAddr() string {
	if a.metricsListener == nil {
		return ""
	}
	return a.metricsListener.Addr().String()
}

// Serve runs the agent until ctx ends. Then it stops accepting requests, ends running
// jobs (failed, "agent stopped": their VMs are killed) and returns.
func (a *Agent) Serve(ctx context.Context) error {
	if err := a.Listen(); err != nil {
		return err
	}
	runCtx, stopJobs := context.WithCancelCause(context.WithoutCancel(ctx))
	defer stopJobs(nil)
	a.mu.Lock()
	a.runCtx = runCtx
	a.mu.Unlock()

	srv := &http.Server{
		Handler:           a.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Duration(a.cfg.IdleTimeout),
		MaxHeaderBytes:    MaxHeaderBytes,
		ConnContext:       withPeerCred,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(newUIDListener(a.listener, a.cfg.UserConnections, a.log)) }()
	var msrv *http.Server
	if a.metricsListener != nil {
		mux := http.NewServeMux()
		mux.HandleFunc("GET /metrics", a.handleMetrics)
		msrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: MaxHeaderBytes}
		go func() { errc <- msrv.Serve(a.metricsListener) }()
	}
	dispatchDone := make(chan struct{})
	go func() { defer close(dispatchDone); a.dispatchLoop(runCtx) }()
	persistDone := make(chan struct{})
	go func() { defer close(persistDone); a.persistLoop(runCtx) }()
	a.log.Info("agent serving", "socket", a.cfg.Socket, "metrics", a.MetricsAddr(), "budget", a.cfg.Budget, "queue_limit", a.cfg.QueueLimit, "tee", a.cfg.TEE)
	a.kickDispatch() // nothing is queued after a restart, but keep the invariant simple

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	a.log.Info("agent stopping")
	a.mu.Lock()
	a.stopping = true
	for _, j := range a.jobs {
		if j.status.State == StateQueued {
			a.queue.remove(j)
			a.finishLocked(j, StateFailed, ReasonStopped+" before the job was launched", nil)
		} else if j.cancel != nil {
			j.cancel(stopCause{StateFailed, ReasonStopped})
		}
	}
	a.mu.Unlock()
	a.running.Wait()
	stopJobs(errors.New(ReasonStopped))
	<-dispatchDone
	<-persistDone
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(shutdownCtx)
	srv.Close()
	if msrv != nil {
		msrv.Close()
	}
	os.Remove(a.cfg.Socket)
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("agent: %w", serveErr)
	}
	return nil
}

func (a *Agent) kickDispatch() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

func (a *Agent) dispatchLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.kick:
		}
		a.dispatch()
	}
}

// dispatch launches queued jobs while the budget allows, in fair order: submitters take
// turns, each submitter's jobs go first in, first out. A job that does not fit waits (it
// is never overtaken, so a big job cannot starve), except for disk space that cannot be
// freed by waiting: then it fails with the numbers.
func (a *Agent) dispatch() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for !a.stopping {
		j := a.queue.peek()
		if j == nil {
			return
		}
		free, err := freeDisk(a.cfg.StateDir)
		if err != nil {
			a.log.Error("free disk space", "err", err)
			return
		}
		if !a.fitsLocked(j.need) {
			return
		}
		if diskNeed := a.cfg.Budget.MinFreeDiskBytes + a.inUse.DiskBytes + j.need.DiskBytes; free < diskNeed {
			if a.inUse.VMs > 0 {
				return // running jobs will free their disks
			}
			a.queue.pop()
			a.finishLocked(j, StateFailed, fmt.Sprintf("not enough free disk space in %s: %d bytes free, the job needs about %d bytes and the agent keeps %d free",
				a.cfg.StateDir, free, j.need.DiskBytes, a.cfg.Budget.MinFreeDiskBytes), nil)
			continue
		}
		a.queue.pop()
		a.inUse = a.inUse.plus(j.need)
		now := time.Now().UTC()
		j.status.LaunchedAt = &now
		a.metrics.observe(func(m *metrics) *histogram { return m.queueWait }, now.Sub(j.status.SubmittedAt))
		ctx, cancel := context.WithCancelCause(a.runCtx)
		j.cancel = cancel
		// Shown as launching at once; runJob writes the record before it calls the
		// launcher, so a record that still says queued means no VM was started.
		j.status.State = StateLaunching
		j.status.QueuePosition = 0
		a.notifyLocked(j)
		a.running.Add(1)
		go a.runJob(ctx, j)
	}
}

func (a *Agent) fitsLocked(need Usage) bool {
	b, u := a.cfg.Budget, a.inUse
	return u.VMs+need.VMs <= b.VMs && u.VCPUs+need.VCPUs <= b.VCPUs && u.MemoryMiB+need.MemoryMiB <= b.MemoryMiB
}

func (u Usage) plus(v Usage) Usage {
	return Usage{VCPUs: u.VCPUs + v.VCPUs, MemoryMiB: u.MemoryMiB + v.MemoryMiB, VMs: u.VMs + v.VMs, DiskBytes: u.DiskBytes + v.DiskBytes}
}

func (u Usage) minus(v Usage) Usage {
	return Usage{VCPUs: u.VCPUs - v.VCPUs, MemoryMiB: u.MemoryMiB - v.MemoryMiB, VMs: u.VMs - v.VMs, DiskBytes: u.DiskBytes - v.DiskBytes}
}

func freeDisk(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// runJob runs one launched job to its end.
func (a *Agent) runJob(ctx context.Context, j *jobEntry) {
	defer a.running.Done()
	a.mu.Lock()
	st := j.status
	a.mu.Unlock()
	limit := time.Duration(st.WallClockSeconds) * time.Second
	ctx, stopTimer := context.WithTimeoutCause(ctx, limit, stopCause{StateFailed, fmt.Sprintf("%s: the job ran into its limit of %s and its VM was killed", ReasonWallClock, limit)})
	defer stopTimer()
	log := a.log.With("job", st.ID)
	a.transition(j, func(*JobStatus) bool { return true }, nil) // the launching record

	outcome, err := a.launch(ctx, j, st, log)
	var result *JobResult
	if err == nil {
		result, err = a.packResult(ctx, j, st, outcome)
	}

	state, reason := StateSucceeded, ""
	var exitCode *int
	if err != nil {
		state, reason = StateFailed, err.Error()
		var sc stopCause
		if errors.As(context.Cause(ctx), &sc) {
			state, reason = sc.state, sc.reason
		} else if full := a.diskFull(); full != "" {
			reason = full + ": " + reason
		}
		var be *build.BuildError
		if errors.As(err, &be) {
			code := be.ExitCode
			exitCode = &code
		}
		if errors.Is(err, build.ErrEvidence) {
			a.metrics.add(func(m *metrics) { m.evidenceErrors++ })
		}
	}
	for _, sub := range []string{srcDirName, outDirName, workDirName} {
		if rerr := os.RemoveAll(filepath.Join(j.dir, sub)); rerr != nil {
			log.Warn("removing a job directory", "dir", sub, "err", rerr)
		}
	}
	log.Info("job ended", "state", state, "reason", reason)

	var pruned []string
	a.transition(j, func(st *JobStatus) bool {
		now := time.Now().UTC()
		st.ExitCode, st.FinishedAt, st.Reason, st.Result = exitCode, &now, reason, result
		st.State, st.QueuePosition = state, 0
		return true
	}, func() {
		if running := j.status.RunningAt; running != nil {
			a.metrics.observe(func(m *metrics) *histogram { return m.buildDuration }, time.Since(*running))
		}
		a.inUse = a.inUse.minus(j.need)
		j.cancel = nil
		a.metrics.add(func(m *metrics) { m.finished[state]++ })
		pruned = a.pruneLocked()
	})
	a.removeJobDirs(pruned)
	a.kickDispatch()
}

// diskFullBytes: with less free space than this in the state directory, a failed job is
// put down to the full disk (the VM's writes to its output disk there failed).
const diskFullBytes = 1 << 20

// diskFull names a full state disk as the likely reason a job failed, or says "".
func (a *Agent) diskFull() string {
	free, err := freeDisk(a.cfg.StateDir)
	if err != nil || free >= diskFullBytes {
		return ""
	}
	return fmt.Sprintf("output disk full: the file system of the agent's state directory %s has %d bytes free, so the VM could not write its output", a.cfg.StateDir, free)
}

// launch prepares the job's directories and calls the launcher.
func (a *Agent) launch(ctx context.Context, j *jobEntry, st JobStatus, log *slog.Logger) (*build.Outcome, error) {
	out := filepath.Join(j.dir, outDirName)
	work := filepath.Join(j.dir, workDirName)
	for _, d := range []string{out, work} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, fmt.Errorf("preparing the job: %w", err)
		}
	}
	f, err := os.OpenFile(filepath.Join(j.dir, consoleName), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("preparing the job's log: %w", err)
	}
	console := &jobConsole{a: a, j: j, f: f, limit: a.cfg.MaxLogBytes}
	defer f.Close()
	return a.launcher.Launch(ctx, LaunchRequest{
		JobID:     st.ID,
		Spec:      st.Spec,
		SourceDir: filepath.Join(j.dir, srcDirName),
		OutDir:    out,
		WorkDir:   work,
		Console:   console,
		Logger:    log,
		Stage:     func(s build.Stage) { a.stage(j, s) },
	})
}

// stage moves a launched job on as the launcher reports progress.
func (a *Agent) stage(j *jobEntry, s build.Stage) {
	a.transition(j, func(st *JobStatus) bool {
		switch {
		case s == build.StageVM && st.State == StateLaunching:
			now := time.Now().UTC()
			st.RunningAt = &now
			if st.LaunchedAt != nil {
				a.metrics.observe(func(m *metrics) *histogram { return m.launchDuration }, now.Sub(*st.LaunchedAt))
			}
			st.State = StateRunning
			return true
		case s == build.StageCollect && st.State == StateRunning:
			st.State = StateCollecting
			return true
		}
		return false
	}, nil)
}

// packResult turns the output directory into the result archive clients fetch: the same
// deterministic tar format as sources, so the client unpacks it with the same checks.
func (a *Agent) packResult(ctx context.Context, j *jobEntry, st JobStatus, o *build.Outcome) (*JobResult, error) {
	a.stage(j, build.StageCollect) // a launcher that never reported it
	clientSigns := st.Spec.Signing == SigningClient
	if clientSigns != (o.StatementPath != "") || clientSigns == (o.BundlePath != "") {
		return nil, fmt.Errorf("the build's provenance (bundle %q, statement %q) is not what the job's signing %q asks for", o.BundlePath, o.StatementPath, st.Spec.Signing)
	}
	sum, size, err := packDir(ctx, filepath.Join(j.dir, outDirName), st.Spec.SourceDateEpoch, filepath.Join(j.dir, resultName))
	if err != nil {
		return nil, fmt.Errorf("packing the results: %w", err)
	}
	r := &JobResult{
		Artifacts:       o.Artifacts,
		Bundle:          baseName(o.BundlePath),
		Statement:       baseName(o.StatementPath),
		Measurement:     o.Measurement,
		SourceTree:      o.SourceTree,
		ToolchainDigest: o.ToolchainDigest,
		SourceCommit:    o.Commit,
		SourceTag:       o.Tag,
		SimRootPath:     o.SimRootPath,
		PublicKeyPath:   a.publicKeyPath,
		DurationMillis:  o.Duration.Milliseconds(),
	}
	if clientSigns {
		r.PublicKeyPath = "" // the agent's key signed nothing
	}
	r.Archive.SHA256, r.Archive.Size = sum, size
	return r, nil
}

// baseName is path's file name, "" for "".
func baseName(path string) string {
	if path == "" {
		return ""
	}
	return filepath.Base(path)
}

// setStateLocked records a state change: persisted first, then shown to followers.
func (a *Agent) setStateLocked(j *jobEntry, s State) {
	j.status.State = s
	if s != StateQueued {
		j.status.QueuePosition = 0
	}
	a.persistLocked(j)
	a.notifyLocked(j)
}

// transition changes a launched job's status: change edits a copy of it under a.mu
// (false: nothing to change), the copy is written as the job's record without holding
// a.mu, and then it becomes the job's status and is shown to followers, with done (when
// not nil) run under a.mu in the same step. So a state is persisted first, then shown,
// and the record writes (and a terminal state's fsyncs) of different jobs do not wait for
// each other. j.rec keeps one job's changes in order; nothing else changes a launched
// job's status meanwhile (dispatch set launching before runJob started, and cancelling
// a launched job goes through its context).
func (a *Agent) transition(j *jobEntry, change func(*JobStatus) bool, done func()) {
	j.rec.Lock()
	defer j.rec.Unlock()
	a.mu.Lock()
	next := j.status
	ok := change(&next)
	a.mu.Unlock()
	if !ok {
		return
	}
	next.Unsaved = a.saveRecord(j, next)
	a.mu.Lock()
	defer a.mu.Unlock()
	j.status = next
	if done != nil {
		done()
	}
	a.notifyLocked(j)
}

// persistLocked writes the job's record. When that fails (a full disk) the job goes on,
// its status says the state is not saved (a restart would show an older one), and
// persistLoop retries.
func (a *Agent) persistLocked(j *jobEntry) bool {
	j.status.Unsaved = a.saveRecord(j, j.status)
	return j.status.Unsaved == ""
}

// saveRecord persists st as j's status (writeStatus); it returns "" or, when that failed,
// the note for st.Unsaved.
func (a *Agent) saveRecord(j *jobEntry, st JobStatus) string {
	st.Unsaved = ""
	if err := writeStatus(j.dir, &st); err != nil {
		a.log.Error("persisting a job's state", "job", st.ID, "state", st.State, "err", err)
		return fmt.Sprintf("the agent could not save this state (%v); it retries every %s, and until then a restart would show the job's earlier state", err, persistRetry)
	}
	return ""
}

// persistRetry is how often records that could not be written are tried again.
const persistRetry = 2 * time.Second

// persistLoop retries the records that could not be written until ctx ends.
func (a *Agent) persistLoop(ctx context.Context) {
	t := time.NewTicker(persistRetry)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.mu.Lock()
		for _, j := range a.jobs {
			// A job whose status is changing (transition) is written by that change.
			if j.status.Unsaved == "" || !j.rec.TryLock() {
				continue
			}
			if a.persistLocked(j) {
				a.log.Info("saved a job's state after an earlier failure", "job", j.status.ID, "state", j.status.State)
				a.notifyLocked(j)
			}
			j.rec.Unlock()
		}
		a.mu.Unlock()
	}
}

func (a *Agent) finishLocked(j *jobEntry, s State, reason string, result *JobResult) {
	if j.status.LaunchedAt == nil {
		// Never launched (cancelled while queued, refused at dispatch): its unpacked
		// source goes now, not when the job is pruned.
		if err := os.RemoveAll(filepath.Join(j.dir, srcDirName)); err != nil {
			a.log.Warn("removing a job's source", "job", j.status.ID, "err", err)
		}
	}
	now := time.Now().UTC()
	j.status.FinishedAt = &now
	j.status.Reason = reason
	j.status.Result = result
	a.metrics.add(func(m *metrics) { m.finished[s]++ })
	a.setStateLocked(j, s)
}

func (a *Agent) notifyLocked(j *jobEntry) {
	close(j.changed)
	j.changed = make(chan struct{})
}

// pruneLocked forgets the oldest finished jobs beyond KeepFinished and returns their
// directories, for removeJobDirs once a.mu is released.
func (a *Agent) pruneLocked() []string {
	var done []*jobEntry
	for _, j := range a.jobs {
		if j.status.State.Terminal() {
			done = append(done, j)
		}
	}
	if len(done) <= a.cfg.KeepFinished {
		return nil
	}
	sort.Slice(done, func(i, k int) bool { return finishedAt(done[i]).Before(finishedAt(done[k])) })
	var dirs []string
	for _, j := range done[:len(done)-a.cfg.KeepFinished] {
		delete(a.jobs, j.status.ID)
		dirs = append(dirs, j.dir)
	}
	return dirs
}

// removeJobDirs removes pruned jobs' directories.
func (a *Agent) removeJobDirs(dirs []string) {
	for _, d := range dirs {
		if err := os.RemoveAll(d); err != nil {
			a.log.Warn("pruning a finished job", "dir", d, "err", err)
		}
	}
}

func finishedAt(j *jobEntry) time.Time {
	if j.status.FinishedAt != nil {
		return *j.status.FinishedAt
	}
	return j.status.SubmittedAt
}

// cancelJob ends a job: a queued one at once, a launched one through its context (the
// launcher kills the VM; runJob records the end).
func (a *Agent) cancelJob(j *jobEntry, cause stopCause) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case j.status.State.Terminal():
	case j.status.State == StateQueued:
		a.queue.remove(j)
		a.finishLocked(j, cause.state, cause.reason, nil)
	case j.cancel != nil:
		j.cancel(cause)
	}
}

// snapshot returns a copy of a job's status with its queue position, the log size, and
// the channel closed at the next change.
func (a *Agent) snapshot(j *jobEntry) (JobStatus, int64, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := j.status
	if st.State == StateQueued {
		st.QueuePosition = a.queue.position(j)
	}
	return st, j.logSize, j.changed
}

func (a *Agent) job(id string) *jobEntry {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.jobs[id]
}

func newJobID() string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b[:])
}

// writeStatus persists a job's status in its directory. Queued and terminal states replace
// the record, synced (writeRecord), and a terminal one removes the state log. Launching,
// running and collecting are appended to the state log, unsynced: a line appended to a
// file that exists costs no new file, where replacing the record would cost one each
// time. After a crash the older synced record (queued) is just as non-terminal as what
// the log says, and the job is failed the same way; the log only names the state it was
// in (latestState).
func writeStatus(dir string, st *JobStatus) error {
	switch st.State {
	case StateLaunching, StateRunning, StateCollecting:
		return appendState(dir, st)
	}
	if err := writeRecord(dir, st); err != nil {
		return err
	}
	if st.State.Terminal() {
		// Left behind on failure, the log is ignored next to a terminal record.
		os.Remove(filepath.Join(dir, stateLogName))
	}
	return nil
}

// appendState appends st to dir's state log as one line, in one write, so an agent that
// dies leaves whole lines; a machine that crashes may lose the last ones or tear one,
// which latestState skips.
func appendState(dir string, st *JobStatus) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	path := filepath.Join(dir, stateLogName)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	_, err = f.Write(append(b, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// latestState is the last whole launching, running or collecting record of job id in
// dir's state log, or nil.
func latestState(dir, id string) *JobStatus {
	f, err := os.Open(filepath.Join(dir, stateLogName))
	if err != nil {
		return nil
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 16*maxRecordSize))
	if err != nil {
		return nil
	}
	lines := bytes.Split(b, []byte("\n"))
	for i := len(lines) - 1; i >= 0; i-- {
		var st JobStatus
		if json.Unmarshal(lines[i], &st) != nil || st.ID != id {
			continue
		}
		switch st.State {
		case StateLaunching, StateRunning, StateCollecting:
			return &st
		}
	}
	return nil
}

// writeRecord persists a job record atomically: temp file, fsync, rename, fsync of the
// directory, so a crash leaves the old record or the new one, never a torn one.
func writeRecord(dir string, st *JobStatus) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(dir, recordName)
	if err := atomicfile.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

func readRecord(path string) (*JobStatus, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxRecordSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxRecordSize {
		return nil, fmt.Errorf("job record %s is over %d bytes", path, maxRecordSize)
	}
	var st JobStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("job record %s: %w", path, err)
	}
	return &st, nil
}

// jobConsole is the launcher's console writer: it appends to the job's log file up to the
// limit and wakes the log's followers.
type jobConsole struct {
	a         *Agent
	j         *jobEntry
	f         *os.File
	limit     int64
	written   int64
	truncated bool
}

func (c *jobConsole) Write(p []byte) (int, error) {
	if c.truncated {
		return len(p), nil
	}
	chunk := p
	if room := c.limit - c.written; int64(len(chunk)) > room {
		chunk = chunk[:room]
		c.truncated = true
	}
	n, err := c.f.Write(chunk)
	c.written += int64(n)
	if c.truncated && err == nil {
		note := fmt.Sprintf("\n[cloche agent: the console log reached its limit of %d bytes; the rest is not kept]\n", c.limit)
		m, werr := io.WriteString(c.f, note)
		n += m
		err = werr
	}
	c.a.mu.Lock()
	c.j.logSize += int64(n)
	c.a.notifyLocked(c.j)
	c.a.mu.Unlock()
	if err != nil {
		return 0, err
	}
	return len(p), nil
}
