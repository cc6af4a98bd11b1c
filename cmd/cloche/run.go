package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/build"
	"github.com/cloche-dev/cloche/internal/host"
	"github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/internal/progress"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/source"
)

type runFlags struct {
	source, out, tee, workdir  string
	artifacts, env             []string
	timeout                    time.Duration
	maxOutput                  int64
	vcpus, memory              int
	rlimits                    job.Rlimits
	accel, qemu                string
	key, guestImage, toolchain string
	toolchainImage             string
	guestInit                  string
	guestRelease               releaseFlags
	sourceDateEpoch            int64
	repository, ref, commit    string
	invocationID               string
	quiet, json                bool
	agent                      string // agent socket; see agentrun.go
	teeHost                    teeHostFlags
	kdsOffline                 bool
	kdsChain                   string
	snpProduct                 string
	rekorURL                   string // also enter the signature in this Rekor log
	deps                       string
}

func newRunCmd(g *globals) *cobra.Command {
	f := &runFlags{}
	cmd := &cobra.Command{
		Use:   "run [flags] -- COMMAND [ARGS...]",
		Short: "Run a build inside a confidential VM and write artifacts plus signed provenance",
		Long: `Run packs the source directory, launches the cloche guest in a confidential VM with the
job manifest bound at launch, runs COMMAND there (no network, unprivileged, time-limited),
and writes the artifacts and provenance.sigstore.json to --out.

Without --artifact, every regular file the command created or changed in the source tree
is an artifact.`,
		Example: `  cloche run --source examples/hello-c --out out/ --tee sim -- make`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return errors.New("no build command: expected cloche run [flags] -- COMMAND [ARGS...]")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBuild(cmd.Context(), g, f, args)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.source, "source", ".", "source directory")
	fl.StringVar(&f.out, "out", "out", "output directory for artifacts and provenance")
	fl.StringVar(&f.tee, "tee", "auto", "TEE: auto, snp, tdx or sim (simulated: no hardware guarantee)")
	fl.StringVar(&f.workdir, "workdir", ".", "directory inside the source to run COMMAND in")
	fl.StringArrayVar(&f.artifacts, "artifact", nil, "artifact pattern relative to the source (repeatable; default: every file the build created or changed)")
	fl.StringVar(&f.deps, "deps", "", "fetch the dependencies the source's lockfile names onto a read-only disk the guest checks against it before the build: go (go.mod and go.sum in --workdir) or npm (package.json and package-lock.json in --workdir, fetched with the host's npm)")
	fl.StringArrayVar(&f.env, "env", nil, "NAME=VALUE added to the build environment (repeatable)")
	fl.DurationVar(&f.timeout, "timeout", build.DefaultTimeout, "time limit for COMMAND (at least 1s)")
	fl.Int64Var(&f.maxOutput, "max-output", build.DefaultMaxOutputBytes, "cap on artifacts plus log, in `bytes`")
	fl.IntVar(&f.vcpus, "vcpus", build.DefaultVCPUs, fmt.Sprintf("guest vCPUs, %d..%d (part of the measurement)", build.MinVCPUs, build.MaxVCPUs))
	fl.IntVar(&f.memory, "memory", build.DefaultMemoryMiB, fmt.Sprintf("guest memory in `MiB`, %d..%d (part of the measurement)", build.MinMemoryMiB, build.MaxMemoryMiB))
	fl.Uint64Var(&f.rlimits.Processes, "max-processes", 0, fmt.Sprintf("RLIMIT_NPROC of the build's processes, at most %d (default %d; in the manifest)", job.MaxRlimitProcesses, job.DefaultRlimits().Processes))
	fl.Uint64Var(&f.rlimits.OpenFiles, "max-open-files", 0, fmt.Sprintf("RLIMIT_NOFILE of the build's processes, 16..%d (default %d; in the manifest)", job.MaxRlimitOpenFiles, job.DefaultRlimits().OpenFiles))
	fl.Uint64Var(&f.rlimits.FileSizeBytes, "max-file-size", 0, "RLIMIT_FSIZE: the largest file the build may write, in `bytes` (default: no limit beyond the disks; in the manifest)")
	fl.StringVar(&f.accel, "accel", "auto", "QEMU accelerator: auto, kvm or tcg")
	fl.StringVar(&f.qemu, "qemu", "", "QEMU binary (default qemu-system-x86_64 from PATH)")
	fl.StringVar(&f.key, "key", "", "ECDSA P-256 signing key (PEM); default: the state directory's, created on first use")
	fl.StringVar(&f.rekorURL, "rekor-url", "", "also enter the signature in this Rekor transparency log (e.g. "+provenance.PublicGoodRekorURL+"), so stock Sigstore verifiers need no --insecure-ignore-tlog (default: none, offline)")
	fl.StringVar(&f.guestImage, "guest-image", "", "guest image directory (default: the state directory's, built on first use)")
	fl.StringVar(&f.toolchain, "toolchain", "", "toolchain image (default: gcc+make+libc6-dev from Debian, built on first use)")
	fl.StringVar(&f.toolchainImage, "toolchain-image", "", "container `IMAGE` to run the build in, by manifest digest (REGISTRY/REPOSITORY@sha256:HEX): pulled, flattened and cached as with image toolchain --from-image")
	fl.StringVar(&f.guestRelease.tag, "guest-image-release", "", "launch the guest image this cloche release published (vX.Y.Z; 'cloche image guest --release'), fetched and checked, instead of a local build")
	fl.StringVar(&f.guestRelease.repo, "guest-image-repository", guestimage.DefaultReleaseRepository, "with --guest-image-release: the repository that publishes it (OWNER/NAME)")
	fl.StringVar(&f.guestRelease.trustedRoot, "guest-image-trusted-root", "", "with --guest-image-release: Sigstore trusted root for the release's signed reference values (when this cloche embeds none of that release)")
	fl.StringVar(&f.guestInit, "guest-init", "", "guest init binary for building the guest image (default: cloche-guest beside this executable)")
	fl.Int64Var(&f.sourceDateEpoch, "source-date-epoch", 0, "SOURCE_DATE_EPOCH for the build and the archive's file times")
	fl.StringVar(&f.repository, "repository", "", "source repository URI recorded in the provenance")
	fl.StringVar(&f.ref, "ref", "", "source ref recorded in the provenance (refs/tags/NAME: its annotated tag object is attested too)")
	fl.StringVar(&f.commit, "commit", "", "commit (e.g. HEAD) the guest attests: its object is read from --source's git checkout, and its tree must be --source")
	fl.StringVar(&f.invocationID, "invocation-id", "", "unique id of this run (default: random)")
	fl.BoolVarP(&f.quiet, "quiet", "q", false, "do not stream the guest console")
	fl.BoolVar(&f.json, "json", false, "print one JSON document on stdout: artifacts with digests, bundle, TEE, measurement, the verify command, warnings")
	fl.StringVar(&f.agent, "agent", "", "run the build through the cloche agent at this socket (default $"+agentSocketEnv+"; unset: build locally)")
	f.teeHost.register(cmd)
	fl.BoolVar(&f.kdsOffline, "kds-offline", false, "SEV-SNP: never contact AMD's key distribution service; take the VCEK chain from the report, --kds-chain or the cache")
	fl.StringVar(&f.snpProduct, "snp-product", "", "SEV-SNP: the `PRODUCT` line (Milan or Genoa) whose VCEK a version 2 report (SNP firmware before 1.55) needs; default this host's CPU's")
	fl.StringVar(&f.kdsChain, "kds-chain", "", "SEV-SNP: PEM or DER file with the VCEK (or VLEK), ASK and ARK to attach to the evidence")
	return cmd
}

