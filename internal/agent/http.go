package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/build"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/source"
)

type peerKey struct{}

func (a *Agent) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /"+APIVersion+"/status", a.handleStatus)
	mux.HandleFunc("POST /"+APIVersion+"/jobs", a.handleSubmit)
	mux.HandleFunc("GET /"+APIVersion+"/jobs/{id}", a.handleJob)
	mux.HandleFunc("GET /"+APIVersion+"/jobs/{id}/log", a.handleLog)
	mux.HandleFunc("POST /"+APIVersion+"/jobs/{id}/cancel", a.handleCancel)
	mux.HandleFunc("GET /"+APIVersion+"/jobs/{id}/result", a.handleResult)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		a.fail(w, r, http.StatusNotFound, CodeNotFound, fmt.Sprintf("unknown request %s %s: this agent speaks API %s (GET /%s/status, POST /%s/jobs, ...)",
			r.Method, r.URL.Path, APIVersion, APIVersion, APIVersion))
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peer, err := a.authorize(r.Context())
		if err != nil {
			a.log.Warn("refused a peer", "err", err)
			a.fail(w, r, http.StatusForbidden, CodeForbidden, err.Error())
			return
		}
		mux.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), peerKey{}, peer)))
	})
}

// fail answers with a JSON error.
func (a *Agent) fail(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	a.metrics.add(func(m *metrics) { m.rejected[code]++ })
	a.log.Debug("request failed", "method", r.Method, "path", r.URL.Path, "status", status, "err", msg)
	w.Header().Set("Content-Type", "application/json")
	// The client may still be sending a body we will not read: close after answering.
	w.Header().Set("Connection", "close")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(&APIError{Code: code, Message: msg})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func (a *Agent) handleStatus(w http.ResponseWriter, r *http.Request) {
	s := a.Status()
	if peer := r.Context().Value(peerKey{}).(Submitter); peer.UID != a.uid {
		// Other users' jobs show without their command line and environment (either may
		// carry secrets).
		for _, list := range [][]JobStatus{s.Queued, s.Running} {
			for i := range list {
				if list[i].Submitter.UID != peer.UID {
					list[i].Spec.Env, list[i].Spec.Command = nil, nil
				}
			}
		}
	}
	writeJSON(w, s)
}

// Status reports the queue, the running jobs and the budget.
func (a *Agent) Status() *AgentStatus {
	free, _ := freeDisk(a.cfg.StateDir)
	a.mu.Lock()
	defer a.mu.Unlock()
	s := &AgentStatus{
		Version: a.version, APIVersion: APIVersion, TEE: a.cfg.TEE,
		Budget: a.cfg.Budget, InUse: a.inUse, FreeDiskBytes: free, QueueLimit: a.cfg.QueueLimit,
		Counts: map[State]int{}, Queued: []JobStatus{}, Running: []JobStatus{},
	}
	for _, n := range a.receiving {
		s.Uploading += n
	}
	for i, j := range a.queue.launchOrder() {
		st := j.status
		st.QueuePosition = i + 1
		s.Queued = append(s.Queued, st)
	}
	for _, j := range a.jobs {
		s.Counts[j.status.State]++
		if j.status.State != StateQueued && !j.status.State.Terminal() {
			s.Running = append(s.Running, j.status)
		}
	}
	return s
}

func (a *Agent) handleMetrics(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	g := gauges{byState: map[State]int{}, budget: a.cfg.Budget, inUse: a.inUse, queued: a.queue.len()}
	for _, j := range a.jobs {
		g.byState[j.status.State]++
	}
	a.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	if err := a.metrics.write(w, g); err != nil {
		a.log.Debug("writing metrics", "err", err)
	}
}

// prepareSpec applies the agent's defaults to a submitted spec and checks it, so a bad job
// is refused at the door with a 4xx instead of failing later.
func (a *Agent) prepareSpec(s *JobSpec) (status int, err error) {
	bad := func(format string, args ...any) (int, error) {
		return http.StatusBadRequest, fmt.Errorf(format, args...)
	}
	c := &a.cfg
	switch {
	case s.AutoTEE():
		s.TEE = attest.TEE(c.TEE)
	case s.TEE == attest.TEE(c.TEE):
	default:
		return bad("the job asks for TEE %q, this agent runs %q jobs", s.TEE, c.TEE)
	}
	if s.VCPUs == 0 {
		s.VCPUs = c.DefaultVCPUs
	}
	if s.MemoryMiB == 0 {
		s.MemoryMiB = c.DefaultMemoryMiB
	}
	if s.TimeoutSeconds == 0 {
		s.TimeoutSeconds = int64(time.Duration(c.DefaultTimeout) / time.Second)
	}
	if s.MaxOutputBytes == 0 {
		s.MaxOutputBytes = c.MaxOutputBytes
	}
	if s.Workdir == "" {
		s.Workdir = "."
	}
	if s.Artifacts == nil {
		s.Artifacts = []string{}
	}
	maxWall := int64(time.Duration(c.MaxWallClock) / time.Second)
	switch {
	case s.VCPUs < build.MinVCPUs || s.VCPUs > c.MaxJobVCPUs():
		return bad("the job asks for %d vCPUs, expected %d..%d (this agent's budget)", s.VCPUs, build.MinVCPUs, c.MaxJobVCPUs())
	case s.MemoryMiB < build.MinMemoryMiB || s.MemoryMiB > c.MaxJobMemoryMiB():
		return bad("the job asks for %d MiB of guest memory, expected %d..%d (this agent's budget)", s.MemoryMiB, build.MinMemoryMiB, c.MaxJobMemoryMiB())
	case s.TimeoutSeconds < 1 || s.TimeoutSeconds > maxWall:
		return bad("the job's timeout is %ds, expected 1..%d (this agent's maximum wall-clock time)", s.TimeoutSeconds, maxWall)
	case s.WallClockSeconds < 0 || s.WallClockSeconds > maxWall:
		return bad("the job's wall-clock limit is %ds, expected 0 (default) ..%d", s.WallClockSeconds, maxWall)
	case s.MaxOutputBytes < 1 || s.MaxOutputBytes > c.MaxOutputBytes:
		return bad("the job's output cap is %d bytes, expected 1..%d", s.MaxOutputBytes, c.MaxOutputBytes)
	case s.Source.Size > c.MaxSourceBytes:
		return http.StatusRequestEntityTooLarge, fmt.Errorf("the source archive is %d bytes, this agent accepts at most %d", s.Source.Size, c.MaxSourceBytes)
	}
	// The manifest's own rules check the rest (command, workdir, env, artifact patterns,
	// source digest), on a manifest with stand-in toolchain values.
	m := job.Manifest{
		Type: job.ManifestType, InvocationID: "check", TEE: string(s.TEE),
		Source:    job.Source{Repository: s.Repository, Ref: s.Ref, ArchiveSHA256: s.Source.SHA256, ArchiveSize: s.Source.Size},
		Toolchain: job.Toolchain{ImageSHA256: strings.Repeat("0", 64), ImageSize: 8192, VerityRootHash: strings.Repeat("0", 64), DataBlocks: 1, HashOffset: 4096},
		Command:   s.Command, Workdir: s.Workdir, Env: s.Env, Artifacts: s.Artifacts,
		SourceDateEpoch: s.SourceDateEpoch, TimeoutSeconds: s.TimeoutSeconds, MaxOutputBytes: s.MaxOutputBytes, Rlimits: s.Rlimits,
	}
	m.Source.SetGitObjects(s.Git)
	if err := m.Validate(); err != nil {
		return bad("%v", err)
	}
	if s.Signing != "" && s.Signing != SigningAgent && s.Signing != SigningClient {
		return bad("the job's signing is %q, expected %q or %q", s.Signing, SigningAgent, SigningClient)
	}
	if len(s.InvocationID) > 512 {
		return bad("the job's invocation id is over 512 characters")
	}
	return 0, nil
}

// wallClock is the job's limit from launch to end.
func (a *Agent) wallClock(s *JobSpec) int64 {
	maxWall := int64(time.Duration(a.cfg.MaxWallClock) / time.Second)
	if s.WallClockSeconds > 0 {
		return s.WallClockSeconds
	}
	return min(s.TimeoutSeconds+int64(time.Duration(a.cfg.WallClockSlack)/time.Second), maxWall)
}

// diskNeed estimates a job's disk use: the unpacked source, its archive and input disk,
// the output disk and the extracted output, and the result archive.
func diskNeed(s *JobSpec) int64 {
	return 3*s.Source.Size + 3*s.MaxOutputBytes + 48<<20
}

func (a *Agent) handleSubmit(w http.ResponseWriter, r *http.Request) {
	peer := r.Context().Value(peerKey{}).(Submitter)
	mr, spec, ok := a.readJobSpec(w, r)
	if !ok {
		return
	}
	// Admission: refuse before receiving the archive when the queue is full.
	if !a.admitSubmission(w, r, peer, spec.Source.Size) {
		return
	}
	received := false
	defer func() {
		if !received {
			a.mu.Lock()
			a.doneReceivingLocked(peer.UID, spec.Source.Size)
			a.mu.Unlock()
		}
	}()

	id := newJobID()
	dir := filepath.Join(a.jobsDir, id)
	src := filepath.Join(dir, srcDirName)
	if err := os.MkdirAll(src, 0o700); err != nil {
		a.fail(w, r, http.StatusInternalServerError, CodeInternal, fmt.Sprintf("preparing the job: %v", err))
		return
	}
	keep := false
	defer func() {
		if !keep {
			os.RemoveAll(dir)
		}
	}()
	if !a.receiveSource(w, r, mr, peer, spec, src) {
		return
	}
	j, ok := a.queueJob(w, r, peer, id, dir, spec)
	if !ok {
		return
	}
	keep, received = true, true
	a.streamEvents(w, r, j, id, spec.KeepOnDisconnect)
}

// readJobSpec reads the submission's first part, the job spec, and checks it against the
// agent's limits; ok is false when it has answered with the failure.
func (a *Agent) readJobSpec(w http.ResponseWriter, r *http.Request) (mr *multipart.Reader, spec *JobSpec, ok bool) {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "multipart/form-data" {
		a.fail(w, r, http.StatusBadRequest, CodeBadRequest, "a submission is a multipart/form-data body with the parts \"job\" (JSON) and \"source\" (the archive)")
		return nil, nil, false
	}
	// A body that pauses longer than the upload timeout is dropped: a stalled upload must
	// not hold a place in the queue.
	r.Body = &idleReader{r: r.Body, rc: http.NewResponseController(w), idle: time.Duration(a.cfg.UploadIdleTimeout)}
	mr, err := r.MultipartReader()
	if err != nil {
		a.fail(w, r, http.StatusBadRequest, CodeBadRequest, fmt.Sprintf("reading the submission: %v", err))
		return nil, nil, false
	}
	part, err := mr.NextPart()
	if err != nil || part.FormName() != "job" {
		a.fail(w, r, http.StatusBadRequest, CodeBadRequest, "the submission's first part must be \"job\" (the job spec as JSON)")
		return nil, nil, false
	}
	raw, err := io.ReadAll(io.LimitReader(part, MaxSpecBytes+1))
	if err != nil {
		a.fail(w, r, http.StatusBadRequest, CodeBadRequest, fmt.Sprintf("reading the job spec: %v", err))
		return nil, nil, false
	}
	if len(raw) > MaxSpecBytes {
		a.fail(w, r, http.StatusRequestEntityTooLarge, CodeTooLarge, fmt.Sprintf("the job spec is over %d bytes", MaxSpecBytes))
		return nil, nil, false
	}
	spec, err = decodeJobSpec(raw)
	if err != nil {
		a.fail(w, r, http.StatusBadRequest, CodeBadRequest, fmt.Sprintf("the job spec is not valid JSON for this API version: %v", err))
		return nil, nil, false
	}
	if status, err := a.prepareSpec(spec); err != nil {
		code := CodeBadRequest
		if status == http.StatusRequestEntityTooLarge {
			code = CodeTooLarge
		}
		a.fail(w, r, status, code, err.Error())
		return nil, nil, false
	}
	return mr, spec, true
}

// decodeJobSpec decodes exactly one JSON object with no field this API version lacks.
func decodeJobSpec(raw []byte) (*JobSpec, error) {
	var spec JobSpec
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data after the JSON object")
	}
	return &spec, nil
}

