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
	"path/filepath"
	"strings"
	"time"

	"github.com/sethvargo/go-githubactions"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/kds"
	"github.com/cloche-dev/cloche/build"
	guestimage "github.com/cloche-dev/cloche/image/guest"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/release"
	"github.com/cloche-dev/cloche/source"
)

// BuildSetup is what the CLI resolves on the runner host for the build action: the TEE,
// the guest and toolchain images (inputs may name them; defaults come from cloche's state
// directory) and the signing key for `signing: key`.
type BuildSetup struct {
	ResolveTEE        func(input string) (attest.TEE, error)
	ResolveGuestImage func(ctx context.Context, input string) (string, error)
	// FetchGuestRelease fetches and checks a published guest image release (input
	// guest-image-release) and returns its directory.
	FetchGuestRelease func(ctx context.Context, repo, tag, trustedRoot, token string) (string, error)
	ResolveToolchain  func(ctx context.Context, input string) (string, error)
	// Firmware returns the -bios image for a hardware TEE ("" for sim); KDS completes SNP
	// evidence (nil: build's default).
	Firmware func(attest.TEE) string
	KDS      *kds.Client
	// DefaultKey is the key used for `signing: key` without a `key` input.
	DefaultKey string
	SimDir     string
	Version    string
	Accel      string
	// QEMU is the QEMU binary (empty: vmm.DefaultQEMU from PATH); TDX needs QEMU 10.1 or
	// later, which hosts often install outside PATH.
	QEMU string
}

