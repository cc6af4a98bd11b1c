package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/verifier"
	"github.com/cloche-dev/cloche/internal/atomicfile"
	"github.com/cloche-dev/cloche/internal/build"
	"github.com/cloche-dev/cloche/internal/fileio"
	"github.com/cloche-dev/cloche/internal/host"
	"github.com/cloche-dev/cloche/internal/image/toolchain"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/source"
	"github.com/cloche-dev/cloche/verify"
)

// selftestFlags are `cloche selftest`'s flags.
type selftestFlags struct {
	tee, out, qemu, accel, guestImage, guestInit string
	teeHost                                      teeHostFlags
}

func newSelftestCmd(g *globals) *cobra.Command {
	f := &selftestFlags{}
	cmd := &cobra.Command{
		Use:   "selftest --tee snp|tdx|sim",
		Short: "Launch a tiny job in the TEE, verify it, and write a diagnostic bundle",
		Long: `Selftest is what to run once on a new host: it checks the host (as cloche doctor does),
launches a tiny job (busybox, no compiler) in a confidential VM of the TEE named by --tee,
verifies the result with the measurement computed from the guest image, and writes a
diagnostic bundle to --out: the doctor report, the QEMU, host kernel, guest image and
firmware versions, the guest console, the host's log with QEMU's command line (host.log), the provenance bundle with its evidence, every
verification check with its outcome, and the time each phase took (summary.json).

It prints one PASSED or FAILED line and exits 0 when every phase passed, 1 when the build
or a check failed, 3 when the host cannot run the TEE.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSelftest(cmd.Context(), g, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.tee, "tee", "", "the TEE to test: snp, tdx or sim")
	fl.StringVar(&f.out, "out", "", "`DIR` for the diagnostic bundle (default ./cloche-selftest-<tee>-<time>)")
	fl.StringVar(&f.qemu, "qemu", "", "QEMU binary (default qemu-system-x86_64)")
	fl.StringVar(&f.accel, "accel", "", "auto, kvm or tcg (default auto; hardware TEEs need kvm)")
	fl.StringVar(&f.guestImage, "guest-image", "", "guest image `DIR` (default: the state directory's, built on first use)")
	fl.StringVar(&f.guestInit, "guest-init", "", "with the default guest image: the cloche-guest binary to build it with")
	f.teeHost.register(cmd)
	return cmd
}

// selftestSummary is summary.json in the diagnostic bundle.
type selftestSummary struct {
	TEE       attest.TEE      `json:"tee"`
	Passed    bool            `json:"passed"`
	Started   time.Time       `json:"started"`
	Phases    []selftestPhase `json:"phases"`
	Versions  map[string]any  `json:"versions"`
	GoVersion string          `json:"goVersion"`
	Cloche    string          `json:"cloche"`
}

type selftestPhase struct {
	Name           string `json:"name"`
	DurationMillis int64  `json:"durationMillis"`
	Error          string `json:"error,omitempty"`
}

// selftest is one selftest run: its bundle directory and what it recorded so far.
type selftest struct {
	g   *globals
	f   *selftestFlags
	dir string
	sum selftestSummary
}

func runSelftest(ctx context.Context, g *globals, f *selftestFlags) error {
	tee, err := selftestInput(f)
	if err != nil {
		return err
	}
	state, err := g.state()
	if err != nil {
		return err
	}
	dir := f.out
	if dir == "" {
		dir = fmt.Sprintf("cloche-selftest-%s-%s", tee, time.Now().UTC().Format("20060102T150405Z"))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return usageError(fmt.Errorf("--out %s: %w", dir, err))
	}
	s := &selftest{g: g, f: f, dir: dir, sum: selftestSummary{TEE: tee, Started: time.Now().UTC(),
		Versions: map[string]any{}, GoVersion: runtime.Version(), Cloche: version}}
	runErr := s.run(ctx, tee, state)
	s.sum.Passed = runErr == nil
	if err := s.writeJSON("summary.json", s.sum); err != nil && runErr == nil {
		runErr = err
	}
	rep := g.reporter()
	if runErr != nil {
		var ve *verify.Error
		check := "selftest"
		if errors.As(runErr, &ve) {
			check = ve.Check
		}
		rep.Failed(check, fmt.Errorf("%w (diagnostic bundle: %s)", runErr, dir))
		if code := exitCode(runErr); code == exitHost {
			return &exitError{code: exitHost}
		}
		return &exitError{code: exitFailed}
	}
	rep.Passed(fmt.Sprintf("selftest of %s: launched, built and verified (diagnostic bundle: %s)", tee, dir))
	return nil
}

// selftestInput checks the flags before anything is started.
func selftestInput(f *selftestFlags) (attest.TEE, error) {
	if !attest.TEE(f.tee).Valid() {
		return "", usageError(fmt.Errorf("--tee %q: expected snp, tdx or sim", f.tee))
	}
	switch f.accel {
	case "", "auto", "kvm", "tcg":
	default:
		return "", usageError(fmt.Errorf("--accel %q: expected auto, kvm or tcg", f.accel))
	}
	if f.out != "" {
		if fi, err := os.Stat(f.out); err == nil && !fi.IsDir() {
			return "", usageError(fmt.Errorf("--out %s: expected a directory, not a file", f.out))
		}
	}
	return attest.TEE(f.tee), nil
}

// run performs the phases in order; the first failure ends it.
func (s *selftest) run(ctx context.Context, tee attest.TEE, state string) error {
	gdir := cmp.Or(s.f.guestImage, host.GuestImageDir(state))
	if err := s.phase("doctor", func() error { return s.doctor(ctx, state, gdir, tee) }); err != nil {
		return err
	}
	s.phase("versions", func() error { s.versions(ctx, tee, state); return nil })
	var tc string
	if err := s.phase("toolchain image", func() (err error) { tc, err = selftestToolchain(ctx, state); return err }); err != nil {
		return err
	}
	var h *host.Host
	if err := s.phase("host", func() (err error) { h, err = s.host(ctx, tee, state, tc); return err }); err != nil {
		return err
	}
	var outcome *build.Outcome
	if err := s.phase("build", func() (err error) { outcome, err = s.build(ctx, h); return err }); err != nil {
		return err
	}
	return s.phase("verify", func() error {
		return s.verify(ctx, outcome, tc, h.SigningKeyPath()+".pub", h.GuestImageDir(), h.Firmware())
	})
}

// host configures the host for the selftest: the TEE under test, the selftest toolchain,
// and the guest image (built when missing).
func (s *selftest) host(ctx context.Context, tee attest.TEE, state, toolchain string) (*host.Host, error) {
	h, err := host.New(ctx, host.Config{StateDir: state, TEE: tee, GuestImage: s.f.guestImage, GuestInit: s.f.guestInit,
		Toolchain: toolchain, SNPFirmware: s.f.teeHost.snpFirmware, TDXFirmware: s.f.teeHost.tdxFirmware, QGS: s.f.teeHost.qgs,
		Accel: s.f.accel, QEMU: s.f.qemu, Version: version, Logger: s.g.logger(), Progress: s.g.progress()})
	if err != nil {
		return nil, hostConfigError(err, runHostFlags)
	}
	return h, nil
}

// phase runs fn as the named phase, recording its time and error.
func (s *selftest) phase(name string, fn func() error) error {
	p := s.g.progress().Begin(context.Background(), "selftest "+name)
	start := time.Now()
	err := fn()
	rec := selftestPhase{Name: name, DurationMillis: time.Since(start).Milliseconds()}
	if err != nil {
		rec.Error = err.Error()
		p.Fail(err)
	} else {
		p.Done()
	}
	s.sum.Phases = append(s.sum.Phases, rec)
	return err
}

// doctor records the host check and fails when the host cannot run tee.
func (s *selftest) doctor(ctx context.Context, state, gdir string, tee attest.TEE) error {
	r := s.f.teeHost.host(state, s.f.qemu, gdir).Check(ctx)
	if err := s.writeJSON("doctor.json", r); err != nil {
		return err
	}
	if (tee == attest.TEESNP && !r.SNP) || (tee == attest.TEETDX && !r.TDX) || (tee == attest.TEESim && !r.Sim) {
		return hostError(fmt.Errorf("%w: this host cannot run %s (doctor.json in the bundle says what is missing)", errSelftestHost, tee))
	}
	return nil
}

var errSelftestHost = errors.New("host check")

// versions records what the launch depends on: QEMU, the host kernel, the firmware.
func (s *selftest) versions(ctx context.Context, tee attest.TEE, state string) {
	qemu := cmp.Or(s.f.qemu, "qemu-system-x86_64")
	if out, err := exec.CommandContext(ctx, qemu, "--version").Output(); err == nil {
		s.sum.Versions["qemu"] = strings.SplitN(string(out), "\n", 2)[0]
	}
	if b, err := os.ReadFile("/proc/version"); err == nil {
		s.sum.Versions["hostKernel"] = strings.TrimSpace(string(b))
	}
	if fw := host.Firmware(tee, s.f.teeHost.snpFirmware, s.f.teeHost.tdxFirmware, state); fw != "" {
		if sum, size, err := fileio.SHA256(fw); err == nil {
			s.sum.Versions["firmware"] = map[string]any{"path": fw, "sha256": sum, "size": size}
		} else {
			s.sum.Versions["firmware"] = map[string]any{"path": fw, "error": err.Error()}
		}
	}
}

// selftestToolchain is a busybox toolchain image in the state directory, made once: the
// selftest needs a shell, not a compiler.
func selftestToolchain(ctx context.Context, state string) (string, error) {
	out := filepath.Join(state, "toolchains", "selftest-busybox", toolchain.ImageFile)
	if _, err := toolchain.Load(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return "", err
	}
	root, err := os.MkdirTemp(filepath.Dir(out), ".root-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(root)
	if err := toolchain.MakeBusyboxRoot(root); err != nil {
		return "", err
	}
	_, err = toolchain.FromDir(ctx, root, out, "selftest-busybox")
	return out, err
}

// build runs the tiny job, its console going to console.log in the bundle.
func (s *selftest) build(ctx context.Context, h *host.Host) (*build.Outcome, error) {
	src := filepath.Join(s.dir, "source")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(filepath.Join(src, "input.txt"), []byte("cloche selftest\n"), 0o644); err != nil {
		return nil, err
	}
	console, err := os.Create(filepath.Join(s.dir, "console.log"))
	if err != nil {
		return nil, err
	}
	defer console.Close()
	// The host side at debug level, QEMU's command line included, for the bundle.
	hostLog, err := os.Create(filepath.Join(s.dir, "host.log"))
	if err != nil {
		return nil, err
	}
	defer hostLog.Close()
	out := filepath.Join(s.dir, "out")
	if err := os.RemoveAll(out); err != nil {
		return nil, err
	}
	return h.Run(ctx, host.Job{
		Spec:      job.Spec{Command: []string{"sh", "-c", "cp input.txt selftest.txt && echo selftest-ok"}, Artifacts: []string{"selftest.txt"}},
		SourceDir: src, OutDir: out, Console: newEscapeStripper(console),
		Logger: slog.New(slog.NewTextHandler(hostLog, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
}

// verify checks the result as `cloche verify` would, with the measurement computed from
// the guest image and the source and toolchain this selftest made pinned, and records every
// check.
func (s *selftest) verify(ctx context.Context, outcome *build.Outcome, toolchainImage, pub, gdir, firmware string) error {
	key, err := provenance.LoadPublicKey(pub)
	if err != nil {
		return err
	}
	tc, err := toolchain.Load(toolchainImage)
	if err != nil {
		return err
	}
	tree, err := source.TreeID(filepath.Join(s.dir, "source"))
	if err != nil {
		return err
	}
	o := verify.Options{BundlePath: outcome.BundlePath, PublicKey: key,
		Artifacts:          []string{filepath.Join(outcome.ArtifactDir, "selftest.txt")},
		Reference:          verify.ReferenceOptions{GuestImageDir: gdir, Firmware: firmware},
		ExpectedSourceTree: tree, Pins: verify.Pins{ToolchainDigest: tc.VerityRootHash}}
	if outcome.TEE == attest.TEESim {
		roots, err := verifier.LoadCertificatePEM(outcome.SimRootPath)
		if err != nil {
			return err
		}
		o.AllowSimulated, o.SimRoots = true, roots
	}
	res, verr := verify.Verify(ctx, o)
	if err := s.writeJSON("checks.json", res); err != nil && verr == nil {
		return err
	}
	return verr
}

func (s *selftest) writeJSON(name string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(s.dir, name), append(b, '\n'), 0o644)
}
