package ghaction

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path"
	"strings"
	"time"

	"github.com/sethvargo/go-githubactions"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/build"
	"github.com/cloche-dev/cloche/internal/host"
	"github.com/cloche-dev/cloche/internal/release"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/source"
)

// BuildSetup is the runner host as the CLI configures it for the build action: the state
// directory, accelerator, QEMU, version and logger. The action's inputs (tee, guest-image,
// guest-image-release, toolchain, signing, key) fill in the rest before host.New.
type BuildSetup struct {
	Host host.Config
}

// BuildResult is what the build action produced.
type BuildResult struct {
	Outcome *build.Outcome
	// Subjects are the artifacts the action published and reported: every one the
	// statement names, or those the subject inputs selected.
	Subjects   []job.Artifact
	Release    *release.Release
	Published  []release.Outcome
	Invocation string
}

// workflowContext is the part of the GitHub context that goes into the manifest.
type workflowContext struct {
	server, repository, ref, sha, workflowRef string
	runID, runAttempt                         int64
}

func (w *workflowContext) repoURL() string { return w.server + "/" + w.repository }
func (w *workflowContext) invocation() string {
	// The form Fulcio writes into the certificate's run invocation extension: the verifier
	// ties the evidence to the signing run through it.
	return fmt.Sprintf("%s/%s/actions/runs/%d/attempts/%d", w.server, w.repository, w.runID, w.runAttempt)
}

func readWorkflowContext(a *githubactions.Action) (*workflowContext, error) {
	c, err := a.Context()
	if err != nil {
		return nil, fmt.Errorf("%w: reading the workflow context: %w", ErrInput, err)
	}
	w := &workflowContext{server: strings.TrimSuffix(c.ServerURL, "/"), repository: c.Repository, ref: c.Ref, sha: c.SHA,
		workflowRef: a.Getenv("GITHUB_WORKFLOW_REF"), runID: c.RunID, runAttempt: c.RunAttempt}
	switch {
	case w.repository == "" || strings.Count(w.repository, "/") != 1:
		return nil, fmt.Errorf("%w: GITHUB_REPOSITORY is %q, expected OWNER/REPO", ErrInput, w.repository)
	case len(w.sha) != 40:
		return nil, fmt.Errorf("%w: GITHUB_SHA is %q, expected a 40-digit commit id", ErrInput, w.sha)
	case w.ref == "":
		return nil, fmt.Errorf("%w: GITHUB_REF is not set", ErrInput)
	case w.runID <= 0 || w.runAttempt <= 0:
		return nil, fmt.Errorf("%w: GITHUB_RUN_ID and GITHUB_RUN_ATTEMPT must be set", ErrInput)
	}
	return w, nil
}

// Build is the build action's entry point. It reports failures as an error annotation and
// returns them.
func Build(ctx context.Context, r Runner, setup BuildSetup) (*BuildResult, error) {
	a := r.action()
	res, err := runBuild(ctx, r, a, setup)
	if err != nil {
		a.Errorf("cloche build failed: %v", err)
	}
	return res, err
}

// buildInputs are the build action's inputs, read and checked before anything runs.
type buildInputs struct {
	wc              *workflowContext
	spec            job.Spec
	srcDir, outDir  string
	tag, token      string
	pushAttestation bool
	replace         bool
	subjects        subjectSelection
	showSummary     bool
}

func runBuild(ctx context.Context, r Runner, a *githubactions.Action, setup BuildSetup) (*BuildResult, error) {
	in, err := readBuildInputs(a)
	if err != nil {
		return nil, err
	}
	signer, err := newSigner(a, r)
	if err != nil {
		return nil, err
	}
	if in.spec.Git, err = readCommit(ctx, a, in); err != nil {
		return nil, err
	}
	outcome, err := runJob(ctx, r, a, setup, in, signer)
	if err != nil {
		return nil, err
	}
	subjects, err := selectSubjects(outcome, in.subjects)
	if err != nil {
		return nil, err
	}
	res := &BuildResult{Outcome: outcome, Subjects: subjects, Invocation: in.wc.invocation()}
	// Outputs before publishing, so a failed upload still leaves them to later steps.
	if err := setBuildOutputs(a, res); err != nil {
		return nil, err
	}
	if err := publishBuild(ctx, r, a, in, res); err != nil {
		return nil, err
	}
	if in.showSummary {
		a.AddStepSummary(buildSummary(in.wc, outcome, res))
	}
	return res, nil
}

