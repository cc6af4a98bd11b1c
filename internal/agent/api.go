// Package runner is the cloche agent: the daemon that owns a TEE host (KVM, the secure
// processor's device, the firmware, the guest and toolchain images, the signing key) and
// runs every confidential build on it. Local users reach it over a unix socket with a small
// versioned JSON API; the agent checks each peer's credentials (SO_PEERCRED), queues jobs
// fairly per submitter within a resource budget, runs each through a Launcher (build.Run in
// production), persists every state change, and survives its own restart without losing a
// finished job or leaving a VM behind.
//
// The API (version v1) is HTTP/1.1 over the socket:
//
//	GET  /v1/status             AgentStatus
//	POST /v1/jobs               multipart: part "job" (JobSpec JSON), part "source" (the
//	                            source.Pack archive); the response is a stream of Events
//	                            (one JSON object a line) until the job ends
//	GET  /v1/jobs/{id}          JobStatus
//	GET  /v1/jobs/{id}/log      the console log (?follow=1: until the job ends)
//	POST /v1/jobs/{id}/cancel   JobStatus
//	GET  /v1/jobs/{id}/result   the result archive (artifacts + provenance bundle, or the
//	                            unsigned statement of a client-signed job; a deterministic
//	                            tar whose digest JobStatus.Result names)
//
// Errors are JSON bodies {"code": ..., "error": ...} with a 4xx or 5xx status.
package agent

import (
	"errors"
	"fmt"
	"time"

	"github.com/cloche-dev/cloche/job"
)

// APIVersion is the path prefix of every endpoint; a client and an agent of different
// versions fail with a clear "unknown API version" error instead of misreading each other.
const APIVersion = "v1"

// Limits on what a client sends.
const (
	// MaxSpecBytes caps the "job" part of a submission.
	MaxSpecBytes = job.MaxManifestSize // the spec carries what the manifest will, git objects included
	// MaxHeaderBytes caps a request's HTTP header.
	MaxHeaderBytes = 32 << 10
)

// State is a job's place in its life cycle. Every change is persisted before it is shown.
type State string

// The states, in order. A job ends in exactly one of the last three.
const (
	StateQueued     State = "queued"
	StateLaunching  State = "launching"  // resources reserved; source packed, disks written
	StateRunning    State = "running"    // the VM is running
	StateCollecting State = "collecting" // the VM ended; output read, evidence checked, signed
	StateSucceeded  State = "succeeded"
	StateFailed     State = "failed"
	StateCancelled  State = "cancelled"
)

// States lists every state in life-cycle order (for status output and metrics).
var States = []State{StateQueued, StateLaunching, StateRunning, StateCollecting, StateSucceeded, StateFailed, StateCancelled}

// Terminal says whether a job in this state is finished.
func (s State) Terminal() bool {
	return s == StateSucceeded || s == StateFailed || s == StateCancelled
}

// Reasons the agent itself gives for ending a job (JobStatus.Reason starts with one of
// these where it applies).
const (
	ReasonRestarted    = "agent restarted"
	ReasonStopped      = "agent stopped"
	ReasonDisconnected = "client disconnected"
	ReasonCancelled    = "cancelled"
	ReasonWallClock    = "wall-clock limit reached"
)

// JobSpec is what a client asks for: the build's options (the agent supplies the guest
// image, toolchain, signer and accelerator from its own configuration) and the source
// archive's identity. Zero values take the agent's defaults.
type JobSpec struct {
	// Spec is the job as asked for; its TEE "" or "auto" is the agent's configured TEE.
	job.Spec
	// Source names the archive that follows in the "source" part; the agent checks both.
	Source job.Digest `json:"source"`
	// WallClockSeconds limits the whole job from launch to the end (default: the build
	// timeout plus the agent's slack, never more than the agent's maximum).
	WallClockSeconds int64 `json:"wallClockSeconds,omitempty"`
	// KeepOnDisconnect keeps the job running when the submitting connection goes away;
	// by default a disconnect cancels it (a cancelled workflow leaves nothing running).
	KeepOnDisconnect bool `json:"keepOnDisconnect,omitempty"`
	// Signing is who signs the provenance: SigningAgent (the default) with the agent's
	// key, or SigningClient, where the agent returns the unsigned statement (its evidence
	// inside) for the client to sign with an identity the agent never holds, such as a
	// workflow's OIDC token.
	Signing string `json:"signing,omitempty"`
}

// The values of JobSpec.Signing.
const (
	SigningAgent  = "agent"
	SigningClient = "client"
)

// Submitter is the peer that submitted a job, from SO_PEERCRED.
type Submitter struct {
	UID int `json:"uid"`
	GID int `json:"gid"`
	PID int `json:"pid"`
	// Groups are the peer's supplementary groups (SO_PEERGROUPS).
	Groups []int `json:"groups,omitempty"`
}

