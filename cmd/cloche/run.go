package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/kds"
	"github.com/cloche-dev/cloche/build"
	"github.com/cloche-dev/cloche/hostcheck"
	guestimage "github.com/cloche-dev/cloche/image/guest"
	"github.com/cloche-dev/cloche/image/toolchain"
	"github.com/cloche-dev/cloche/internal/fileio"
	"github.com/cloche-dev/cloche/provenance"
)

type runFlags struct {
	source, out, tee, workdir  string
	artifacts, env             []string
	timeout                    time.Duration
	maxOutput                  int64
	vcpus, memory              int
	accel, qemu                string
	key, guestImage, toolchain string
	guestAgent                 string
	sourceDateEpoch            int64
	repository, ref, commit    string
	invocationID               string
	quiet                      bool
	agent                      string // agent socket; see agentrun.go
	teeHost                    teeHostFlags
	kdsOffline                 bool
	kdsChain                   string
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
		Args:    cobra.MinimumNArgs(1),
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
	fl.StringArrayVar(&f.env, "env", nil, "NAME=VALUE added to the build environment (repeatable)")
	fl.DurationVar(&f.timeout, "timeout", 10*time.Minute, "time limit for COMMAND")
	fl.Int64Var(&f.maxOutput, "max-output", 256<<20, "cap on artifacts plus log, in bytes")
	fl.IntVar(&f.vcpus, "vcpus", 2, "guest vCPUs (part of the measurement)")
	fl.IntVar(&f.memory, "memory", 2048, "guest memory in MiB (part of the measurement)")
	fl.StringVar(&f.accel, "accel", "auto", "QEMU accelerator: auto, kvm or tcg")
	fl.StringVar(&f.qemu, "qemu", "", "QEMU binary (default qemu-system-x86_64 from PATH)")
	fl.StringVar(&f.key, "key", "", "ECDSA P-256 signing key (PEM); default: the state directory's, created on first use")
	fl.StringVar(&f.guestImage, "guest-image", "", "guest image directory (default: the state directory's, built on first use)")
	fl.StringVar(&f.toolchain, "toolchain", "", "toolchain image (default: gcc+make+libc6-dev from Debian, built on first use)")
	fl.StringVar(&f.guestAgent, "guest-agent", "", "guest agent binary for building the guest image (default: cloche-guest beside this executable)")
	fl.Int64Var(&f.sourceDateEpoch, "source-date-epoch", 0, "SOURCE_DATE_EPOCH for the build and the archive's file times")
	fl.StringVar(&f.repository, "repository", "", "source repository URI recorded in the provenance")
	fl.StringVar(&f.ref, "ref", "", "source ref recorded in the provenance")
	fl.StringVar(&f.commit, "commit", "", "source commit recorded in the provenance")
	fl.StringVar(&f.invocationID, "invocation-id", "", "unique id of this run (default: random)")
	fl.BoolVarP(&f.quiet, "quiet", "q", false, "do not stream the guest console")
	fl.StringVar(&f.agent, "agent", "", "run the build through the cloche agent at this socket (default $"+agentSocketEnv+"; unset: build locally)")
	f.teeHost.register(cmd)
	fl.BoolVar(&f.kdsOffline, "kds-offline", false, "SEV-SNP: never contact AMD's key distribution service; take the VCEK chain from the report, --kds-chain or the cache")
	fl.StringVar(&f.kdsChain, "kds-chain", "", "SEV-SNP: PEM or DER file with the VCEK (or VLEK), ASK and ARK to attach to the evidence")
	return cmd
}

func runBuild(ctx context.Context, g *globals, f *runFlags, command []string) error {
	if socket := agentSocketFor(f); socket != "" {
		return runOnAgent(ctx, g, f, socket, command)
	}
	tee, err := resolveTEE(ctx, f.tee, func() hostcheck.Host {
		state, _ := g.state() // an unusable state directory fails right after this
		gdir := f.guestImage
		if gdir == "" {
			gdir = guestImageDir(state)
		}
		return f.teeHost.host(state, f.qemu, gdir)
	})
	if err != nil {
		return err
	}
	env, err := checkSourceAndEnv(f)
	if err != nil {
		return err
	}
	state, err := g.state()
	if err != nil {
		return err
	}
	log := g.logger()

	keyPath := f.key
	if keyPath == "" {
		keyPath = signingKeyPath(state)
		if _, err := os.Stat(keyPath); errors.Is(err, os.ErrNotExist) {
			if err := provenance.GenerateKey(keyPath, keyPath+".pub"); err != nil {
				return fmt.Errorf("creating a signing key: %w", err)
			}
			fmt.Fprintf(g.stderr, "cloche: created signing key %s (public key %s)\n", keyPath, keyPath+".pub")
		}
	}
	signer, err := provenance.LoadKeySigner(keyPath)
	if err != nil {
		return err
	}

	gdir := f.guestImage
	if gdir == "" {
		gdir = guestImageDir(state)
		if err := ensureGuestImage(ctx, g, state, gdir, f.guestAgent); err != nil {
			return err
		}
	}
	tcPath := f.toolchain
	if tcPath == "" {
		fmt.Fprintln(g.stderr, "cloche: preparing the default toolchain image (cached after the first build)")
		_, p, err := toolchain.Build(ctx, toolchain.Options{Packages: toolchain.DefaultPackages, StateDir: state, Name: "debian-bookworm-gcc"})
		if err != nil {
			return fmt.Errorf("default toolchain image: %w", err)
		}
		tcPath = p
	}

	console := io.Writer(g.stderr)
	if f.quiet {
		console = io.Discard
	}
	if tee == attest.TEESim {
		fmt.Fprintln(g.stderr, "cloche: WARNING: SIMULATED TEE: the host plays the secure processor; the evidence proves nothing about this host")
	}
	outcome, err := build.Run(ctx, build.Options{
		SourceDir:       f.source,
		Command:         command,
		Workdir:         f.workdir,
		Env:             env,
		Artifacts:       f.artifacts,
		OutDir:          f.out,
		TEE:             tee,
		GuestImageDir:   gdir,
		ToolchainImage:  tcPath,
		SimDir:          simTEEDir(state),
		Firmware:        runFirmware(tee, f.teeHost, state),
		QGS:             f.teeHost.qgs,
		KDS:             kds.New(kds.Options{CacheDir: kdsCacheDir(state), Offline: f.kdsOffline, ChainFile: f.kdsChain, Log: log}),
		Signer:          signer,
		Timeout:         f.timeout,
		MaxOutputBytes:  f.maxOutput,
		VCPUs:           f.vcpus,
		MemoryMiB:       f.memory,
		Accel:           f.accel,
		QEMU:            f.qemu,
		SourceDateEpoch: f.sourceDateEpoch,
		InvocationID:    f.invocationID,
		Repository:      f.repository,
		Ref:             f.ref,
		Commit:          f.commit,
		Console:         console,
		Logger:          log,
		Version:         version,
	})
	if err != nil {
		return err
	}
	printOutcome(g.stderr, outcome, keyPath+".pub", measurementFlags(gdir, runFirmware(tee, f.teeHost, state)))
	return nil
}