// admitSubmission counts a submission of a size-byte source from peer as arriving, unless
// the agent is stopping or the queue is full; ok is false when it has answered with the
// refusal. The caller ends the count with doneReceivingLocked.
func (a *Agent) admitSubmission(w http.ResponseWriter, r *http.Request, peer Submitter, size int64) bool {
	a.mu.Lock()
	if a.stopping {
		a.mu.Unlock()
		a.fail(w, r, http.StatusServiceUnavailable, CodeBusy, "the agent is stopping; retry with the next agent")
		return false
	}
	if status, msg := a.admitLocked(peer.UID, size); msg != "" {
		a.mu.Unlock()
		a.fail(w, r, status, CodeBusy, msg)
		return false
	}
	a.receiving[peer.UID]++
	a.arriving[peer.UID] += size
	a.mu.Unlock()
	return true
}

// receiveSource unpacks the submission's second part, the source archive, into src and
// checks that no part follows; false when it has answered with the failure (or the client
// went away).
func (a *Agent) receiveSource(w http.ResponseWriter, r *http.Request, mr *multipart.Reader, peer Submitter, spec *JobSpec, src string) bool {
	part, err := mr.NextPart()
	if isTimeout(err) {
		a.uploadStalled(w, r, peer)
		return false
	}
	if err != nil || part.FormName() != "source" {
		a.fail(w, r, http.StatusBadRequest, CodeBadRequest, "the submission's second part must be \"source\" (the source archive)")
		return false
	}
	lim := source.DefaultLimits()
	lim.MaxTotalSize = min(lim.MaxTotalSize, 4*a.cfg.MaxSourceBytes)
	if err := source.Unpack(r.Context(), part, spec.Source.SHA256, spec.Source.Size, src, lim, 0, 0, false); err != nil {
		a.sourceRejected(w, r, peer, err)
		return false
	}
	if _, err := mr.NextPart(); err != io.EOF {
		a.fail(w, r, http.StatusBadRequest, CodeBadRequest, "the submission has parts after \"source\"; expected exactly \"job\" and \"source\"")
		return false
	}
	// Read the body to its end so the server notices when the client goes away.
	io.Copy(io.Discard, io.LimitReader(r.Body, 4096))
	// From here the connection only streams the job's events: no read deadline.
	http.NewResponseController(w).SetReadDeadline(time.Time{})
	return true
}