func runBuild(ctx context.Context, g *globals, f *runFlags, command []string) error {
	socket := agentSocketFor(f)
	if socket != "" {
		if err := checkAgentFlags(f); err != nil {
			return err
		}
	}
	in, err := runInput(ctx, f, command)
	if err != nil {
		return err
	}
	cfg := runHostConfig(g, f)
	if err := cfg.Check(); err != nil {
		return hostConfigError(err, runHostFlags)
	}
	if socket != "" {
		return runOnAgent(ctx, g, f, socket, in)
	}
	h, err := host.New(ctx, cfg)
	if err != nil {
		return hostConfigError(err, runHostFlags)
	}
	var warnings []string
	if h.TEE() == attest.TEESim {
		warnings = append(warnings, simWarning)
		g.reporter().Warning(simWarning)
	}
	phase := g.progress().Begin(ctx, "build", "tee", h.TEE())
	phase.Step("packing the source")
	outcome, err := h.Run(ctx, host.Job{Spec: in.Spec, SourceDir: in.SourceDir, OutDir: in.OutDir,
		Console: consoleWriter(g.stderr, f.quiet), OnStage: buildStages(phase)})
	if err != nil {
		phase.Fail(err)
		return runError(err)
	}
	phase.Done()
	return reportOutcome(g, f.json, outcome, h.SigningKeyPath()+".pub", measurementFlags(h.TEE(), h.GuestImageDir(), h.Firmware()), h.Logged(), warnings)
}