// measurementFlags are the verify flags that check the measurement against the guest
// image this run used.
func measurementFlags(guestImage, firmware string) string {
	s := " --guest-image " + guestImage
	if firmware != "" {
		s += " --guest-firmware " + firmware
	}
	return s
}

// printOutcome reports a successful build, the same way for a local build and one run by
// the agent (cloche run --agent).
//
// measurement holds the verify flags that name a trusted source of the launch measurement.
func printOutcome(w io.Writer, outcome *build.Outcome, publicKey, measurement string) {
	fmt.Fprintf(w, "cloche: build succeeded in %s (TEE %s%s)\n", outcome.Duration.Round(time.Millisecond), outcome.TEE, simNote(outcome.TEE))
	for _, a := range outcome.Artifacts {
		fmt.Fprintf(w, "  %s  sha256:%s  %d bytes\n", filepath.Join(outcome.ArtifactDir, a.Path), a.SHA256, a.Size)
	}
	fmt.Fprintf(w, "  provenance:  %s\n  measurement: %s\n  source tree: %s\n  public key:  %s\n", outcome.BundlePath, outcome.Measurement, outcome.SourceTree, publicKey)
	verifyCmd := fmt.Sprintf("cloche verify --bundle %s --key %s%s", outcome.BundlePath, publicKey, measurement)
	if outcome.TEE == attest.TEESim {
		verifyCmd += fmt.Sprintf(" --allow-simulated --trusted-sim-root %s", outcome.SimRootPath)
	}
	for _, a := range outcome.Artifacts {
		verifyCmd += " " + filepath.Join(outcome.ArtifactDir, a.Path)
	}
	fmt.Fprintf(w, "verify with:\n  %s\n", verifyCmd)
}

func simNote(t attest.TEE) string {
	if t == attest.TEESim {
		return ", SIMULATED"
	}
	return ""
}

// runFirmware is the firmware a hardware TEE launch uses: the flag, else the state
// directory's default file.
func runFirmware(tee attest.TEE, t teeHostFlags, state string) string {
	switch {
	case tee == attest.TEESNP && t.snpFirmware != "":
		return t.snpFirmware
	case tee == attest.TEESNP:
		return snpFirmwarePath(state)
	case tee == attest.TEETDX && t.tdxFirmware != "":
		return t.tdxFirmware
	case tee == attest.TEETDX:
		return tdxFirmwarePath(state)
	}
	return ""
}

// ensureGuestImage builds the guest image when it is missing or was built from a different
// guest agent binary than the one installed now.
func ensureGuestImage(ctx context.Context, g *globals, state, dir, agent string) error {
	if agent == "" {
		var err error
		if agent, err = guestAgentPath(); err != nil {
			return err
		}
	}
	agentSum, _, err := fileio.SHA256(agent)
	if err != nil {
		return fmt.Errorf("guest agent: %w", err)
	}
	if img, err := guestimage.Load(dir); err == nil && img.UpToDate(agentSum) {
		return nil
	}
	fmt.Fprintf(g.stderr, "cloche: building the guest image in %s\n", dir)
	deb, err := guestimage.FetchKernelDeb(ctx, kernelCacheDir(state))
	if err != nil {
		return fmt.Errorf("guest kernel: %w", err)
	}
	if _, err := guestimage.Build(ctx, guestimage.Options{KernelDeb: deb, GuestAgent: agent, OutDir: dir}); err != nil {
		return fmt.Errorf("building the guest image: %w", err)
	}
	return nil
}

// checkSourceAndEnv validates what `cloche run` reads before it builds, locally or through
// the agent: the source directory, and --env as NAME=VALUE pairs.
func checkSourceAndEnv(f *runFlags) (map[string]string, error) {
	if st, err := os.Stat(f.source); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("source directory %q does not exist or is not a directory (expected --source DIR)", f.source)
	}
	env := map[string]string{}
	for _, kv := range f.env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--env %q: expected NAME=VALUE", kv)
		}
		env[k] = v
	}
	return env, nil
}