// sourceRejected answers a source archive that could not be unpacked, telling the agent's
// full disk apart from a bad archive; a client that went away gets no answer.
func (a *Agent) sourceRejected(w http.ResponseWriter, r *http.Request, peer Submitter, err error) {
	if r.Context().Err() != nil {
		a.log.Info("submission abandoned while the source arrived", "peer_uid", peer.UID)
		return
	}
	if isTimeout(err) {
		a.uploadStalled(w, r, peer)
		return
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		// The agent's disk, not the client's archive, is at fault.
		a.fail(w, r, http.StatusInsufficientStorage, CodeInternal, fmt.Sprintf("the agent's state disk (%s) is full: unpacking the source failed: %v; retry later", a.cfg.StateDir, err))
		return
	}
	a.fail(w, r, http.StatusBadRequest, CodeBadRequest, fmt.Sprintf("the source archive was rejected: %v", err))
}

// queueJob persists the received job in dir, ends its count as arriving and queues it;
// false when it has answered with the failure.
func (a *Agent) queueJob(w http.ResponseWriter, r *http.Request, peer Submitter, id, dir string, spec *JobSpec) (*jobEntry, bool) {
	j := &jobEntry{
		dir:     dir,
		need:    Usage{VCPUs: spec.VCPUs, MemoryMiB: spec.MemoryMiB, VMs: 1, DiskBytes: diskNeed(spec)},
		changed: make(chan struct{}),
		status: JobStatus{
			ID: id, State: StateQueued, Submitter: peer, Spec: *spec, TEE: string(spec.TEE),
			WallClockSeconds: a.wallClock(spec), SubmittedAt: time.Now().UTC(),
		},
	}
	if err := os.WriteFile(filepath.Join(dir, consoleName), nil, 0o600); err != nil {
		a.fail(w, r, http.StatusInternalServerError, CodeInternal, fmt.Sprintf("preparing the job's log: %v", err))
		return nil, false
	}
	// Nobody else knows the job yet: its record is written (and synced) without a.mu.
	if err := writeRecord(dir, &j.status); err != nil {
		a.fail(w, r, http.StatusInternalServerError, CodeInternal, fmt.Sprintf("persisting the job: %v", err))
		return nil, false
	}
	a.mu.Lock()
	a.doneReceivingLocked(peer.UID, spec.Source.Size)
	a.jobs[id] = j
	a.queue.push(j)
	a.metrics.add(func(m *metrics) { m.submitted++ })
	a.mu.Unlock()
	a.log.Info("job queued", "job", id, "peer_uid", peer.UID, "peer_pid", peer.PID, "command", spec.Command, "source_sha256", spec.Source.SHA256)
	a.kickDispatch()
	return j, true
}