// runHostConfig is the host `cloche run` builds on, from its flags.
func runHostConfig(g *globals, f *runFlags) host.Config {
	return host.Config{
		StateDir: g.stateDirPath(), TEE: attest.TEE(f.tee), SigningKey: f.key, RekorURL: f.rekorURL,
		GuestImage: f.guestImage, GuestRelease: f.guestRelease.config(), GuestInit: f.guestInit, Toolchain: f.toolchain, ToolchainImage: f.toolchainImage,
		SNPFirmware: f.teeHost.snpFirmware, TDXFirmware: f.teeHost.tdxFirmware, QGS: f.teeHost.qgs,
		KDS:   host.KDSConfig{Offline: f.kdsOffline, ChainFile: f.kdsChain, ProductLine: f.snpProduct},
		Accel: f.accel, QEMU: f.qemu, Version: version, Logger: g.logger(), Progress: g.progress(),
	}
}

// runHostFlags are the flags of `cloche run` behind each host.Config field.
var runHostFlags = map[string]string{
	"StateDir": "--state-dir", "TEE": "--tee", "SigningKey": "--key", "RekorURL": "--rekor-url",
	"GuestImage": "--guest-image", "GuestImage,GuestRelease.Tag": "--guest-image and --guest-image-release",
	"GuestRelease": "--guest-image-release/--guest-image-repository", "GuestRelease.TrustedRoot": "--guest-image-trusted-root",
	"Toolchain": "--toolchain", "ToolchainImage": "--toolchain-image", "Toolchain,ToolchainImage": "--toolchain and --toolchain-image",
	"KDS.ProductLine": "--snp-product", "Accel": "--accel",
}

// hostConfigError names the flag behind a host configuration error, and gives it its
// exit status: a bad flag is exitUsage, a TEE this machine lacks exitHost.
func hostConfigError(err error, flags map[string]string) error {
	var ce *host.ConfigError
	if errors.As(err, &ce) && flags[ce.Field] != "" {
		err = ce.Named(flags[ce.Field])
	}
	switch {
	case errors.Is(err, host.ErrUnavailable):
		return hostError(err)
	case errors.Is(err, host.ErrConfig):
		return usageError(err)
	}
	return err
}

// simWarning is said whenever a build runs on the simulated TEE.
const simWarning = "SIMULATED TEE: the host plays the secure processor; the evidence proves nothing about this host"

