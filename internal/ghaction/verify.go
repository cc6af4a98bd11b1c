package ghaction

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/sethvargo/go-githubactions"

	"github.com/cloche-dev/cloche/attest/verifier"
	"github.com/cloche-dev/cloche/internal/build"
	"github.com/cloche-dev/cloche/internal/fileio"
	"github.com/cloche-dev/cloche/internal/release"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/reference"
	"github.com/cloche-dev/cloche/verify"
)

// ErrVerifyFailed: at least one artifact did not verify.
var ErrVerifyFailed = errors.New("verification failed")

// ArtifactResult is the verdict on one artifact.
type ArtifactResult struct {
	Name   string
	Path   string
	Result *verify.Result // nil when it failed
	Err    error
}

// VerifySetup carries what the CLI resolves for the verify action.
type VerifySetup struct {
	// TUFCacheDir caches Sigstore's public-good root when no trusted-root input is given.
	TUFCacheDir string
}

// Verify is the verify action's entry point: it verifies a release's artifacts (or given
// files) against the release's provenance bundle, writes a step summary table and fails on
// any failure.
func Verify(ctx context.Context, r Runner, setup VerifySetup) ([]ArtifactResult, error) {
	a := r.action()
	res, err := runVerify(ctx, r, a, setup)
	if err != nil {
		a.Errorf("cloche verify: %v", err)
	}
	return res, err
}

func runVerify(ctx context.Context, r Runner, a *githubactions.Action, setup VerifySetup) ([]ArtifactResult, error) {
	if err := requireFileCommands(a); err != nil {
		return nil, err
	}
	opts, err := verifyOptionsFromInputs(a, setup)
	if err != nil {
		return nil, err
	}
	artifacts := listInput(a, "artifacts")
	bundlePath := input(a, "bundle")
	repo := defaulted(input(a, "repository"), a.Getenv("GITHUB_REPOSITORY"))
	tag := defaulted(input(a, "tag"), pushedTag(a.Getenv("GITHUB_REF")))

	// Without local files, the release is the source of both artifacts and bundle.
	if len(artifacts) == 0 || bundlePath == "" {
		if tag == "" {
			return nil, fmt.Errorf("%w: input tag is required to verify a release (or give artifacts and bundle)", ErrInput)
		}
		token := input(a, "github-token")
		if token != "" {
			a.AddMask(token)
		}
		dir, err := os.MkdirTemp(defaulted(a.Getenv("RUNNER_TEMP"), os.TempDir()), "cloche-verify-")
		if err != nil {
			return nil, err
		}
		got, err := DownloadRelease(ctx, defaulted(a.Getenv("GITHUB_API_URL"), "https://api.github.com"), token, repo, tag, dir, artifacts, r)
		if err != nil {
			return nil, err
		}
		bundlePath, artifacts = got.Bundle, got.Artifacts
	}
	if opts.Identity != nil && opts.Identity.SourceTag == "" && opts.Identity.SourceBranch == "" && tag != "" {
		// The release's tag is the ref the build must have run for.
		opts.Identity.SourceTag = tag
	}
	opts.BundlePath = bundlePath

	var results []ArtifactResult
	failed := 0
	for _, p := range artifacts {
		o := *opts
		o.Artifacts = []string{p}
		vr, err := verify.Verify(ctx, o)
		results = append(results, ArtifactResult{Name: filepath.Base(p), Path: p, Result: vr, Err: err})
		if err != nil {
			failed++
			a.Errorf("%s: FAILED: %v", filepath.Base(p), err)
		} else {
			for _, w := range vr.Warnings {
				a.Warningf("%s: %s", filepath.Base(p), w)
			}
			a.Infof("%s: PASSED: %s", filepath.Base(p), vr.Summary())
		}
	}
	a.AddStepSummary(verifySummary(repo, tag, results))
	if failed > 0 {
		return results, fmt.Errorf("%w: %d of %d artifact(s)", ErrVerifyFailed, failed, len(results))
	}
	a.SetOutput("verified", fmt.Sprint(len(results)))
	return results, setVerifyOutputs(a, results)
}

// setVerifyOutputs gives the next steps what was verified: the subjects (name and SHA-256),
// and the builder, TEE and measurement every artifact's provenance agreed on.
func setVerifyOutputs(a *githubactions.Action, results []ArtifactResult) error {
	type subject struct {
		Name   string `json:"name"`
		SHA256 string `json:"sha256"`
	}
	var subjects []subject
	var builder, tee, measurement string
	for i, r := range results {
		for _, art := range r.Result.Artifacts {
			subjects = append(subjects, subject{art.Path, art.SHA256})
		}
		if i == 0 {
			builder, tee, measurement = r.Result.BuilderID, string(r.Result.TEE), r.Result.Measurement
		} else if builder != r.Result.BuilderID || tee != string(r.Result.TEE) || measurement != r.Result.Measurement {
			builder, tee, measurement = "mixed", "mixed", "mixed" // artifacts of several builds
		}
	}
	b, err := json.Marshal(subjects)
	if err != nil {
		return err
	}
	a.SetOutput("subjects", string(b))
	a.SetOutput("builder-id", builder)
	a.SetOutput("tee", tee)
	a.SetOutput("measurement", measurement)
	return nil
}

