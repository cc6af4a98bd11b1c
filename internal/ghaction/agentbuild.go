package ghaction

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/sethvargo/go-githubactions"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/agent"
	"github.com/cloche-dev/cloche/internal/agent/client"
	"github.com/cloche-dev/cloche/internal/atomicfile"
	"github.com/cloche-dev/cloche/internal/build"
	"github.com/cloche-dev/cloche/internal/fileio"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
)

// agentSocketEnv names the agent socket when input agent-socket is empty, as for
// `cloche run`.
const agentSocketEnv = "CLOCHE_AGENT_SOCKET"

// agentSocket is the agent the build goes through: input agent-socket ("none": build
// locally), else $CLOCHE_AGENT_SOCKET, else the default socket when one is there; "" means
// build locally.
func agentSocket(a *githubactions.Action) string {
	switch v := input(a, "agent-socket"); v {
	case "none":
		return ""
	case "":
	default:
		return v
	}
	if v := a.Getenv(agentSocketEnv); v != "" {
		return v
	}
	if fi, err := os.Stat(agent.DefaultSocket()); err == nil && fi.Mode().Type() == fs.ModeSocket {
		return agent.DefaultSocket()
	}
	return ""
}

// agentSetInputs are the inputs the agent's own configuration sets: a job cannot choose
// them, and ignoring them would build with something other than what the workflow asked
// (trusted-root only matters with guest-image-release).
var agentSetInputs = []string{"guest-image", "guest-image-release", "toolchain", "key"}

func checkAgentInputs(a *githubactions.Action, socket string) error {
	for _, name := range agentSetInputs {
		if input(a, name) != "" {
			return fmt.Errorf("%w: input %s is set by the configuration of the cloche agent at %s and cannot be chosen per job; drop it, or build without the agent (agent-socket: none)", ErrInput, name, socket)
		}
	}
	return nil
}

// buildOnAgent runs the job on the agent at socket with the build log streaming live and
// grouped, as buildInVM does. With a signer (keyless) the agent returns the statement
// unsigned and it is checked and signed here, in the workflow's process: the agent never
// sees the OIDC token. Without one, the agent signs with its key.
func buildOnAgent(ctx context.Context, r Runner, a *githubactions.Action, socket string, in *buildInputs, signer provenance.Signer) (*build.Outcome, error) {
	if err := checkAgentInputs(a, socket); err != nil {
		return nil, err
	}
	c := client.New(socket)
	defer c.Close()
	status, err := c.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("no cloche agent answers at %s (input agent-socket, $%s or the default socket; agent-socket: none builds without it): %w", socket, agentSocketEnv, err)
	}
	if status.TEE == string(attest.TEESim) {
		a.Warningf("SIMULATED TEE: the runner host plays the secure processor; this evidence proves nothing about the host")
	}
	spec := agent.JobSpec{Spec: in.spec, Signing: agent.SigningAgent}
	if spec.AutoTEE() {
		spec.TEE = "" // the agent's
	}
	if signer != nil {
		spec.Signing = agent.SigningClient
	}
	st, err := submitToAgent(ctx, r, a, c, spec, in, socket)
	if err != nil {
		return nil, err
	}
	if err := c.FetchResult(ctx, st, in.outDir); err != nil {
		return nil, fmt.Errorf("fetching job %s's results from the agent: %w", st.ID, err)
	}
	outcome := agentOutcome(st, in.outDir)
	if outcome.Commit != in.wc.sha {
		return nil, fmt.Errorf("the guest attested commit %q, but the workflow runs for commit %s", outcome.Commit, in.wc.sha)
	}
	if signer != nil {
		if err := signOnClient(ctx, in, st, outcome, signer); err != nil {
			return nil, err
		}
	}
	return outcome, nil
}

// submitToAgent sends the job and follows it to its end, the console into the job log
// with workflow commands stopped.
func submitToAgent(ctx context.Context, r Runner, a *githubactions.Action, c *client.Client, spec agent.JobSpec, in *buildInputs, socket string) (*agent.JobStatus, error) {
	log := r.logger()
	last := agent.State("")
	onEvent := func(ev agent.Event) {
		switch {
		case ev.Type == agent.EventLog:
			r.Stdout.Write(ev.Log)
		case ev.Job != nil && ev.Job.State != last:
			last = ev.Job.State
			log.Info("agent job "+string(last), "agent", socket, "job", ev.Job.ID, "position", ev.Job.QueuePosition)
		}
	}
	a.Group(fmt.Sprintf("cloche: %s (in a confidential VM, through the cloche agent at %s)", in.spec.Command[2], socket))
	resume := stopCommands(r.Stdout)
	st, err := c.Submit(ctx, spec, in.srcDir, onEvent)
	fmt.Fprint(r.Stdout, resume)
	a.EndGroup()
	switch {
	case err != nil && st != nil && errors.Is(err, context.Canceled):
		return nil, fmt.Errorf("interrupted: job %s on the agent is cancelled with this connection: %w", st.ID, err)
	case err != nil:
		return nil, fmt.Errorf("running the build on the cloche agent at %s: %w", socket, err)
	case st.State != agent.StateSucceeded:
		msg := fmt.Sprintf("job %s %s on the agent", st.ID, st.State)
		if st.Reason != "" {
			msg += ": " + st.Reason
		}
		return nil, errors.New(msg)
	case st.Spec.Signing != spec.Signing:
		return nil, fmt.Errorf("job %s: the agent recorded signing %q, the job asked for %q", st.ID, st.Spec.Signing, spec.Signing)
	}
	return st, nil
}