// streamEvents streams the job's log and status changes to the submitting client as
// NDJSON events until the job ends; a client that goes away cancels its job unless
// keepOnDisconnect.
func (a *Agent) streamEvents(w http.ResponseWriter, r *http.Request, j *jobEntry, id string, keepOnDisconnect bool) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	flush := func() error {
		return http.NewResponseController(w).Flush()
	}
	err := a.follow(r.Context(), j,
		func(b []byte) error {
			if err := enc.Encode(&Event{Type: EventLog, Log: b}); err != nil {
				return err
			}
			return flush()
		},
		func(st JobStatus) error {
			if err := enc.Encode(&Event{Type: EventJob, Job: &st}); err != nil {
				return err
			}
			return flush()
		})
	if err != nil && !keepOnDisconnect {
		a.log.Info("submitting client went away; cancelling its job", "job", id, "err", err)
		a.cancelJob(j, stopCause{StateCancelled, ReasonDisconnected})
	}
}

// admitLocked says why a new submission from uid of a size-byte source must wait (a
// status and message; "" when it may come in): the queue is full for everyone or for this
// user (uploads arriving, jobs waiting, bytes stored), or the disk cannot hold the source.
func (a *Agent) admitLocked(uid int, size int64) (int, string) {
	busy := http.StatusTooManyRequests
	arriving, arrivingBytes := 0, int64(0)
	for u, n := range a.receiving {
		arriving += n
		arrivingBytes += a.arriving[u]
	}
	if waiting := a.queue.len() + arriving; waiting >= a.cfg.QueueLimit {
		return busy, fmt.Sprintf("agent busy: %d jobs are waiting, the queue limit is %d; retry later (%d queued, %d still uploading)", waiting, a.cfg.QueueLimit, a.queue.len(), arriving)
	}
	if n := a.receiving[uid]; n >= a.cfg.UserUploads {
		return busy, fmt.Sprintf("agent busy for uid %d: %d of its submissions are still uploading, the limit per user is %d; retry when one has arrived", uid, n, a.cfg.UserUploads)
	}
	if waiting := a.queue.lenOf(uid) + a.receiving[uid]; waiting >= a.cfg.UserQueueLimit {
		return busy, fmt.Sprintf("agent busy: the queue of uid %d is full: %d of its jobs are waiting, the limit per user is %d; retry later (other users are not affected)", uid, waiting, a.cfg.UserQueueLimit)
	}
	if stored := a.queuedBytesLocked(uid); stored+size > a.cfg.UserQueueBytes {
		return busy, fmt.Sprintf("agent busy: the queue of uid %d is full: its waiting jobs hold %d bytes of sources, this one adds %d, the limit per user is %d bytes; retry later (other users are not affected)", uid, stored, size, a.cfg.UserQueueBytes)
	}
	// The unpacked source is at most its archive's size; sources still arriving will take
	// their share of what is free now.
	free, err := freeDisk(a.cfg.StateDir)
	if err != nil {
		return http.StatusInternalServerError, fmt.Sprintf("checking free disk space: %v", err)
	}
	if free-arrivingBytes < a.cfg.Budget.MinFreeDiskBytes+size {
		return http.StatusInsufficientStorage, fmt.Sprintf("agent busy: not enough free disk space for the source in %s: %d bytes free, %d promised to sources still arriving, the source needs %d and the agent keeps %d free; retry later",
			a.cfg.StateDir, free, arrivingBytes, size, a.cfg.Budget.MinFreeDiskBytes)
	}
	return 0, ""
}

