package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/cloche-dev/cloche/internal/ghaction"
	"github.com/cloche-dev/cloche/internal/host"
	"github.com/cloche-dev/cloche/internal/release"
	"github.com/cloche-dev/cloche/verify"
)

// newActionCmd is the hidden entry point of the composite actions (action.yml and
// verify/action.yml): they run `cloche action build` / `cloche action verify` with the
// runner's environment, which is where the inputs and the workflow context are.
func newActionCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:    "action",
		Short:  "Entry points of cloche's GitHub Actions (run by action.yml and verify/action.yml)",
		Hidden: true,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "build",
		Short: "The build action: one attested build, signed, published to the release",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runActionBuild(cmd.Context(), g)
		},
	}, &cobra.Command{
		Use:   "verify",
		Short: "The verify action: download a release and verify it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runActionVerify(cmd.Context(), g)
		},
	})
	return cmd
}

// actionRunner is the runner as the process sees it. Logs go to stderr; the job log
// (stdout) carries the build log and workflow commands.
func actionRunner(g *globals) ghaction.Runner {
	return ghaction.Runner{Getenv: os.Getenv, Stdout: g.stdout, HTTPClient: &http.Client{}, Logger: g.logger()}
}

func runActionBuild(ctx context.Context, g *globals) error {
	// The inputs set the TEE, images and key; the host's own environment the rest.
	setup := ghaction.BuildSetup{Host: host.Config{StateDir: g.stateDirPath(), Version: version,
		Accel: os.Getenv("CLOCHE_ACCEL"), QEMU: os.Getenv("CLOCHE_QEMU"), Logger: g.logger(), Progress: g.progress()}}
	// The error is in the job log as an annotation already.
	if _, err := ghaction.Build(ctx, actionRunner(g), setup); err != nil {
		return &exitError{code: 1}
	}
	return nil
}

func runActionVerify(ctx context.Context, g *globals) error {
	setup := ghaction.VerifySetup{}
	if state, err := g.state(); err == nil {
		setup.TUFCacheDir = filepath.Join(state, "cache", "sigstore-tuf")
	}
	// The error is in the job log as an annotation already.
	if _, err := ghaction.Verify(ctx, actionRunner(g), setup); err != nil {
		return &exitError{code: exitFailed}
	}
	return nil
}

// githubVerifyFlags are `cloche verify`'s keyless identity flags (slsa-verifier's names)
// and its release download (--repo, --tag).
type githubVerifyFlags struct {
	sourceURI, sourceTag, sourceBranch string
	builderID, signerWorkflow          string
	trustedRoot                        string
	repo, tag, apiURL                  string
}

func (f *githubVerifyFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&f.sourceURI, "source-uri", "", "expected source repository, github.com/OWNER/REPO (enables keyless verification without --key)")
	fl.StringVar(&f.sourceTag, "source-tag", "", "expected git tag the build ran for (keyless: the signer's ref; with --key: the annotated tag the guest attested)")
	fl.StringVar(&f.sourceBranch, "source-branch", "", "expected git branch the build ran for")
	fl.StringVar(&f.builderID, "builder-id", "", "expected builder id (without @version: any version)")
	fl.StringVar(&f.signerWorkflow, "signer-workflow", "", "expected signing workflow, [github.com/]OWNER/REPO/.github/workflows/FILE")
	fl.StringVar(&f.trustedRoot, "trusted-root", "", "Sigstore trusted root JSON (default: Sigstore's public-good root, fetched and cached); with --key, the Rekor logs a key-signed bundle's log entry is checked against")
	fl.StringVar(&f.repo, "repo", "", "download the artifacts and bundle from this repository's release (OWNER/REPO; needs --tag)")
	fl.StringVar(&f.tag, "tag", "", "release tag to download (with --repo); also the default --source-tag")
	fl.StringVar(&f.apiURL, "github-api-url", "", "GitHub API URL (default $GITHUB_API_URL or https://api.github.com)")
}

// keyless says whether an expected identity was given, which makes --key optional.
func (f *githubVerifyFlags) keyless() bool { return f.sourceURI != "" || f.repo != "" }