// runJob builds through the agent when one is configured on the host, else in a VM of
// its own.
func runJob(ctx context.Context, r Runner, a *githubactions.Action, setup BuildSetup, in *buildInputs, signer provenance.Signer) (*build.Outcome, error) {
	if socket := agentSocket(a); socket != "" {
		return buildOnAgent(ctx, r, a, socket, in, signer)
	}
	h, err := newHost(ctx, a, setup, signer)
	if err != nil {
		return nil, err
	}
	return buildInVM(ctx, r, a, h, in)
}

// readBuildInputs reads the workflow context and the inputs that describe the job and its
// publishing, refusing bad ones before any image is built or VM started.
func readBuildInputs(a *githubactions.Action) (*buildInputs, error) {
	if err := requireFileCommands(a); err != nil {
		return nil, err
	}
	wc, err := readWorkflowContext(a)
	if err != nil {
		return nil, err
	}
	in := &buildInputs{wc: wc, srcDir: defaulted(input(a, "source"), "."), tag: input(a, "release"), token: input(a, "github-token")}
	run := input(a, "run")
	if run == "" {
		return nil, fmt.Errorf("%w: input run (the build command) is required", ErrInput)
	}
	patterns, sel, err := readSubjectInputs(a)
	if err != nil {
		return nil, err
	}
	in.subjects = sel
	in.spec = job.Spec{Command: []string{"sh", "-c", run}, Artifacts: patterns,
		TEE: attest.TEE(defaulted(input(a, "tee"), "auto")), InvocationID: wc.invocation(), Repository: wc.repoURL(), Ref: wc.ref}
	in.spec.SetTimeout(build.DefaultTimeout)
	in.spec.Deps = input(a, "deps")
	if err := build.CheckDeps(in.spec, in.srcDir); err != nil {
		return nil, fmt.Errorf("%w: input deps: %w", ErrInput, err)
	}
	if v := input(a, "timeout"); v != "" {
		timeout, err := time.ParseDuration(v)
		if err != nil || timeout < build.MinTimeout {
			return nil, fmt.Errorf("%w: input timeout is %q, expected a duration such as 10m", ErrInput, v)
		}
		in.spec.SetTimeout(timeout)
	}
	if in.tag == "" {
		in.tag = pushedTag(wc.ref)
	}
	if in.pushAttestation, err = boolInput(a, "push-attestation"); err != nil {
		return nil, err
	}
	if in.replace, err = boolInput(a, "replace-assets"); err != nil {
		return nil, err
	}
	if in.showSummary, err = boolInputDefault(a, "show-summary", true); err != nil {
		return nil, err
	}
	if in.token != "" {
		a.AddMask(in.token)
	}
	if (in.tag != "" || in.pushAttestation) && in.token == "" {
		return nil, fmt.Errorf("%w: publishing needs input github-token (default: the job's GITHUB_TOKEN)", ErrInput)
	}
	if in.outDir = input(a, "out"); in.outDir == "" {
		tmp := defaulted(a.Getenv("RUNNER_TEMP"), os.TempDir())
		if in.outDir, err = os.MkdirTemp(tmp, "cloche-out-"); err != nil {
			return nil, err
		}
	}
	return in, nil
}

// readCommit reads the commit's objects for the guest, which attests the commit only if
// its tree is exactly the source it builds (checked here too, before the VM starts).
func readCommit(ctx context.Context, a *githubactions.Action, in *buildInputs) (*source.GitObjects, error) {
	var tagRef string
	if strings.HasPrefix(in.wc.ref, "refs/tags/") {
		tagRef = in.wc.ref
	}
	gitObjects, err := source.ReadGitObjects(ctx, in.srcDir, in.wc.sha, tagRef)
	if errors.Is(err, source.ErrNoTag) {
		a.Warningf("the tag %s is not in the checkout (fetch it, e.g. actions/checkout with fetch-tags): the build attests the commit only, and only the signing certificate's ref names the tag", tagRef)
		gitObjects, err = source.ReadGitObjects(ctx, in.srcDir, in.wc.sha, "")
	}
	if err != nil {
		return nil, fmt.Errorf("%w: the source %s must be in a checkout of commit %s (actions/checkout first): %w", ErrInput, in.srcDir, in.wc.sha, err)
	}
	if err := build.CheckCommit(in.srcDir, in.wc.ref, gitObjects); err != nil {
		return nil, err
	}
	return gitObjects, nil
}