// queuedBytesLocked is the source bytes uid's waiting jobs hold (queued and arriving).
func (a *Agent) queuedBytesLocked(uid int) int64 {
	n := a.arriving[uid]
	for _, j := range a.queue.queues[uid] {
		n += j.status.Spec.Source.Size
	}
	return n
}

func (a *Agent) doneReceivingLocked(uid int, size int64) {
	if a.receiving[uid]--; a.receiving[uid] <= 0 {
		delete(a.receiving, uid)
	}
	if a.arriving[uid] -= size; a.arriving[uid] <= 0 {
		delete(a.arriving, uid)
	}
}

// uploadStalled answers a submission whose body paused past the upload timeout.
func (a *Agent) uploadStalled(w http.ResponseWriter, r *http.Request, peer Submitter) {
	a.log.Info("dropped a stalled submission", "peer_uid", peer.UID, "idle", time.Duration(a.cfg.UploadIdleTimeout))
	a.fail(w, r, http.StatusRequestTimeout, CodeBadRequest, fmt.Sprintf("the submission's body paused for more than %s; send it without pauses", time.Duration(a.cfg.UploadIdleTimeout)))
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// idleReader moves the connection's read deadline on before every read, so a body that
// keeps arriving may take as long as it needs but one that stops is cut off.
type idleReader struct {
	r    io.ReadCloser
	rc   *http.ResponseController
	idle time.Duration
}

func (i *idleReader) Read(p []byte) (int, error) {
	if err := i.rc.SetReadDeadline(time.Now().Add(i.idle)); err != nil {
		return 0, fmt.Errorf("setting the upload's read deadline: %w", err)
	}
	return i.r.Read(p)
}

func (i *idleReader) Close() error { return i.r.Close() }

// logBufs holds follow's read buffers, one in use per follower.
var logBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// follow streams a job's log and state changes from the start until the job has ended
// and its whole log was sent, or ctx ends, or a callback fails.
func (a *Agent) follow(ctx context.Context, j *jobEntry, onLog func([]byte) error, onState func(JobStatus) error) error {
	f, err := os.Open(filepath.Join(j.dir, consoleName))
	if err != nil {
		return fmt.Errorf("job log: %w", err)
	}
	defer f.Close()
	var offset int64
	var last *JobStatus
	bp := logBufs.Get().(*[]byte)
	defer logBufs.Put(bp)
	buf := *bp
	for {
		st, size, changed := a.snapshot(j)
		for offset < size {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), size-offset)], offset)
			if n > 0 && onLog != nil {
				if err := onLog(buf[:n]); err != nil {
					return err
				}
			}
			offset += int64(n)
			if err != nil {
				if err == io.EOF {
					break // pruned or truncated under us; the state decides below
				}
				return fmt.Errorf("job log: %w", err)
			}
		}
		if onState != nil && (last == nil || last.State != st.State || last.QueuePosition != st.QueuePosition) {
			if err := onState(st); err != nil {
				return err
			}
			last = &st
		}
		if st.State.Terminal() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// lookup finds the request's job and checks that the peer may act on it: a job's record,