// agentOutcome is a succeeded job's result as a local build reports it.
func agentOutcome(st *agent.JobStatus, outDir string) *build.Outcome {
	r := st.Result
	o := &build.Outcome{
		Artifacts: r.Artifacts, ArtifactDir: outDir, Measurement: r.Measurement, SourceTree: r.SourceTree, ToolchainDigest: r.ToolchainDigest,
		Commit: r.SourceCommit, Tag: r.SourceTag, TEE: attest.TEE(st.TEE), SimRootPath: r.SimRootPath,
		Duration: time.Duration(r.DurationMillis) * time.Millisecond,
		// FetchResult checked the file against the attested artifacts.
		Checksums: provenance.ChecksumsArtifact(r.Artifacts),
	}
	if r.Bundle != "" {
		o.BundlePath = filepath.Join(outDir, r.Bundle)
	}
	if r.Statement != "" {
		o.StatementPath = filepath.Join(outDir, r.Statement)
	}
	return o
}

// signOnClient checks the agent's statement and signs it with the workflow's signer, the
// bundle taking the statement's place in the output directory.
func signOnClient(ctx context.Context, in *buildInputs, st *agent.JobStatus, o *build.Outcome, signer provenance.Signer) error {
	if o.StatementPath == "" {
		return fmt.Errorf("job %s: the agent returned no unsigned statement to sign", st.ID)
	}
	stmt, err := os.ReadFile(o.StatementPath)
	if err != nil {
		return err
	}
	if err := checkAgentStatement(stmt, in, o); err != nil {
		return fmt.Errorf("job %s: not signing the agent's statement: %w", st.ID, err)
	}
	bundle, err := signer.SignStatement(ctx, stmt)
	if err != nil {
		return fmt.Errorf("signing the provenance: %w", err)
	}
	bundlePath := filepath.Join(o.ArtifactDir, build.BundleName)
	if err := atomicfile.WriteFile(bundlePath, bundle, 0o644); err != nil {
		return err
	}
	if err := os.Remove(o.StatementPath); err != nil {
		return err
	}
	o.BundlePath, o.StatementPath = bundlePath, ""
	return nil
}

// checkAgentStatement refuses to sign a statement that is not this run's build of the
// files received: it must parse, agree with its own manifest and result record, name this
// workflow run as its invocation (the verifier ties the evidence to the signing run
// through it), the job's command, repository, ref and commit, and have as subjects
// exactly the artifacts in the output directory, by their digests as read here.
func checkAgentStatement(stmt []byte, in *buildInputs, o *build.Outcome) error {
	p, err := provenance.ParseStatement(stmt)
	if err != nil {
		return err
	}
	m, err := job.ParseManifest(p.Manifest)
	if err != nil {
		return err
	}
	res, err := job.ParseResult(p.Result)
	if err != nil {
		return err
	}
	if err := p.CheckAgainstManifest(m, res); err != nil {
		return err
	}
	switch {
	case p.InvocationID != in.wc.invocation():
		return fmt.Errorf("its invocation id is %q, this run is %q", p.InvocationID, in.wc.invocation())
	case !slices.Equal(m.Command, in.spec.Command):
		return fmt.Errorf("its command is %q, the job's is %q", m.Command, in.spec.Command)
	case m.Source.Repository != in.spec.Repository || m.Source.Ref != in.spec.Ref:
		return fmt.Errorf("its source is %s at %s, the job's is %s at %s", m.Source.Repository, m.Source.Ref, in.spec.Repository, in.spec.Ref)
	case res.SourceCommit != in.wc.sha:
		return fmt.Errorf("it attests commit %q, the workflow runs for commit %s", res.SourceCommit, in.wc.sha)
	}
	return checkSubjects(p.Subjects, o)
}

// checkSubjects compares the statement's subjects with the artifacts received, hashed
// here: the same names, the same digests.
func checkSubjects(subjects map[string]string, o *build.Outcome) error {
	received := map[string]string{}
	files := o.Artifacts
	if o.Checksums != nil {
		files = append(slices.Clip(files), *o.Checksums)
	}
	for _, x := range files {
		if x.Path == build.BundleName {
			return fmt.Errorf("an artifact is named %s, like the provenance bundle", build.BundleName)
		}
		sum, _, err := fileio.SHA256(filepath.Join(o.ArtifactDir, filepath.FromSlash(x.Path)))
		if err != nil {
			return fmt.Errorf("artifact %s: %w", x.Path, err)
		}
		received[x.Path] = sum
	}
	for name, sum := range subjects {
		if got, ok := received[name]; !ok || got != sum {
			return fmt.Errorf("subject %s (sha256 %s) is not an artifact received (sha256 %q)", name, sum, got)
		}
	}
	for name, sum := range received {
		if _, ok := subjects[name]; !ok {
			return fmt.Errorf("artifact %s (sha256 %s) is not a subject of the statement", name, sum)
		}
	}
	return nil
}
