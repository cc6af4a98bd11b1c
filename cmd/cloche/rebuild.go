package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/host"
	"github.com/cloche-dev/cloche/internal/rebuild"
	"github.com/cloche-dev/cloche/provenance"
)

type rebuildFlags struct {
	source, out, tee string
	toolchain        string
	guestImage       string
	guestInit        string
	key, bundleKey   string
	accel, qemu      string
	quiet            bool
	teeHost          teeHostFlags
}

func newRebuildCmd(g *globals) *cobra.Command {
	f := &rebuildFlags{}
	cmd := &cobra.Command{
		Use:   "rebuild [flags] BUNDLE",
		Short: "Re-run a build from its provenance and check that every artifact digest matches",
		Long: `Rebuild repeats the build a provenance bundle records, on this host, and compares the
artifacts with the bundle's subjects: the independent-rebuild check.

The inputs are the recorded ones, each checked before any VM starts: --source must pack to the
manifest's source.archiveSha256; the toolchain image (--toolchain, or the state directory's
image cache, looked up by the recorded dm-verity root hash) must have the recorded root hash
and SHA-256; dependencies are fetched again for the lockfile in --source; the command,
working directory, environment, artifact patterns, SOURCE_DATE_EPOCH, time limit, output cap,
resource limits, vCPUs and memory are the recorded ones. The bundle is only an expectation:
it is checked to be well formed and consistent with the manifest and result record it
carries (its signature too with --bundle-key), not trusted.

It prints one line per artifact on stdout, MATCH NAME sha256:HEX, DIFFER NAME want sha256:HEX
got sha256:HEX, MISSING NAME want sha256:HEX or EXTRA NAME got sha256:HEX, then REBUILD MATCHED
(exit 0) or REBUILD DIFFERED (exit 1). The rebuilt artifacts and their own provenance go to
--out.`,
		Example: `  cloche rebuild --source examples/hello-c --out rebuilt/ out/provenance.sigstore.json`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRebuild(cmd.Context(), g, f, args[0])
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.source, "source", ".", "the source directory: must be the tree the provenance records")
	fl.StringVar(&f.out, "out", "rebuild", "output directory for the rebuilt artifacts and their provenance (not the bundle's)")
	fl.StringVar(&f.tee, "tee", "sim", "TEE to rebuild on: auto, snp, tdx or sim (simulated: no hardware guarantee)")
	fl.StringVar(&f.toolchain, "toolchain", "", "toolchain image file (default: the one in the state directory's image cache with the recorded verity root hash)")
	fl.StringVar(&f.guestImage, "guest-image", "", "guest image directory (default: the state directory's, built on first use)")
	fl.StringVar(&f.guestInit, "guest-init", "", "guest init binary for building the guest image (default: cloche-guest beside this executable)")
	fl.StringVar(&f.key, "key", "", "ECDSA P-256 key (PEM) that signs the rebuild's own provenance; default: the state directory's")
	fl.StringVar(&f.bundleKey, "bundle-key", "", "public key (PEM) BUNDLE must be signed with (default: its signature is not checked; it is only compared against)")
	fl.StringVar(&f.accel, "accel", "auto", "QEMU accelerator: auto, kvm or tcg")
	fl.StringVar(&f.qemu, "qemu", "", "QEMU binary (default qemu-system-x86_64 from PATH)")
	fl.BoolVarP(&f.quiet, "quiet", "q", false, "do not stream the guest console")
	f.teeHost.register(cmd)
	return cmd
}

// rebuildFlagNames are the flags behind rebuild.Options fields.
var rebuildFlagNames = map[string]string{
	"SourceDir": "--source", "OutDir": "--out", "Toolchain": "--toolchain", "Host.Accel": "--accel",
}

func runRebuild(ctx context.Context, g *globals, f *rebuildFlags, bundle string) error {
	cfg := host.Config{
		StateDir: g.stateDirPath(), TEE: attest.TEE(f.tee), SigningKey: f.key,
		GuestImage: f.guestImage, GuestInit: f.guestInit,
		SNPFirmware: f.teeHost.snpFirmware, TDXFirmware: f.teeHost.tdxFirmware, QGS: f.teeHost.qgs,
		Accel: f.accel, QEMU: f.qemu, Version: version, Logger: g.logger(), Progress: g.progress(),
	}
	if err := cfg.Check(); err != nil {
		return hostConfigError(err, runHostFlags)
	}
	o := rebuild.Options{Bundle: bundle, SourceDir: f.source, OutDir: f.out, Toolchain: f.toolchain, Host: cfg,
		Console: consoleWriter(g.stderr, f.quiet)}
	if f.bundleKey != "" {
		pub, err := provenance.LoadPublicKey(f.bundleKey)
		if err != nil {
			return usageError(fmt.Errorf("--bundle-key: %w", err))
		}
		o.BundleKey = pub
	}
	plan, err := rebuild.Prepare(ctx, o)
	if err != nil {
		return rebuildError(err, bundle)
	}
	if cfg.TEE == attest.TEESim {
		g.reporter().Warning(simWarning)
	}
	phase := g.progress().Begin(ctx, "rebuild", "tee", cfg.TEE)
	o.OnStage = buildStages(phase)
	rep, err := plan.Run(ctx, o)
	if rep == nil {
		phase.Fail(err)
		return rebuildError(err, bundle)
	}
	phase.Done()
	for _, w := range rep.Warnings {
		g.reporter().Warning(w)
	}
	for _, l := range rep.Lines {
		fmt.Fprintln(g.stdout, l.String())
	}
	fmt.Fprintln(g.stdout, rep.Summary())
	if err != nil {
		return &exitError{code: exitFailed}
	}
	return nil
}

// rebuildError names the flag behind a refused input (exit 2), and classifies the rest as
// cloche run's errors are.
func rebuildError(err error, bundle string) error {
	var ie *rebuild.InputError
	if errors.As(err, &ie) {
		if ie.Field == "Bundle" {
			return usageError(fmt.Errorf("BUNDLE %s: %w", bundle, ie.Err))
		}
		if name := rebuildFlagNames[ie.Field]; name != "" {
			return usageError(fmt.Errorf("%s: %w", name, ie.Err))
		}
		return usageError(err)
	}
	if errors.Is(err, host.ErrConfig) || errors.Is(err, host.ErrUnavailable) {
		return hostConfigError(err, runHostFlags)
	}
	return runError(err)
}