// log and results (which may hold its environment and build output) and its cancellation
// belong to its submitter and the agent's own user.
func (a *Agent) lookup(w http.ResponseWriter, r *http.Request, action string) *jobEntry {
	id := r.PathValue("id")
	j := a.job(id)
	if j == nil {
		a.fail(w, r, http.StatusNotFound, CodeNotFound, fmt.Sprintf("no job %q on this agent (finished jobs are kept until %d newer ones have finished)", id, a.cfg.KeepFinished))
		return nil
	}
	peer := r.Context().Value(peerKey{}).(Submitter)
	st, _, _ := a.snapshot(j)
	if peer.UID != st.Submitter.UID && peer.UID != a.uid {
		a.fail(w, r, http.StatusForbidden, CodeForbidden, fmt.Sprintf("job %s belongs to uid %d; only its submitter or the agent's user (uid %d) may %s it", st.ID, st.Submitter.UID, a.uid, action))
		return nil
	}
	return j
}

func (a *Agent) handleJob(w http.ResponseWriter, r *http.Request) {
	if j := a.lookup(w, r, "read"); j != nil {
		st, _, _ := a.snapshot(j)
		writeJSON(w, &st)
	}
}

func (a *Agent) handleLog(w http.ResponseWriter, r *http.Request) {
	j := a.lookup(w, r, "read the log of")
	if j == nil {
		return
	}
	follow, _ := strconv.ParseBool(r.URL.Query().Get("follow"))
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !follow {
		_, size, _ := a.snapshot(j)
		f, err := os.Open(filepath.Join(j.dir, consoleName))
		if err != nil {
			a.fail(w, r, http.StatusInternalServerError, CodeInternal, fmt.Sprintf("job log: %v", err))
			return
		}
		defer f.Close()
		io.Copy(w, io.LimitReader(f, size))
		return
	}
	a.follow(r.Context(), j, func(b []byte) error {
		if _, err := w.Write(b); err != nil {
			return err
		}
		return http.NewResponseController(w).Flush()
	}, nil)
}

