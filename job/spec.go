package job

import (
	"time"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/source"
)

// Spec is one job request: what to build and how, as a user asks for it, before the host
// adds its images and keys. It is declared once and carried by every way in: `cloche run`'s
// flags, the build action's inputs, the agent API (agent.JobSpec embeds it, so its JSON is
// the agent's wire format) and build.Options, from which the host writes the Manifest.
//
// Zero values mean "the default" (build.DefaultTimeout, DefaultVCPUs, ...); callers that
// take a user's explicit zero fill the defaults in first and then check.
type Spec struct {
	Command []string `json:"command"`
	// Workdir is relative to the source root; "" or "." is the root.
	Workdir string            `json:"workdir,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
	// Artifacts are path.Match patterns relative to the source root; none means every
	// regular file the command created or changed.
	Artifacts []string `json:"artifacts,omitempty"`
	// TEE is sim, snp or tdx; "" or "auto" is the host's.
	TEE attest.TEE `json:"tee,omitempty"`
	// TimeoutSeconds limits the build command inside the guest.
	TimeoutSeconds  int64 `json:"timeoutSeconds,omitempty"`
	MaxOutputBytes  int64 `json:"maxOutputBytes,omitempty"` // artifacts + log
	VCPUs           int   `json:"vcpus,omitempty"`
	MemoryMiB       int   `json:"memoryMiB,omitempty"`
	SourceDateEpoch int64 `json:"sourceDateEpoch,omitempty"`
	// Rlimits bound the build's processes (zero fields: DefaultRlimits).
	Rlimits Rlimits `json:"rlimits,omitzero"`
	// InvocationID names this run uniquely (default: a random local id).
	InvocationID string `json:"invocationId,omitempty"`
	// Repository and Ref are recorded as the host's word (a keyless signer's certificate
	// binds them).
	Repository string `json:"repository,omitempty"`
	Ref        string `json:"ref,omitempty"`
	// Git are the raw git objects naming the source (source.ReadGitObjects): the guest
	// checks the commit's tree against what it unpacked and attests the commit id, and the
	// tag's, in the result record. Nil: no commit is attested.
	Git *source.GitObjects `json:"git,omitempty"`
	// Deps names the lockfile the host fetches dependencies for, onto a read-only disk of
	// their own that the guest checks against the lockfile in the source before the build:
	// DepsGo (go.sum, in Workdir) or DepsNPM (package-lock.json, in Workdir). "" is none.
	Deps string `json:"deps,omitempty"`
}

// Dependency kinds of Spec.Deps and Deps.Kind.
const (
	DepsGo  = "go"
	DepsNPM = "npm"
)

// DepsLockfile is the lockfile of a dependency kind, in Workdir; "" for an unknown kind.
func DepsLockfile(kind string) string {
	switch kind {
	case DepsGo:
		return "go.sum"
	case DepsNPM:
		return "package-lock.json"
	}
	return ""
}

// Timeout is TimeoutSeconds as a duration.
func (s *Spec) Timeout() time.Duration { return time.Duration(s.TimeoutSeconds) * time.Second }

// SetTimeout sets TimeoutSeconds from d, rounding a part of a second up (a limit is never
// shortened); zero and negative values are kept as they are so that a check refuses them.
func (s *Spec) SetTimeout(d time.Duration) {
	if d <= 0 {
		s.TimeoutSeconds = int64(d / time.Second)
		if d < 0 && d%time.Second != 0 {
			s.TimeoutSeconds--
		}
		return
	}
	s.TimeoutSeconds = int64((d + time.Second - 1) / time.Second)
}

// AutoTEE says whether the spec leaves the TEE to the host.
func (s *Spec) AutoTEE() bool { return s.TEE == "" || s.TEE == "auto" }