// newHost configures the runner host from setup and the host inputs: the TEE, the guest
// image (a directory, a published release, or the host's own build), the toolchain and
// the signer.
func newHost(ctx context.Context, a *githubactions.Action, setup BuildSetup, signer provenance.Signer) (*host.Host, error) {
	c := setup.Host
	c.TEE = attest.TEE(defaulted(input(a, "tee"), "auto"))
	c.GuestImage = input(a, "guest-image")
	c.Toolchain = input(a, "toolchain")
	if signer != nil {
		c.Signer = signer
	} else {
		c.SigningKey = input(a, "key")
	}
	if tag := input(a, "guest-image-release"); tag != "" {
		c.GuestRelease = host.GuestRelease{Tag: tag, Repository: input(a, "guest-image-repository"),
			TrustedRoot: input(a, "trusted-root"), Token: input(a, "github-token"), APIURL: a.Getenv("GITHUB_API_URL")}
	}
	h, err := host.New(ctx, c)
	if err != nil {
		return nil, inputConfigError(err)
	}
	if h.TEE() == attest.TEESim {
		a.Warningf("SIMULATED TEE: the runner host plays the secure processor; this evidence proves nothing about the host")
	}
	return h, nil
}

// hostInputs are the inputs that set a host.Config field.
var hostInputs = map[string]string{
	"TEE": "tee", "GuestImage": "guest-image", "GuestRelease": "guest-image-release/guest-image-repository",
	"GuestImage,GuestRelease.Tag": "guest-image and guest-image-release", "GuestRelease.TrustedRoot": "trusted-root",
	"Toolchain": "toolchain", "SigningKey": "key",
}

// inputConfigError names the input behind a host configuration error.
func inputConfigError(err error) error {
	var ce *host.ConfigError
	if !errors.As(err, &ce) || hostInputs[ce.Field] == "" {
		return err
	}
	named := ce.Named("input " + hostInputs[ce.Field])
	if errors.Is(err, host.ErrUnavailable) {
		return named
	}
	return fmt.Errorf("%w: %w", ErrInput, named)
}

// buildInVM runs the job on h with the build log streaming live and grouped, workflow
// commands off while it streams, and checks the guest attested the workflow's commit.
func buildInVM(ctx context.Context, r Runner, a *githubactions.Action, h *host.Host, in *buildInputs) (*build.Outcome, error) {
	a.Group(fmt.Sprintf("cloche: %s (in a confidential VM, TEE %s)", in.spec.Command[2], h.TEE()))
	resume := stopCommands(r.Stdout)
	outcome, err := h.Run(ctx, host.Job{Spec: in.spec, SourceDir: in.srcDir, OutDir: in.outDir, Console: r.Stdout, Logger: r.logger()})
	fmt.Fprint(r.Stdout, resume)
	a.EndGroup()
	if err != nil {
		return nil, err
	}
	if outcome.Commit != in.wc.sha {
		return nil, fmt.Errorf("the guest attested commit %q, but the workflow runs for commit %s", outcome.Commit, in.wc.sha)
	}
	return outcome, nil
}

// setBuildOutputs sets the step's outputs: the bundle, the subjects with digests, the TEE
// and the measurement.
func setBuildOutputs(a *githubactions.Action, res *BuildResult) error {
	type artifactOut struct {
		Path   string `json:"path"`
		SHA256 string `json:"sha256"`
	}
	outcome := res.Outcome
	arts := []artifactOut{}
	for _, x := range res.Subjects {
		arts = append(arts, artifactOut{Path: artifactPath(outcome, x), SHA256: x.SHA256})
	}
	artsJSON, err := json.Marshal(arts)
	if err != nil {
		return err
	}
	a.SetOutput("bundle-path", outcome.BundlePath)
	a.SetOutput("artifacts", string(artsJSON))
	a.SetOutput("tee", string(outcome.TEE))
	a.SetOutput("measurement", outcome.Measurement)
	a.SetOutput("toolchain-digest", outcome.ToolchainDigest)
	return nil
}