func (a *Agent) handleCancel(w http.ResponseWriter, r *http.Request) {
	j := a.lookup(w, r, "cancel")
	if j == nil {
		return
	}
	peer := r.Context().Value(peerKey{}).(Submitter)
	st, _, _ := a.snapshot(j)
	if st.State.Terminal() {
		a.fail(w, r, http.StatusConflict, CodeConflict, fmt.Sprintf("job %s has already ended (%s)", st.ID, st.State))
		return
	}
	a.log.Info("job cancel requested", "job", st.ID, "peer_uid", peer.UID)
	a.cancelJob(j, stopCause{StateCancelled, fmt.Sprintf("%s by uid %d", ReasonCancelled, peer.UID)})
	st, _, _ = a.snapshot(j)
	writeJSON(w, &st)
}

func (a *Agent) handleResult(w http.ResponseWriter, r *http.Request) {
	j := a.lookup(w, r, "fetch the results of")
	if j == nil {
		return
	}
	st, _, _ := a.snapshot(j)
	if st.State != StateSucceeded || st.Result == nil {
		a.fail(w, r, http.StatusConflict, CodeConflict, fmt.Sprintf("job %s is %s; results exist only for succeeded jobs", st.ID, st.State))
		return
	}
	f, err := os.Open(filepath.Join(j.dir, resultName))
	if err != nil {
		a.fail(w, r, http.StatusInternalServerError, CodeInternal, fmt.Sprintf("job %s's result archive: %v", st.ID, err))
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/x-tar")
	w.Header().Set("Content-Length", strconv.FormatInt(st.Result.Archive.Size, 10))
	io.Copy(w, io.LimitReader(f, st.Result.Archive.Size))
}
