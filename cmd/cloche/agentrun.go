package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/build"
	"github.com/cloche-dev/cloche/runner"
	"github.com/cloche-dev/cloche/runner/client"
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

// runOnAgent is `cloche run` through the agent: the same job options, the source sent as
// the same deterministic archive, the console streamed back, and the artifacts and bundle
// written to --out, reported exactly as a local build reports them.
func runOnAgent(ctx context.Context, g *globals, f *runFlags, socket string, command []string) error {
	// What the agent configures for itself cannot be chosen per job.
	for _, c := range []struct{ flag, value string }{
		{"--key", f.key}, {"--guest-image", f.guestImage}, {"--toolchain", f.toolchain},
		{"--guest-agent", f.guestAgent}, {"--qemu", f.qemu},
	} {
		if c.value != "" {
			return fmt.Errorf("%s is set by the agent's configuration and cannot be chosen per job; drop it, or build locally without --agent/$%s", c.flag, agentSocketEnv)
		}
	}
	if f.accel != "auto" {
		return fmt.Errorf("--accel is set by the agent's configuration and cannot be chosen per job; drop it, or build locally without --agent/$%s", agentSocketEnv)
	}
	env, err := checkSourceAndEnv(f)
	if err != nil {
		return err
	}
	if len(env) == 0 {
		env = nil
	}
	tee := f.tee
	if tee == "auto" {
		tee = "" // the agent's TEE
	}
	spec := runner.JobSpec{
		Command: command, Workdir: f.workdir, Env: env, Artifacts: f.artifacts, TEE: tee,
		TimeoutSeconds:  int64((f.timeout + time.Second - 1) / time.Second),
		MaxOutputBytes:  f.maxOutput,
		VCPUs:           f.vcpus,
		MemoryMiB:       f.memory,
		SourceDateEpoch: f.sourceDateEpoch,
		InvocationID:    f.invocationID,
		Repository:      f.repository, Ref: f.ref, Commit: f.commit,
	}
	console := io.Writer(g.stderr)
	if f.quiet {
		console = io.Discard
	}
	c := client.New(socket)
	defer c.Close()
	var last runner.State
	st, err := c.Submit(ctx, spec, f.source, func(ev runner.Event) {
		switch {
		case ev.Type == runner.EventLog:
			console.Write(ev.Log)
		case ev.Job != nil && ev.Job.State != last:
			if last == "" {
				fmt.Fprintf(g.stderr, "cloche: agent %s accepted job %s\n", socket, ev.Job.ID)
				if ev.Job.TEE == string(attest.TEESim) {
					fmt.Fprintln(g.stderr, "cloche: WARNING: SIMULATED TEE: the host plays the secure processor; the evidence proves nothing about this host")
				}
			}
			last = ev.Job.State
			if ev.Job.State == runner.StateQueued {
				fmt.Fprintf(g.stderr, "cloche: job %s queued (position %d)\n", ev.Job.ID, ev.Job.QueuePosition)
			} else if !ev.Job.State.Terminal() {
				fmt.Fprintf(g.stderr, "cloche: job %s %s\n", ev.Job.ID, ev.Job.State)
			}
		}
	})
	if err != nil {
		if errors.Is(err, context.Canceled) && st != nil {
			return fmt.Errorf("interrupted: job %s on the agent is cancelled with this connection: %w", st.ID, err)
		}
		return fmt.Errorf("running the build on the agent: %w", err)
	}
	if st.State != runner.StateSucceeded {
		msg := fmt.Sprintf("job %s %s on the agent: %s", st.ID, st.State, st.Reason)
		if st.ExitCode != nil && *st.ExitCode > 0 {
			msg += fmt.Sprintf(" (exit code %d)", *st.ExitCode)
		}
		return errors.New(msg)
	}
	if err := c.FetchResult(ctx, st, f.out); err != nil {
		return fmt.Errorf("fetching job %s's results: %w", st.ID, err)
	}
	r := st.Result
	printOutcome(g.stderr, &build.Outcome{
		Artifacts:   r.Artifacts,
		ArtifactDir: f.out,
		BundlePath:  filepath.Join(f.out, r.Bundle),
		Measurement: r.Measurement,
		SourceTree:  r.SourceTree,
		TEE:         attest.TEE(st.TEE),
		SimRootPath: r.SimRootPath,
		Duration:    time.Duration(r.DurationMillis) * time.Millisecond,
	}, r.PublicKeyPath, " --measurement "+r.Measurement)
	return nil
}