// publishBuild uploads to the release and stores the attestation, as the inputs ask.
func publishBuild(ctx context.Context, r Runner, a *githubactions.Action, in *buildInputs, res *BuildResult) error {
	if in.tag == "" && !in.pushAttestation {
		return nil
	}
	gh, err := release.NewGitHubClient(defaulted(a.Getenv("GITHUB_API_URL"), release.DefaultAPIURL), in.token, r.HTTPClient)
	if err != nil {
		return err
	}
	rc, err := release.NewClient(gh, in.wc.repository, withLogger(r.Release, r.logger()))
	if err != nil {
		return err
	}
	if in.tag != "" {
		if res.Release, res.Published, err = publish(ctx, rc, in.tag, res.Outcome, res.Subjects, in.replace); err != nil {
			return err
		}
		a.SetOutput("release-url", res.Release.HTMLURL)
	}
	if in.pushAttestation {
		return pushAttestation(ctx, a, rc, in.wc, res.Outcome.BundlePath)
	}
	return nil
}

// pushAttestation stores the bundle with the repository's attestations.
func pushAttestation(ctx context.Context, a *githubactions.Action, rc *release.Client, wc *workflowContext, bundlePath string) error {
	b, err := os.ReadFile(bundlePath)
	if err != nil {
		return err
	}
	id, err := rc.PushAttestation(ctx, b)
	if err != nil {
		return err
	}
	a.Infof("attestation %d stored in %s", id, wc.repository)
	// As actions/attest-build-provenance names them.
	a.SetOutput("attestation-id", fmt.Sprint(id))
	a.SetOutput("attestation-url", fmt.Sprintf("%s/%s/attestations/%d",
		strings.TrimSuffix(defaulted(a.Getenv("GITHUB_SERVER_URL"), "https://github.com"), "/"), wc.repository, id))
	return nil
}

func withLogger(o release.Options, l *slog.Logger) release.Options {
	if o.Logger == nil {
		o.Logger = l
	}
	return o
}

// publish uploads the subjects (flat, by base name) and then the bundle.
func publish(ctx context.Context, rc *release.Client, tag string, o *build.Outcome, subjects []job.Artifact, replace bool) (*release.Release, []release.Outcome, error) {
	var files []release.File
	seen := map[string]string{}
	for _, x := range subjects {
		name := path.Base(x.Path)
		if prev, dup := seen[name]; dup {
			return nil, nil, fmt.Errorf("%w: artifacts %s and %s would both be release asset %s", ErrInput, prev, x.Path, name)
		}
		seen[name] = x.Path
		files = append(files, release.File{Name: name, Path: artifactPath(o, x)})
	}
	if _, dup := seen[build.BundleName]; dup {
		return nil, nil, fmt.Errorf("%w: an artifact is named %s, like the provenance bundle", ErrInput, build.BundleName)
	}
	rel, err := rc.EnsureRelease(ctx, tag)
	if err != nil {
		return nil, nil, err
	}
	out, err := rc.Publish(ctx, rel, files, replace)
	if err != nil {
		return nil, nil, err
	}
	// A re-run rebuilds the same (reproducible) artifacts but signs a new bundle, for a new
	// run attempt. When every artifact was already there, the release's bundle is kept if
	// it names all of them, so a re-run uploads nothing; the new bundle stays in the
	// job's output.
	unchanged := true
	for _, x := range out {
		unchanged = unchanged && x.Action == "unchanged"
	}
	if unchanged {
		if ok, err := releaseBundleCovers(ctx, rc, rel, out); err != nil {
			return nil, nil, err
		} else if ok {
			return rel, append(out, release.Outcome{Name: build.BundleName, Action: "unchanged"}), nil
		}
	}
	bout, err := rc.Publish(ctx, rel, []release.File{{Name: build.BundleName, Path: o.BundlePath}}, replace)
	if err != nil {
		return nil, nil, err
	}
	return rel, append(out, bout...), nil
}