// Downloaded is a release fetched for verification.
type Downloaded struct {
	Bundle    string
	Artifacts []string
}

// DownloadRelease fetches a release's bundle and artifacts (the named ones, or every asset
// that is not the bundle) into dir.
func DownloadRelease(ctx context.Context, apiURL, token, repo, tag, dir string, names []string, r Runner) (*Downloaded, error) {
	gh, err := release.NewGitHubClient(apiURL, token, r.HTTPClient)
	if err != nil {
		return nil, err
	}
	rc, err := release.NewClient(gh, repo, withLogger(r.Release, r.logger()))
	if err != nil {
		return nil, err
	}
	rel, err := rc.FindRelease(ctx, tag)
	if err != nil {
		return nil, err
	}
	var want []string
	for _, n := range names {
		want = append(want, filepath.Base(n))
	}
	if len(want) > 0 {
		want = append(want, build.BundleName)
	}
	files, err := rc.Download(ctx, rel, dir, want)
	if err != nil {
		return nil, err
	}
	out := &Downloaded{}
	for _, f := range files {
		if f.Name == build.BundleName {
			out.Bundle = f.Path
		} else {
			out.Artifacts = append(out.Artifacts, f.Path)
		}
	}
	if out.Bundle == "" {
		return nil, fmt.Errorf("%w: release %s of %s has no %s", release.ErrNotFound, tag, repo, build.BundleName)
	}
	if len(out.Artifacts) == 0 {
		return nil, fmt.Errorf("%w: release %s of %s has no artifacts besides the bundle", release.ErrNotFound, tag, repo)
	}
	return out, nil
}

// verifyOptionsFromInputs maps the verify action's inputs to verify.Options.
func verifyOptionsFromInputs(a *githubactions.Action, setup VerifySetup) (*verify.Options, error) {
	o := &verify.Options{ExpectedBuilderID: input(a, "builder-id"), ExpectedSourceCommit: input(a, "source-commit")}
	repo := defaulted(input(a, "repository"), a.Getenv("GITHUB_REPOSITORY"))
	sourceURI := input(a, "source-uri")
	if sourceURI == "" && repo != "" {
		host := strings.TrimPrefix(strings.TrimPrefix(defaulted(a.Getenv("GITHUB_SERVER_URL"), "https://github.com"), "https://"), "http://")
		sourceURI = host + "/" + repo
	}
	o.Identity = &verify.Identity{
		SourceURI:      sourceURI,
		SourceTag:      input(a, "source-tag"),
		SourceBranch:   input(a, "source-branch"),
		SignerWorkflow: input(a, "signer-workflow"),
	}
	if key := input(a, "key"); key != "" {
		pub, err := provenance.LoadPublicKey(key)
		if err != nil {
			return nil, fmt.Errorf("%w: input key: %w", ErrInput, err)
		}
		o.PublicKey = pub
		// A key-signed bundle binds no repository, branch or workflow (docs/design.md);
		// the tag is checked as the guest attested it.
		if input(a, "source-uri") != "" || o.Identity.SourceBranch != "" || o.Identity.SignerWorkflow != "" {
			return nil, fmt.Errorf("%w: inputs source-uri, source-branch and signer-workflow need keyless verification (no input key): a key-signed bundle does not bind them, the runner host writes them", ErrInput)
		}
		o.ExpectedSourceTag, o.Identity = o.Identity.SourceTag, nil
	} else {
		tm, err := verify.LoadTrustedRoot(input(a, "trusted-root"), setup.TUFCacheDir)
		if err != nil {
			return nil, err
		}
		o.TrustedMaterial = tm
	}
	allowSim, err := boolInput(a, "allow-simulated")
	if err != nil {
		return nil, err
	}
	o.AllowSimulated = allowSim
	for _, p := range listInput(a, "trusted-sim-root") {
		certs, err := verifier.LoadCertificatePEM(p)
		if err != nil {
			return nil, fmt.Errorf("%w: input trusted-sim-root %s: %w", ErrInput, p, err)
		}
		o.SimRoots = append(o.SimRoots, certs...)
	}
	if allowSim && len(o.SimRoots) == 0 {
		return nil, fmt.Errorf("%w: allow-simulated needs trusted-sim-root: the opt-in alone trusts nothing", ErrInput)
	}
	for _, m := range listInput(a, "measurement") {
		b, err := hex.DecodeString(m)
		if err != nil || (len(b) != 48 && len(b) != 192) {
			return nil, fmt.Errorf("%w: input measurement %q: expected 96 hex digits (SNP, sim) or 384 (TDX MRTD||RTMR0||RTMR1||RTMR2)", ErrInput, m)
		}
		o.ExpectedMeasurements = append(o.ExpectedMeasurements, b)
	}
	if err := evidenceInputs(a, o); err != nil {
		return nil, err
	}
	return o, nil
}