// runFlagName is the flag of `cloche run` that sets a build.Options field.
func runFlagName(field string) string {
	return map[string]string{
		"SourceDir": "--source", "OutDir": "--out", "Command": "COMMAND", "Workdir": "--workdir",
		"Env": "--env", "Artifacts": "--artifact", "VCPUs": "--vcpus", "MemoryMiB": "--memory",
		"TimeoutSeconds": "--timeout", "Rlimits.Processes": "--max-processes", "Rlimits.OpenFiles": "--max-open-files", "MaxOutputBytes": "--max-output", "Accel": "--accel",
		"Deps": "--deps",
	}[field]
}

// runInput checks everything `cloche run` was given that can be checked without the host,
// locally or through the agent, before any image is built or VM started; errors name the
// flag and exit with exitUsage.
func runInput(ctx context.Context, f *runFlags, command []string) (*build.Options, error) {
	env, err := parseEnv(f.env)
	if err != nil {
		return nil, usageError(err)
	}
	o := &build.Options{
		Spec: job.Spec{Command: command, Workdir: f.workdir, Env: env, Artifacts: f.artifacts,
			MaxOutputBytes: f.maxOutput, VCPUs: f.vcpus, MemoryMiB: f.memory, TEE: attest.TEE(f.tee),
			SourceDateEpoch: f.sourceDateEpoch, InvocationID: f.invocationID, Repository: f.repository, Ref: f.ref,
			Rlimits: f.rlimits, Deps: f.deps},
		SourceDir: f.source, OutDir: f.out, Accel: f.accel,
	}
	o.SetTimeout(f.timeout)
	if f.sourceDateEpoch < 0 {
		return nil, usageError(fmt.Errorf("--source-date-epoch %d: expected seconds since 1970, not negative", f.sourceDateEpoch))
	}
	if err := o.CheckInput(); err != nil {
		return nil, usageError(flagInputError(err, runFlagName))
	}
	if err := readCommit(ctx, f, o); err != nil {
		return nil, usageError(err)
	}
	return o, nil
}

// readCommit reads --commit's objects (and --ref's annotated tag object) from the git
// checkout --source is in, and checks them against the source as the guest will.
func readCommit(ctx context.Context, f *runFlags, o *build.Options) error {
	if f.commit == "" {
		if strings.HasPrefix(f.ref, "refs/tags/") {
			return fmt.Errorf("--ref %s names a tag: give --commit too (the tag object is attested only with its commit)", f.ref)
		}
		return nil
	}
	var tagRef string
	if strings.HasPrefix(f.ref, "refs/tags/") {
		tagRef = f.ref
	}
	git, err := source.ReadGitObjects(ctx, f.source, f.commit, tagRef)
	if err != nil {
		return fmt.Errorf("--commit %s: %w", f.commit, err)
	}
	if err := build.CheckCommit(f.source, f.ref, git); err != nil {
		return fmt.Errorf("--commit %s: %w", f.commit, err)
	}
	o.Git = git
	return nil
}

// flagInputError rewrites a build.InputError to name the flag instead of the field.
func flagInputError(err error, flagName func(field string) string) error {
	var ie *build.InputError
	if !errors.As(err, &ie) {
		return err
	}
	name := flagName(ie.Field)
	if name == "" {
		return err
	}
	return fmt.Errorf("%s %s: %w", name, ie.Value, ie.Err)
}

// parseEnv reads --env NAME=VALUE pairs.
func parseEnv(kvs []string) (map[string]string, error) {
	env := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--env %q: expected NAME=VALUE", kv)
		}
		env[k] = v
	}
	return env, nil
}

// runError classifies a failed build: bad input is the user's (exit 2), a host that cannot
// run the VM is exit 3, everything else exit 1.
func runError(err error) error {
	switch exitCode(err) {
	case exitUsage:
		return usageError(flagInputError(err, runFlagName))
	case exitHost:
		return hostError(err)
	}
	return err
}

// consoleWriter is where the guest console streams: w, without terminal escape codes unless
// w is a terminal; nowhere with --quiet.
func consoleWriter(w io.Writer, quiet bool) io.Writer {
	if quiet {
		return io.Discard
	}
	if isTerminal(w) {
		return w
	}
	return newEscapeStripper(w)
}

