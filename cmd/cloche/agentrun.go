package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/agent"
	"github.com/cloche-dev/cloche/internal/agent/client"
	"github.com/cloche-dev/cloche/internal/build"
	"github.com/cloche-dev/cloche/provenance"
)

// agentSocketEnv names the agent socket for `cloche run` when --agent is not given.
const agentSocketEnv = "CLOCHE_AGENT_SOCKET"

// agentSocketFor is the agent `cloche run` uses: --agent, else $CLOCHE_AGENT_SOCKET, else
// none (build locally).
func agentSocketFor(f *runFlags) string {
	if f.agent != "" {
		return f.agent
	}
	return os.Getenv(agentSocketEnv)
}

// checkAgentFlags refuses the flags the agent's own configuration sets.
func checkAgentFlags(f *runFlags) error {
	for _, c := range []struct{ flag, value string }{
		{"--key", f.key}, {"--guest-image", f.guestImage}, {"--toolchain", f.toolchain}, {"--toolchain-image", f.toolchainImage},
		{"--guest-init", f.guestInit}, {"--qemu", f.qemu}, {"--rekor-url", f.rekorURL}, {"--guest-image-release", f.guestRelease.tag},
	} {
		if c.value != "" {
			return usageError(fmt.Errorf("%s is set by the agent's configuration and cannot be chosen per job; drop it, or build locally without --agent/$%s", c.flag, agentSocketEnv))
		}
	}
	if f.accel != "auto" {
		return usageError(fmt.Errorf("--accel is set by the agent's configuration and cannot be chosen per job; drop it, or build locally without --agent/$%s", agentSocketEnv))
	}
	return nil
}

// agentUnreachable turns "no agent listens on this socket" into how to start one.
func agentUnreachable(socket string, err error) error {
	if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) {
		return err
	}
	return hostError(fmt.Errorf("no cloche agent is listening at %s: start it with `systemctl start cloche-agent` "+
		"(unit dist/cloche-agent.service, see docs/agent.md) or `cloche agent --socket %s`; "+
		"without --agent and $%s, cloche run builds locally: %w", socket, socket, agentSocketEnv, err))
}

// runOnAgent is `cloche run` through the agent: the same job options, the source sent as
// the same deterministic archive, the console streamed back, and the artifacts and bundle
// written to --out, reported exactly as a local build reports them.
func runOnAgent(ctx context.Context, g *globals, f *runFlags, socket string, in *build.Options) error {
	progress := &agentProgress{rep: g.reporter(), console: consoleWriter(g.stderr, f.quiet), socket: socket}
	c := client.New(socket)
	defer c.Close()
	st, err := c.Submit(ctx, agentJobSpec(in), in.SourceDir, progress.event)
	if err != nil {
		return agentSubmitError(err, st, socket)
	}
	if st.State != agent.StateSucceeded {
		return agentJobFailed(st)
	}
	if err := c.FetchResult(ctx, st, f.out); err != nil {
		return fmt.Errorf("fetching job %s's results: %w", st.ID, err)
	}
	r := st.Result
	return reportOutcome(g, f.json, &build.Outcome{
		Artifacts:       r.Artifacts,
		Checksums:       provenance.ChecksumsArtifact(r.Artifacts),
		ArtifactDir:     f.out,
		BundlePath:      filepath.Join(f.out, r.Bundle),
		Measurement:     r.Measurement,
		SourceTree:      r.SourceTree,
		ToolchainDigest: r.ToolchainDigest,
		Commit:          r.SourceCommit,
		Tag:             r.SourceTag,
		TEE:             attest.TEE(st.TEE),
		SimRootPath:     r.SimRootPath,
		Duration:        time.Duration(r.DurationMillis) * time.Millisecond,
	}, r.PublicKeyPath, []string{"--measurement", r.Measurement}, false, progress.warnings)
}

// agentJobSpec is the job of a local build's options, for the agent.
func agentJobSpec(in *build.Options) agent.JobSpec {
	spec := agent.JobSpec{Spec: in.Spec}
	if len(spec.Env) == 0 {
		spec.Env = nil
	}
	if spec.AutoTEE() {
		spec.TEE = "" // the agent's TEE
	}
	return spec
}

// agentProgress shows the job's events as they stream back: the console, and a line for
// each change of state.
type agentProgress struct {
	rep     *reporter
	console io.Writer
	socket  string
	last    agent.State
	// warnings are reported again with the outcome (the simulated TEE's).
	warnings []string
}

func (p *agentProgress) event(ev agent.Event) {
	switch {
	case ev.Type == agent.EventLog:
		p.console.Write(ev.Log)
	case ev.Job != nil && ev.Job.State != p.last:
		if p.last == "" {
			p.rep.Info("the agent accepted the job", "agent", p.socket, "job", ev.Job.ID)
			if ev.Job.TEE == string(attest.TEESim) {
				p.warnings = append(p.warnings, simWarning)
				p.rep.Warning(simWarning)
			}
		}
		p.last = ev.Job.State
		if ev.Job.State == agent.StateQueued {
			p.rep.Info("job queued", "job", ev.Job.ID, "position", ev.Job.QueuePosition)
		} else if !ev.Job.State.Terminal() {
			p.rep.Info("job "+string(ev.Job.State), "job", ev.Job.ID)
		}
	}
}

// agentSubmitError says what a failed submission means for the user: an interrupted job,
// a job the agent refused (a usage error), or an agent that could not be reached.
func agentSubmitError(err error, st *agent.JobStatus, socket string) error {
	switch {
	case errors.Is(err, context.Canceled) && st != nil:
		return fmt.Errorf("interrupted: job %s on the agent is cancelled with this connection: %w", st.ID, err)
	case errors.Is(err, agent.ErrBadRequest):
		return usageError(fmt.Errorf("the agent refused the job: %w", err))
	}
	return agentUnreachable(socket, fmt.Errorf("running the build on the agent: %w", err))
}

// agentJobFailed describes a job that ended on the agent without succeeding.
func agentJobFailed(st *agent.JobStatus) error {
	msg := fmt.Sprintf("job %s %s on the agent", st.ID, st.State)
	if st.Reason != "" {
		msg += ": " + st.Reason
	}
	if st.ExitCode != nil && *st.ExitCode > 0 {
		msg += fmt.Sprintf(" (exit code %d)", *st.ExitCode)
	}
	return errors.New(msg)
}