// fetchRelease downloads the release named by --repo/--tag into a temporary directory and
// returns the local artifact paths (the positional ones select assets by name).
func (f *githubVerifyFlags) fetchRelease(ctx context.Context, g *globals, bundle *string, artifacts []string) ([]string, func(), error) {
	if f.repo == "" && f.tag == "" {
		return artifacts, func() {}, nil
	}
	if f.repo == "" || f.tag == "" {
		return nil, nil, errors.New("--repo and --tag go together")
	}
	if *bundle != "" {
		return nil, nil, errors.New("--bundle and --repo are exclusive: the bundle comes from the release")
	}
	dir, err := os.MkdirTemp("", "cloche-verify-")
	if err != nil {
		return nil, nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	apiURL := cmp.Or(f.apiURL, os.Getenv("GITHUB_API_URL"), release.DefaultAPIURL)
	got, err := ghaction.DownloadRelease(ctx, apiURL, os.Getenv("GITHUB_TOKEN"), f.repo, f.tag, dir, artifacts,
		ghaction.Runner{HTTPClient: &http.Client{}, Logger: g.logger()})
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	*bundle = got.Bundle
	return got.Artifacts, cleanup, nil
}

// applyKey is apply for a key-signed bundle: it binds no repository, branch or signer
// workflow (docs/design.md), so asking for one is refused; --source-tag checks the tag the
// guest attested; --trusted-root, when given, checks a transparency-log entry.
func (f *githubVerifyFlags) applyKey(o *verify.Options) error {
	if err := f.checkKeyFlags(); err != nil {
		return err
	}
	o.ExpectedSourceTag = f.sourceTag
	// --trusted-root with --key checks the log entry of a bundle `cloche run --rekor-url`
	// entered in Rekor.
	return f.loadTrustedRoot(o, true)
}

// checkKeyFlags refuses the flags a key-signed bundle cannot honour.
func (f *githubVerifyFlags) checkKeyFlags() error {
	switch {
	case f.sourceURI != "" || f.sourceBranch != "" || f.signerWorkflow != "":
		return errors.New("--source-uri, --source-branch and --signer-workflow need keyless verification (drop --key): a key-signed bundle does not bind the repository, branch or workflow, the runner host writes them; --source-commit and --source-tag check what the guest attested")
	}
	return nil
}

// apply adds the identity expectations to o, and the trusted root unless a key was given.
func (f *githubVerifyFlags) apply(o *verify.Options, haveKey bool) error {
	o.ExpectedBuilderID = f.builderID
	if haveKey {
		return f.applyKey(o)
	}
	sourceURI := f.sourceURI
	if sourceURI == "" && f.repo != "" {
		sourceURI = "github.com/" + f.repo
	}
	if sourceURI == "" {
		if f.sourceTag != "" || f.sourceBranch != "" || f.signerWorkflow != "" || (f.trustedRoot != "" && !haveKey) {
			return errors.New("--source-tag, --source-branch, --signer-workflow and --trusted-root (without --key) need --source-uri github.com/OWNER/REPO")
		}
		if !haveKey {
			return nil // no key and no identity: checkSignatureOptions says what is missing
		}
		return f.loadTrustedRoot(o, haveKey)
	}
	tag := f.sourceTag
	if tag == "" && f.sourceBranch == "" {
		tag = f.tag
	}
	o.Identity = &verify.Identity{SourceURI: sourceURI, SourceTag: tag, SourceBranch: f.sourceBranch, SignerWorkflow: f.signerWorkflow}
	return f.loadTrustedRoot(o, haveKey)
}

// loadTrustedRoot sets the trusted root: for keyless bundles always (the public-good root by
// default); with --key only when given, to check the log entry of a bundle that `cloche run
// --rekor-url` entered in Rekor.
func (f *githubVerifyFlags) loadTrustedRoot(o *verify.Options, haveKey bool) error {
	if haveKey && f.trustedRoot == "" {
		return nil
	}
	tm, err := verify.LoadTrustedRoot(f.trustedRoot, "")
	if err != nil {
		return fmt.Errorf("--trusted-root: %w", err)
	}
	o.TrustedMaterial = tm
	return nil
}