// runReport is `cloche run --json`'s document on stdout.
type runReport struct {
	TEE         attest.TEE    `json:"tee"`
	Simulated   bool          `json:"simulated"`
	Artifacts   []runArtifact `json:"artifacts"`
	Bundle      string        `json:"bundle"`
	Measurement string        `json:"measurement"`
	SourceTree  string        `json:"sourceTree"`
	// SourceCommit and SourceTag are what the guest attested (--commit, --ref).
	SourceCommit   string `json:"sourceCommit,omitempty"`
	SourceTag      string `json:"sourceTag,omitempty"`
	PublicKey      string `json:"publicKey"`
	SimRoot        string `json:"simRoot,omitempty"`
	DurationMillis int64  `json:"durationMillis"`
	// Verify is the command that verifies these artifacts, as argv and as one shell line.
	Verify        []string `json:"verify"`
	VerifyCommand string   `json:"verifyCommand"`
	// CosignVerify checks the signature and the first artifact's digest with stock cosign
	// (v3; docs/interop.md has v2 and the other tools), not the hardware evidence.
	CosignVerify        []string `json:"cosignVerify"`
	CosignVerifyCommand string   `json:"cosignVerifyCommand"`
	Warnings            []string `json:"warnings"`
}

type runArtifact struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

func newRunReport(outcome *build.Outcome, publicKey string, measurement []string, logged bool, warnings []string) *runReport {
	r := &runReport{TEE: outcome.TEE, Simulated: outcome.TEE == attest.TEESim, Bundle: outcome.BundlePath,
		Measurement: outcome.Measurement, SourceTree: outcome.SourceTree, SourceCommit: outcome.Commit, SourceTag: outcome.Tag, PublicKey: publicKey,
		SimRoot: outcome.SimRootPath, DurationMillis: outcome.Duration.Milliseconds(), Warnings: warnings}
	if r.Warnings == nil {
		r.Warnings = []string{}
	}
	r.Verify = append([]string{"cloche", "verify", "--bundle", outcome.BundlePath, "--key", publicKey}, measurement...)
	if r.Simulated {
		r.Verify = append(r.Verify, "--allow-simulated", "--trusted-sim-root", outcome.SimRootPath)
	}
	// What the guest attested of the source (its commit and tag, else its tree) and the
	// toolchain it mounted, pinned: this machine sent them, so it may vouch for them here;
	// another verifier pins what it knows instead.
	if r.SourceCommit != "" {
		r.Verify = append(r.Verify, "--source-commit", r.SourceCommit)
	}
	if r.SourceTag != "" {
		r.Verify = append(r.Verify, "--source-tag", r.SourceTag)
	}
	if r.SourceCommit == "" && r.SourceTag == "" && r.SourceTree != "" {
		r.Verify = append(r.Verify, "--source-tree", r.SourceTree)
	}
	if outcome.ToolchainDigest != "" {
		r.Verify = append(r.Verify, "--toolchain-digest", outcome.ToolchainDigest)
	}
	r.Artifacts = []runArtifact{}
	for _, a := range outcome.Artifacts {
		p := filepath.Join(outcome.ArtifactDir, a.Path)
		r.Artifacts = append(r.Artifacts, runArtifact{Path: p, SHA256: a.SHA256, Size: a.Size})
		r.Verify = append(r.Verify, p)
	}
	r.VerifyCommand = shellLine(r.Verify)
	if len(r.Artifacts) > 0 {
		r.CosignVerify = cosignVerify(outcome.BundlePath, publicKey, r.Artifacts[0].Path, logged)
		r.CosignVerifyCommand = shellLine(r.CosignVerify)
	}
	return r
}