// JobStatus is a job as the agent records it (job.json in its directory) and shows it.
type JobStatus struct {
	ID        string    `json:"id"`
	State     State     `json:"state"`
	Reason    string    `json:"reason,omitempty"`
	Submitter Submitter `json:"submitter"`
	Spec      JobSpec   `json:"spec"`
	// TEE is the kind the job runs on (the spec's, or the agent's default).
	TEE string `json:"tee"`
	// WallClockSeconds is the limit the agent applies.
	WallClockSeconds int64 `json:"wallClockSeconds"`

	SubmittedAt time.Time  `json:"submittedAt"`
	LaunchedAt  *time.Time `json:"launchedAt,omitempty"`
	RunningAt   *time.Time `json:"runningAt,omitempty"`
	FinishedAt  *time.Time `json:"finishedAt,omitempty"`

	// QueuePosition is 1 for the next job of its submitter's queue; 0 when not queued.
	QueuePosition int `json:"queuePosition,omitempty"`
	// ExitCode is the build command's exit code when the guest reported one.
	ExitCode *int       `json:"exitCode,omitempty"`
	Result   *JobResult `json:"result,omitempty"`
	// Unsaved says why the agent could not save this state (it retries); empty when the
	// state shown is the one on disk.
	Unsaved string `json:"unsaved,omitempty"`
}

// JobResult describes a succeeded job's outputs.
type JobResult struct {
	Artifacts []job.Artifact `json:"artifacts"`
	// Bundle names the signed provenance bundle in the archive; Statement, instead, the
	// unsigned statement of a SigningClient job.
	Bundle      string `json:"bundle,omitempty"`
	Statement   string `json:"statement,omitempty"`
	Measurement string `json:"measurement"`
	SourceTree  string `json:"sourceTree"`
	// ToolchainDigest is the verity root hash of the toolchain the job ran with.
	ToolchainDigest string `json:"toolchainDigest,omitempty"`
	// SourceCommit and SourceTag are what the guest attested (JobSpec.Git).
	SourceCommit string `json:"sourceCommit,omitempty"`
	SourceTag    string `json:"sourceTag,omitempty"`
	// SimRootPath and PublicKeyPath name files on the agent's host: the simulated TEE's
	// root certificate and the signing key's public half, for `cloche verify`.
	SimRootPath    string `json:"simRootPath,omitempty"`
	PublicKeyPath  string `json:"publicKeyPath,omitempty"`
	DurationMillis int64  `json:"durationMillis"`
	// Archive is the digest and size of the result archive (GET .../result).
	Archive job.Digest `json:"archive"`
}

// Event is one line of a submission's response stream.
type Event struct {
	// Type is EventJob (the job's status: first when it was accepted, then at every state
	// change, last when it ended) or EventLog (a chunk of the console).
	Type string     `json:"type"`
	Job  *JobStatus `json:"job,omitempty"`
	Log  []byte     `json:"log,omitempty"`
}

// Event types.
const (
	EventJob = "job"
	EventLog = "log"
)

// Budget is what the agent may hand out to running jobs at once.
type Budget struct {
	VCPUs     int `json:"vcpus"`
	MemoryMiB int `json:"memoryMiB"`
	// VMs caps concurrent confidential VMs (on SEV-SNP also bounded by the host's ASIDs).
	VMs int `json:"vms"`
	// MinFreeDiskBytes is kept free in the state directory's file system: a job launches
	// only when its estimated disk use fits above it.
	MinFreeDiskBytes int64 `json:"minFreeDiskBytes"`
}

// Usage is what running jobs hold.
type Usage struct {
	VCPUs     int   `json:"vcpus"`
	MemoryMiB int   `json:"memoryMiB"`
	VMs       int   `json:"vms"`
	DiskBytes int64 `json:"diskBytes"`
}

// AgentStatus is the answer to GET /v1/status.
type AgentStatus struct {
	Version       string `json:"version"`
	APIVersion    string `json:"apiVersion"`
	TEE           string `json:"tee"`
	Budget        Budget `json:"budget"`
	InUse         Usage  `json:"inUse"`
	FreeDiskBytes int64  `json:"freeDiskBytes"`
	QueueLimit    int    `json:"queueLimit"`
	// Uploading counts submissions whose source is still arriving (they hold a queue place).
	Uploading int           `json:"uploading"`
	Counts    map[State]int `json:"counts"`
	Queued    []JobStatus   `json:"queued"`
	Running   []JobStatus   `json:"running"`
}

// Error codes of API errors.
const (
	CodeBadRequest = "bad_request"
	CodeTooLarge   = "too_large"
	CodeForbidden  = "forbidden"
	CodeNotFound   = "not_found"
	CodeBusy       = "busy"
	CodeConflict   = "conflict"
	CodeInternal   = "internal"
)

// Sentinel errors a client branches on; an *APIError matches the one of its code.
var (
	ErrBusy       = errors.New("agent busy")
	ErrForbidden  = errors.New("not allowed to use the agent")
	ErrNotFound   = errors.New("no such job")
	ErrBadRequest = errors.New("request rejected")
	ErrConflict   = errors.New("job not in a state for this request")
)

// APIError is an error answer of the agent.
type APIError struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"error"`
}

func (e *APIError) Error() string {
	return fmt.Sprintf("agent: %s (HTTP %d %s)", e.Message, e.Status, e.Code)
}

// Is matches the sentinel of the error's code.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrBusy:
		return e.Code == CodeBusy
	case ErrForbidden:
		return e.Code == CodeForbidden
	case ErrNotFound:
		return e.Code == CodeNotFound
	case ErrBadRequest:
		return e.Code == CodeBadRequest || e.Code == CodeTooLarge
	case ErrConflict:
		return e.Code == CodeConflict
	}
	return false
}