// BuildResult is what the build action produced.
type BuildResult struct {
	Outcome    *build.Outcome
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

func runBuild(ctx context.Context, r Runner, a *githubactions.Action, setup BuildSetup) (*BuildResult, error) {
	log := r.logger()
	if err := requireFileCommands(a); err != nil {
		return nil, err
	}
	wc, err := readWorkflowContext(a)
	if err != nil {
		return nil, err
	}

	// Inputs.
	run := input(a, "run")
	if run == "" {
		return nil, fmt.Errorf("%w: input run (the build command) is required", ErrInput)
	}
	srcDir := input(a, "source")
	if srcDir == "" {
		srcDir = "."
	}
	timeout := build.DefaultTimeout
	if v := input(a, "timeout"); v != "" {
		if timeout, err = time.ParseDuration(v); err != nil || timeout < build.MinTimeout {
			return nil, fmt.Errorf("%w: input timeout is %q, expected a duration such as 10m", ErrInput, v)
		}
	}
	tee, err := setup.ResolveTEE(defaulted(input(a, "tee"), "auto"))
	if err != nil {
		return nil, fmt.Errorf("%w: input tee: %w", ErrInput, err)
	}
	tag := input(a, "release")
	if tag == "" {
		tag = pushedTag(wc.ref)
	}
	pushAttestation, err := boolInput(a, "push-attestation")
	if err != nil {
		return nil, err
	}
	replace, err := boolInput(a, "replace-assets")
	if err != nil {
		return nil, err
	}
	token := input(a, "github-token")
	if token != "" {
		a.AddMask(token)
	}
	if (tag != "" || pushAttestation) && token == "" {
		return nil, fmt.Errorf("%w: publishing needs input github-token (default: the job's GITHUB_TOKEN)", ErrInput)
	}
	signer, err := newSigner(a, r, setup)
	if err != nil {
		return nil, err
	}
	outDir := input(a, "out")
	if outDir == "" {
		tmp := defaulted(a.Getenv("RUNNER_TEMP"), os.TempDir())
		if outDir, err = os.MkdirTemp(tmp, "cloche-out-"); err != nil {
			return nil, err
		}
	}

	// The commit's objects go to the guest, which attests the commit only if its tree is
	// exactly the source it builds (build.Run checks that first, before the VM starts).
	var tagRef string
	if strings.HasPrefix(wc.ref, "refs/tags/") {
		tagRef = wc.ref
	}
	gitObjects, err := source.ReadGitObjects(ctx, srcDir, wc.sha, tagRef)
	if errors.Is(err, source.ErrNoTag) {
		a.Warningf("the tag %s is not in the checkout (fetch it, e.g. actions/checkout with fetch-tags): the build attests the commit only, and only the signing certificate's ref names the tag", tagRef)
		gitObjects, err = source.ReadGitObjects(ctx, srcDir, wc.sha, "")
	}
	if err != nil {
		return nil, fmt.Errorf("%w: the source %s must be in a checkout of commit %s (actions/checkout first): %w", ErrInput, srcDir, wc.sha, err)
	}
	if err := build.CheckCommit(srcDir, wc.ref, gitObjects); err != nil {
		return nil, err
	}

	guestDir, err := resolveGuestImage(ctx, a, setup)
	if err != nil {
		return nil, fmt.Errorf("guest image: %w", err)
	}
	toolchain, err := setup.ResolveToolchain(ctx, input(a, "toolchain"))
	if err != nil {
		return nil, fmt.Errorf("toolchain image: %w", err)
	}

	if tee == attest.TEESim {
		a.Warningf("SIMULATED TEE: the runner host plays the secure processor; this evidence proves nothing about the host")
	}
	// The build log, live and grouped, with workflow commands off while it streams.
	a.Group(fmt.Sprintf("cloche: %s (in a confidential VM, TEE %s)", run, tee))
	resume := stopCommands(r.Stdout)
	outcome, berr := build.Run(ctx, build.Options{
		SourceDir:      srcDir,
		Command:        []string{"sh", "-c", run},
		Artifacts:      listInput(a, "artifacts"),
		OutDir:         outDir,
		TEE:            tee,
		GuestImageDir:  guestDir,
		ToolchainImage: toolchain,
		SimDir:         setup.SimDir,
		Firmware:       firmwareFor(setup, tee),
		KDS:            setup.KDS,
		Signer:         signer,
		Timeout:        timeout,
		Accel:          defaulted(setup.Accel, "auto"),
		QEMU:           setup.QEMU,
		InvocationID:   wc.invocation(),
		Repository:     wc.repoURL(),
		Ref:            wc.ref,
		Git:            gitObjects,
		Console:        r.Stdout,
		Logger:         log,
		Version:        setup.Version,
	})
	fmt.Fprint(r.Stdout, resume)
	a.EndGroup()
	if berr != nil {
		return nil, berr
	}
	if outcome.Commit != wc.sha {
		return nil, fmt.Errorf("the guest attested commit %q, but the workflow runs for commit %s", outcome.Commit, wc.sha)
	}
	res := &BuildResult{Outcome: outcome, Invocation: wc.invocation()}

	// Outputs before publishing, so a failed upload still leaves them to later steps.
	type artifactOut struct {
		Path   string `json:"path"`
		SHA256 string `json:"sha256"`
	}
	var arts []artifactOut
	for _, x := range outcome.Artifacts {
		arts = append(arts, artifactOut{Path: filepath.Join(outcome.ArtifactDir, filepath.FromSlash(x.Path)), SHA256: x.SHA256})
	}
	artsJSON, err := json.Marshal(arts)
	if err != nil {
		return nil, err
	}
	a.SetOutput("bundle-path", outcome.BundlePath)
	a.SetOutput("artifacts", string(artsJSON))
	a.SetOutput("tee", string(outcome.TEE))
	a.SetOutput("measurement", outcome.Measurement)

	if tag != "" || pushAttestation {
		gh, err := release.NewGitHubClient(defaulted(a.Getenv("GITHUB_API_URL"), "https://api.github.com"), token, r.HTTPClient)
		if err != nil {
			return nil, err
		}
		rc, err := release.NewClient(gh, wc.repository, withLogger(r.Release, log))
		if err != nil {
			return nil, err
		}
		if tag != "" {
			if res.Release, res.Published, err = publish(ctx, rc, tag, outcome, replace); err != nil {
				return nil, err
			}
			a.SetOutput("release-url", res.Release.HTMLURL)
		}
		if pushAttestation {
			b, err := os.ReadFile(outcome.BundlePath)
			if err != nil {
				return nil, err
			}
			id, err := rc.PushAttestation(ctx, b)
			if err != nil {
				return nil, err
			}
			a.Infof("attestation %d stored in %s", id, wc.repository)
			// As actions/attest-build-provenance names them.
			a.SetOutput("attestation-id", fmt.Sprint(id))
			a.SetOutput("attestation-url", fmt.Sprintf("%s/%s/attestations/%d",
				strings.TrimSuffix(defaulted(a.Getenv("GITHUB_SERVER_URL"), "https://github.com"), "/"), wc.repository, id))
		}
	}
	a.AddStepSummary(buildSummary(wc, outcome, res))
	return res, nil
}

func withLogger(o release.Options, l *slog.Logger) release.Options {
	if o.Logger == nil {
		o.Logger = l
	}
	return o
}

// publish uploads the artifacts (flat, by base name) and then the bundle.
func publish(ctx context.Context, rc *release.Client, tag string, o *build.Outcome, replace bool) (*release.Release, []release.Outcome, error) {
	var files []release.File
	seen := map[string]string{}
	for _, x := range o.Artifacts {
		name := path.Base(x.Path)
		if prev, dup := seen[name]; dup {
			return nil, nil, fmt.Errorf("%w: artifacts %s and %s would both be release asset %s", ErrInput, prev, x.Path, name)
		}
		seen[name] = x.Path
		files = append(files, release.File{Name: name, Path: filepath.Join(o.ArtifactDir, filepath.FromSlash(x.Path))})
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

func newSigner(a *githubactions.Action, r Runner, setup BuildSetup) (provenance.Signer, error) {
	switch mode := defaulted(input(a, "signing"), "keyless"); mode {
	case "keyless":
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
				if a.Getenv("ACTIONS_ID_TOKEN_REQUEST_URL") == "" {
					return "", errors.New("the job has no OIDC token: keyless signing needs `permissions: id-token: write` (or use signing: key)")
				}
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
	case "key":
		p := defaulted(input(a, "key"), setup.DefaultKey)
		if p == "" {
			return nil, fmt.Errorf("%w: signing: key needs input key (a PEM private key file on the runner host)", ErrInput)
		}
		return provenance.LoadKeySigner(p)
	default:
		return nil, fmt.Errorf("%w: input signing is %q, expected keyless or key", ErrInput, mode)
	}
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
	for _, x := range o.Artifacts {
		fmt.Fprintf(&b, "| %s | `%s` | %d |\n", mdEscape(x.Path), x.SHA256, x.Size)
	}
	fmt.Fprintf(&b, "| %s | provenance (Sigstore bundle) | |\n", build.BundleName)
	return b.String()
}

func firmwareFor(s BuildSetup, tee attest.TEE) string {
	if s.Firmware == nil {
		return ""
	}
	return s.Firmware(tee)
}

func defaulted(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// resolveGuestImage is the guest image to launch: a published release (guest-image-release,
// fetched and checked), a directory (guest-image), or the host's own build.
func resolveGuestImage(ctx context.Context, a *githubactions.Action, setup BuildSetup) (string, error) {
	tag := input(a, "guest-image-release")
	if tag == "" {
		return setup.ResolveGuestImage(ctx, input(a, "guest-image"))
	}
	if input(a, "guest-image") != "" {
		return "", fmt.Errorf("%w: inputs guest-image and guest-image-release: give one", ErrInput)
	}
	repo := defaulted(input(a, "guest-image-repository"), guestimage.DefaultReleaseRepository)
	return setup.FetchGuestRelease(ctx, repo, tag, input(a, "trusted-root"), input(a, "github-token"))
}