// cosignVerify is the cosign v3 command that verifies a key-signed bundle and one artifact.
// A bundle without a transparency-log entry (cloche run without --rekor-url, or through the
// agent) verifies only with --insecure-ignore-tlog: it carries no log entry or timestamp, and
// the key is what is trusted.
func cosignVerify(bundle, publicKey, artifact string, logged bool) []string {
	args := []string{"cosign", "verify-blob-attestation", "--bundle", bundle, "--key", publicKey}
	if !logged {
		args = append(args, "--insecure-ignore-tlog")
	}
	return append(args, "--type", "slsaprovenance1", artifact)
}

// shellLine joins argv into one line a POSIX shell reads back as the same words.
func shellLine(argv []string) string {
	quoted := make([]string, len(argv))
	for i, a := range argv {
		quoted[i] = shellQuote(a)
	}
	return strings.Join(quoted, " ")
}

// reportOutcome reports a successful build, the same way for a local build and one run by
// the agent (cloche run --agent): the JSON document on stdout with --json, else lines on
// stderr. measurement holds the verify flags that name a trusted source of the launch
// measurement.
func reportOutcome(g *globals, asJSON bool, outcome *build.Outcome, publicKey string, measurement []string, logged bool, warnings []string) error {
	r := newRunReport(outcome, publicKey, measurement, logged, warnings)
	if asJSON {
		return printJSON(g, r)
	}
	if g.jsonLogs {
		g.reporter().Info("build succeeded", "report", r)
		return nil
	}
	w := g.stderr
	fmt.Fprintf(w, "build succeeded in %s (TEE %s%s)\n", outcome.Duration.Round(time.Millisecond), outcome.TEE, simNote(outcome.TEE))
	for _, a := range r.Artifacts {
		fmt.Fprintf(w, "  %s  sha256:%s  %d bytes\n", a.Path, a.SHA256, a.Size)
	}
	fmt.Fprintf(w, "  provenance:  %s\n  measurement: %s\n  source tree: %s\n", r.Bundle, r.Measurement, r.SourceTree)
	if r.SourceCommit != "" {
		fmt.Fprintf(w, "  commit:      %s\n", r.SourceCommit)
	}
	if r.SourceTag != "" {
		fmt.Fprintf(w, "  tag:         %s\n", r.SourceTag)
	}
	fmt.Fprintf(w, "  public key:  %s\n", r.PublicKey)
	// The cloche verify command stays the last line: it is the one that checks everything.
	if r.CosignVerifyCommand != "" {
		how := "offline: the bundle has no transparency-log entry, so cosign needs --insecure-ignore-tlog"
		if logged {
			how = "the bundle carries its Rekor entry; add --trusted-root for a Rekor other than Sigstore's public-good instance"
		}
		fmt.Fprintf(w, "signature and digest only (not the TEE evidence), with cosign v3 (%s; docs/interop.md for other tools):\n  %s\n", how, r.CosignVerifyCommand)
	}
	if logged {
		fmt.Fprintf(w, "the bundle's Rekor entry is checked with --trusted-root FILE, a Sigstore trusted root listing that log\n")
	}
	fmt.Fprintf(w, "verify with:\n  %s\n", r.VerifyCommand)
	return nil
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=@+,%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// measurementFlags are the verify flags that check the measurement against the guest
// image (and, on hardware, the firmware) this run used.
func measurementFlags(tee attest.TEE, guestImage, firmware string) []string {
	args := []string{"--guest-image", guestImage}
	switch {
	case firmware == "":
	case tee == attest.TEESNP:
		args = append(args, "--snp-firmware", firmware)
	case tee == attest.TEETDX:
		args = append(args, "--tdx-firmware", firmware)
	}
	return args
}

func simNote(t attest.TEE) string {
	if t == attest.TEESim {
		return ", SIMULATED"
	}
	return ""
}

// buildStages names the build's stages in its progress phase.
func buildStages(phase *progress.Phase) func(build.Stage) {
	return func(s build.Stage) {
		switch s {
		case build.StageVM:
			phase.Step("VM running")
		case build.StageCollect:
			phase.Step("collecting, checking and signing the output")
		}
	}
}