// releaseBundleCovers says whether the release already holds a bundle whose statement
// names every one of the given artifacts as a subject. It reads the statement without
// verifying it: it only decides whether to upload, and verifiers check the bundle anyway.
func releaseBundleCovers(ctx context.Context, rc *release.Client, rel *release.Release, arts []release.Outcome) (bool, error) {
	assets, err := rc.ListAssets(ctx, rel)
	if err != nil {
		return false, err
	}
	found := false
	for _, a := range assets {
		found = found || (a.Name == build.BundleName && (a.State == "" || a.State == "uploaded"))
	}
	if !found {
		return false, nil
	}
	dir, err := os.MkdirTemp("", "cloche-bundle-")
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(dir)
	got, err := rc.Download(ctx, rel, dir, []string{build.BundleName})
	if err != nil {
		return false, err
	}
	b, err := os.ReadFile(got[0].Path)
	if err != nil {
		return false, err
	}
	var bundle struct {
		DSSEEnvelope struct {
			Payload []byte `json:"payload"`
		} `json:"dsseEnvelope"`
	}
	var stmt struct {
		Subject []struct {
			Digest map[string]string `json:"digest"`
		} `json:"subject"`
	}
	if json.Unmarshal(b, &bundle) != nil || json.Unmarshal(bundle.DSSEEnvelope.Payload, &stmt) != nil {
		return false, nil
	}
	subjects := map[string]bool{}
	for _, s := range stmt.Subject {
		subjects[s.Digest["sha256"]] = true
	}
	for _, x := range arts {
		if !subjects[x.SHA256] {
			return false, nil
		}
	}
	return true, nil
}

// newSigner is the keyless signer for `signing: keyless` (the default), or nil for
// `signing: key`, where the host signs with its key (input key, default the host's).
func newSigner(a *githubactions.Action, r Runner) (provenance.Signer, error) {
	switch mode := defaulted(input(a, "signing"), "keyless"); mode {
	case "keyless":
		return keylessSigner(a, r)
	case "key":
		return nil, nil
	default:
		return nil, fmt.Errorf("%w: input signing is %q, expected keyless or key", ErrInput, mode)
	}
}

func keylessSigner(a *githubactions.Action, r Runner) (provenance.Signer, error) {
	// Fail before the build, not after it: the token is only fetched at signing time.
	if a.Getenv("ACTIONS_ID_TOKEN_REQUEST_URL") == "" || a.Getenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN") == "" {
		return nil, fmt.Errorf("%w: the job has no OIDC token: keyless signing needs `permissions: id-token: write` (or use signing: key)", ErrInput)
	}
	var tsas []string
	if u := input(a, "tsa-url"); u != "" {
		tsas = []string{u}
	}
	rekor := input(a, "rekor-url")
	s, err := provenance.NewKeylessSigner(provenance.KeylessOptions{
		FulcioURL:         input(a, "fulcio-url"),
		RekorURL:          rekor,
		NoTransparencyLog: rekor == "none",
		TSAURLs:           tsas,
		Token: func(ctx context.Context, audience string) (string, error) {
			// Not masked with ::add-mask::: this runs while workflow commands are
			// stopped (the build log streams), where the command would print the
			// token instead. The token is never written anywhere.
			return a.GetIDToken(ctx, audience)
		},
		Transport: transportOf(r),
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInput, err)
	}
	return s, nil
}

func transportOf(r Runner) http.RoundTripper {
	if r.HTTPClient != nil {
		return r.HTTPClient.Transport
	}
	return nil
}

func buildSummary(wc *workflowContext, o *build.Outcome, res *BuildResult) string {
	var b strings.Builder
	tee := string(o.TEE)
	if o.TEE == attest.TEESim {
		tee += " (SIMULATED: no hardware guarantee)"
	}
	fmt.Fprintf(&b, "### cloche: attested build\n\n")
	fmt.Fprintf(&b, "| | |\n|---|---|\n| TEE | %s |\n| measurement | `%s` |\n| source commit | `%s` |\n| source tree | `%s` |\n| run | %s |\n",
		mdEscape(tee), o.Measurement, wc.sha, o.SourceTree, mdEscape(res.Invocation))
	if res.Release != nil {
		fmt.Fprintf(&b, "| release | %s |\n", mdEscape(res.Release.HTMLURL))
	}
	fmt.Fprintf(&b, "\n| artifact | sha256 | size |\n|---|---|---|\n")
	for _, x := range res.Subjects {
		fmt.Fprintf(&b, "| %s | `%s` | %d |\n", mdEscape(x.Path), x.SHA256, x.Size)
	}
	fmt.Fprintf(&b, "| %s | provenance (Sigstore bundle) | |\n", build.BundleName)
	return b.String()
}

func defaulted(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