// evidenceInputs maps the measurement-source, policy and pin inputs.
func evidenceInputs(a *githubactions.Action, o *verify.Options) error {
	o.Reference.BundlePath = input(a, "reference-values")
	o.Reference.GuestImageDir = input(a, "guest-image")
	o.Reference.Firmware = input(a, "guest-firmware")
	if k := input(a, "reference-key"); k != "" {
		pub, err := provenance.LoadPublicKey(k)
		if err != nil {
			return fmt.Errorf("%w: input reference-key: %w", ErrInput, err)
		}
		o.Reference.Key = pub
	}
	skip, err := boolInput(a, "insecure-skip-measurement")
	if err != nil {
		return err
	}
	o.InsecureSkipMeasurement = skip
	if !skip {
		// The guest images this cloche's release published (reference/embedded).
		if o.EmbeddedReferences, err = reference.EmbeddedValues(); err != nil {
			return err
		}
	}
	if s := input(a, "min-tcb"); s != "" {
		t, err := verifier.ParseSNPTCB(s)
		if err != nil {
			return fmt.Errorf("%w: input min-tcb: %w", ErrInput, err)
		}
		o.EvidencePolicy.MinimumTCB = &t
	}
	if s := input(a, "amd-crl"); s != "" {
		crl, err := verifier.LoadCRL(s)
		if err != nil {
			return fmt.Errorf("%w: input amd-crl: %w", ErrInput, err)
		}
		o.EvidencePolicy.AMDCRL = crl
	}
	if s := input(a, "tdx-collateral"); s != "" {
		c, err := verifier.LoadTDXCollateral(s)
		if err != nil {
			return fmt.Errorf("%w: input tdx-collateral: %w", ErrInput, err)
		}
		o.EvidencePolicy.TDXCollateral = c
	}
	o.EvidencePolicy.AllowedPlatforms = listInput(a, "allow-platform")
	o.Pins.ToolchainDigest = input(a, "toolchain-digest")
	if o.UnsafeAllowAnyToolchain, err = boolInput(a, "unsafe-allow-any-toolchain"); err != nil {
		return err
	}
	if o.UnsafeAllowAnySource, err = boolInput(a, "unsafe-allow-any-source"); err != nil {
		return err
	}
	return rtmr0Inputs(a, o)
}

// rtmr0Inputs maps the TDX RTMR0 pins and their opt-out (verify.Options checks them).
func rtmr0Inputs(a *githubactions.Action, o *verify.Options) error {
	if s := input(a, "tdx-rtmr0"); s != "" {
		b, err := hex.DecodeString(strings.TrimSpace(s))
		if err != nil || len(b) != 48 {
			return fmt.Errorf("%w: input tdx-rtmr0 %q: expected 96 hex digits (TDX RTMR0)", ErrInput, s)
		}
		o.EvidencePolicy.TDX.RTMR[0] = b
	}
	for _, d := range listInput(a, "tdx-rtmr0-event") {
		o.Pins.RTMR0Events = append(o.Pins.RTMR0Events, strings.ToLower(d))
	}
	skip, err := boolInput(a, "unsafe-allow-any-rtmr0")
	o.UnsafeAllowAnyRTMR0 = skip
	return err
}

func verifySummary(repo, tag string, results []ArtifactResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "### cloche: verification of %s %s\n\n", mdEscape(repo), mdEscape(tag))
	fmt.Fprintf(&b, "| artifact | sha256 | TEE | measurement | source commit | result |\n|---|---|---|---|---|---|\n")
	for _, r := range results {
		digest, _, _ := fileio.SHA256(r.Path)
		if r.Err != nil {
			fmt.Fprintf(&b, "| %s | `%s` | | | | ❌ FAILED: %s |\n", mdEscape(r.Name), digest, mdEscape(r.Err.Error()))
			continue
		}
		tee := string(r.Result.TEE)
		if r.Result.Simulated {
			tee += " (SIMULATED)"
		}
		fmt.Fprintf(&b, "| %s | `%s` | %s | `%s` | `%s` | ✅ PASSED |\n", mdEscape(r.Name), digest, mdEscape(tee), r.Result.Measurement, r.Result.SourceCommit)
	}
	return b.String()
}
