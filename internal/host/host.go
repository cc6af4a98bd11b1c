package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/kds"
	"github.com/cloche-dev/cloche/attest/verifier"
	"github.com/cloche-dev/cloche/internal/build"
	"github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/internal/image/toolchain"
	"github.com/cloche-dev/cloche/internal/progress"
	"github.com/cloche-dev/cloche/internal/vmm"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
)

// Sentinel errors callers branch on; each is wrapped with the details.
var (
	// ErrConfig: a Config field is outside what a host accepts (a *ConfigError names it).
	ErrConfig = errors.New("invalid host configuration")
	// ErrUnavailable: this machine cannot launch the TEE asked for.
	ErrUnavailable = errors.New("TEE unavailable on this host")
)

// ConfigError is a Config field that New refuses. Field is the Config field's name
// (GuestRelease.Tag for a nested one); the CLI and the action map it to their flag or input.
type ConfigError struct {
	Field string
	Value string // as given, formatted for a message; "" when Err says it
	Err   error
}

func (e *ConfigError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("host configuration %s: %v", e.Field, e.Err)
	}
	return fmt.Sprintf("host configuration %s %s: %v", e.Field, e.Value, e.Err)
}

// Unwrap gives the reason and ErrConfig, or only the reason when it is ErrUnavailable
// (the configuration is fine; this machine lacks the TEE).
func (e *ConfigError) Unwrap() []error {
	if errors.Is(e.Err, ErrUnavailable) {
		return []error{e.Err}
	}
	return []error{ErrConfig, e.Err}
}

// Named is the error as a caller that takes the field under another name (a CLI flag, an
// action input) shows it: "NAME VALUE: reason", still ErrConfig or ErrUnavailable.
func (e *ConfigError) Named(name string) error { return &namedConfigError{name: name, e: e} }

type namedConfigError struct {
	name string
	e    *ConfigError
}

func (n *namedConfigError) Error() string {
	if n.e.Value == "" {
		return fmt.Sprintf("%s: %v", n.name, n.e.Err)
	}
	return fmt.Sprintf("%s %s: %v", n.name, n.e.Value, n.e.Err)
}

func (n *namedConfigError) Unwrap() []error { return n.e.Unwrap() }

func configErr(field, value string, err error) error {
	return &ConfigError{Field: field, Value: value, Err: err}
}

// Config is how this host runs builds: everything that is the host's, not the job's. Zero
// values take the defaults; New resolves and prepares what it names, once.
type Config struct {
	// StateDir holds keys, images and caches (layout.go); default DefaultStateDir().
	StateDir string
	// TEE is the kind every job runs on: sim, snp or tdx; "" or "auto" picks the hardware
	// TEE this machine supports.
	TEE attest.TEE
	// SigningKey is an ECDSA P-256 key (PEM); default the state directory's, created on
	// first use. Signer, when set, signs instead (the action's keyless signer).
	SigningKey string
	Signer     provenance.Signer
	// RekorURL, when set, also enters the key's signatures in this Rekor log
	// (provenance.KeySigner.LogTo), so stock Sigstore verifiers need no insecure flag.
	RekorURL string

	// GuestImage is a guest image directory; GuestRelease a published release fetched and
	// checked instead; neither: the state directory's own build, from GuestInit (default
	// cloche-guest beside this executable).
	GuestImage   string
	GuestRelease GuestRelease
	GuestInit    string
	// Toolchain is a toolchain image; ToolchainImage a container image by manifest digest
	// (REPOSITORY@sha256:HEX), pulled, flattened and cached (toolchain.FromImage); neither:
	// toolchain.DefaultPackages, built on first use.
	Toolchain      string
	ToolchainImage string
	// SimDir holds the simulated secure processor's keys and chain; default the state
	// directory's (SimTEEDir).
	SimDir string

	// SNPFirmware and TDXFirmware are the -bios images (default: the state directory's);
	// QGS the TDX quote generation service.
	SNPFirmware, TDXFirmware, QGS string
	KDS                           KDSConfig

	Accel string // auto (default), kvm or tcg
	QEMU  string // default qemu-system-x86_64 from PATH
	// Version is cloche's, recorded in every provenance as the builder's.
	Version  string
	Logger   *slog.Logger
	Progress *progress.Meter
}

// GuestRelease names a published guest image release (`cloche image guest --release`).
type GuestRelease struct {
	Tag        string // vX.Y.Z; "" for none
	Repository string // OWNER/NAME; default guestimage.DefaultReleaseRepository
	// TrustedRoot is a Sigstore trusted root for the release's signed reference values,
	// needed when this cloche embeds none of that release.
	TrustedRoot string
	APIURL      string // default release.DefaultAPIURL
	Token       string
	// Dir is where it is stored; default the state directory's guest-images/TAG.
	Dir string
}

// KDSConfig is how SNP evidence gets its VCEK chain (attest/kds).
type KDSConfig struct {
	Offline     bool
	ChainFile   string
	ProductLine string // Milan or Genoa, for version 2 reports; default this CPU's
}

// Host is this machine configured to run builds: its state, TEE, signer and images,
// resolved once by New and shared by every job Run starts.
type Host struct {
	cfg        Config
	state      string
	tee        attest.TEE
	signer     provenance.Signer
	keyPath    string // "" with Config.Signer
	keyCreated bool
	logged     bool // the key's signatures are entered in a transparency log
	guestImage string
	toolchain  string
	kds        *kds.Client
}

// New checks cfg, then prepares the host: the TEE (probed when auto), the signing key, the
// guest image (fetched or built when missing) and the toolchain image (built when
// missing). The checks come first and take milliseconds; the rest may take minutes on a
// new machine.
func New(ctx context.Context, cfg Config) (*Host, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	h := &Host{cfg: cfg, state: cfg.StateDir}
	steps := []func(context.Context) error{h.resolveTEE, h.loadSigner, h.prepareGuestImage, h.prepareToolchain}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			return nil, err
		}
	}
	h.kds = kds.New(kds.Options{CacheDir: KDSCacheDir(h.state), Offline: cfg.KDS.Offline,
		ChainFile: cfg.KDS.ChainFile, ProductLine: cfg.KDS.ProductLine, Log: cfg.Logger})
	return h, nil
}

func (c *Config) setDefaults() error {
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir()
	}
	if c.StateDir == "" {
		return configErr("StateDir", `""`, errors.New("expected a state directory (no home directory to default to)"))
	}
	if err := os.MkdirAll(c.StateDir, 0o700); err != nil {
		return configErr("StateDir", fmt.Sprintf("%q", c.StateDir), err)
	}
	if c.TEE == "" {
		c.TEE = "auto"
	}
	if c.SimDir == "" {
		c.SimDir = SimTEEDir(c.StateDir)
	}
	if c.GuestRelease.Tag != "" && c.GuestRelease.Repository == "" {
		c.GuestRelease.Repository = guestimage.DefaultReleaseRepository
	}
	if c.Accel == "" {
		c.Accel = vmm.AccelAuto
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// Check refuses a configuration New could not use, without touching the machine beyond
// the state directory: it runs before anything is probed, fetched or built.
func (c *Config) Check() error {
	switch c.TEE {
	case "", "auto", attest.TEESim, attest.TEESNP, attest.TEETDX:
	default:
		return configErr("TEE", fmt.Sprintf("%q", c.TEE), errors.New("expected auto, snp, tdx or sim"))
	}
	switch c.KDS.ProductLine {
	case "", verifier.ProductMilan, verifier.ProductGenoa:
	default:
		return configErr("KDS.ProductLine", fmt.Sprintf("%q", c.KDS.ProductLine), errors.New("expected Milan or Genoa"))
	}
	switch c.Accel {
	case "", vmm.AccelAuto, vmm.AccelKVM, vmm.AccelTCG:
	default:
		return configErr("Accel", fmt.Sprintf("%q", c.Accel), errors.New("expected auto, kvm or tcg"))
	}
	if c.RekorURL != "" {
		if err := provenance.CheckRekorURL(c.RekorURL); err != nil {
			return configErr("RekorURL", "", err)
		}
	}
	if c.Version == "" {
		return configErr("Version", `""`, errors.New("expected cloche's version, for the provenance's builder"))
	}
	if c.ToolchainImage != "" {
		if c.Toolchain != "" {
			return configErr("Toolchain,ToolchainImage", "", errors.New("give one"))
		}
		if _, err := toolchain.ParseSourceImage(c.ToolchainImage); err != nil {
			return configErr("ToolchainImage", "", err)
		}
	}
	return c.GuestRelease.check(c.GuestImage)
}

// check refuses a release given with a directory, or a malformed one.
func (r GuestRelease) check(guestImage string) error {
	if r.Tag == "" {
		return nil
	}
	if guestImage != "" {
		return configErr("GuestImage,GuestRelease.Tag", "", errors.New("give one"))
	}
	rel := guestimage.Release{Repository: r.Repository, Tag: r.Tag}
	if rel.Repository == "" {
		rel.Repository = guestimage.DefaultReleaseRepository
	}
	if err := rel.Validate(); err != nil {
		return configErr("GuestRelease", "", err)
	}
	return nil
}

func (h *Host) loadSigner(context.Context) error {
	if h.cfg.Signer != nil {
		h.signer = h.cfg.Signer
		return nil
	}
	signer, path, created, err := SigningKey(h.state, h.cfg.SigningKey)
	if err != nil {
		return configErr("SigningKey", fmt.Sprintf("%q", h.cfg.SigningKey), err)
	}
	if h.cfg.RekorURL != "" {
		if err := signer.LogTo(h.cfg.RekorURL, 0); err != nil {
			return configErr("RekorURL", "", err)
		}
	}
	h.logged = signer.Logged()
	h.signer, h.keyPath, h.keyCreated = signer, path, created
	if created {
		h.cfg.Logger.Info("created a signing key", "key", path, "public_key", path+".pub")
	}
	return nil
}

func (h *Host) prepareToolchain(ctx context.Context) error {
	if h.cfg.Toolchain != "" {
		h.toolchain = h.cfg.Toolchain
		return nil
	}
	if h.cfg.ToolchainImage != "" {
		_, p, err := toolchain.FromImage(ctx, toolchain.ImageOptions{SourceImage: h.cfg.ToolchainImage, StateDir: h.state,
			Progress: h.cfg.Progress, Log: h.cfg.Logger})
		h.toolchain = p
		return err
	}
	p, err := DefaultToolchain(ctx, h.state, h.cfg.Progress, h.cfg.Logger)
	h.toolchain = p
	return err
}

// TEE is the kind this host's jobs run on.
func (h *Host) TEE() attest.TEE { return h.tee }

// StateDir is the host's state directory.
func (h *Host) StateDir() string { return h.state }

// GuestImageDir is the guest image every job launches.
func (h *Host) GuestImageDir() string { return h.guestImage }

// ToolchainImage is the toolchain image every job mounts.
func (h *Host) ToolchainImage() string { return h.toolchain }

// Firmware is the -bios image this host's TEE launches with ("" for sim).
func (h *Host) Firmware() string {
	return Firmware(h.tee, h.cfg.SNPFirmware, h.cfg.TDXFirmware, h.state)
}

// SigningKeyPath is the signing key's path, its public half beside it (.pub); "" when
// Config.Signer signs. KeyCreated says whether New created it.
func (h *Host) SigningKeyPath() string { return h.keyPath }

// KeyCreated says whether New created the signing key.
func (h *Host) KeyCreated() bool { return h.keyCreated }

// Logged says whether the host key's signatures are entered in a transparency log.
func (h *Host) Logged() bool { return h.logged }

// Signer signs every job's provenance unless the job brings its own.
func (h *Host) Signer() provenance.Signer { return h.signer }

// Job is one build on this host: the request and where its files are.
type Job struct {
	Spec job.Spec
	// SourceDir holds the source; OutDir receives the artifacts and the bundle; WorkDir
	// holds the disks while the VM runs (default: beside OutDir).
	SourceDir, OutDir, WorkDir string
	// Console receives the guest console (the build log) live; nil discards it.
	Console io.Writer
	// OnStage is told as the build reaches each stage; it must not block.
	OnStage func(build.Stage)
	// Logger overrides the host's for this job; Signer the host's signer.
	Logger *slog.Logger
	Signer provenance.Signer
	// Unsigned leaves the provenance statement unsigned (build.Options.Unsigned): the
	// job's submitter signs it.
	Unsigned bool
	// ExpectSourceSHA256 and ExpectToolchainRoot hold the build to a source archive and a
	// toolchain root hash the caller checked (build.Options.ExpectSourceSHA256 and
	// ExpectToolchainRoot): a rebuild from provenance.
	ExpectSourceSHA256, ExpectToolchainRoot string
}

// Run runs one job: its spec's TEE must be the host's (or left to it).
func (h *Host) Run(ctx context.Context, j Job) (*build.Outcome, error) {
	o, err := h.Options(j)
	if err != nil {
		return nil, err
	}
	return build.Run(ctx, o)
}

// Options are the build.Options Run passes to build.Run for j: the job's spec with this
// host's images, keys and TEE set-up.
func (h *Host) Options(j Job) (build.Options, error) {
	spec := j.Spec
	switch {
	case spec.AutoTEE():
		spec.TEE = h.tee
	case spec.TEE != h.tee:
		return build.Options{}, fmt.Errorf("%w: the job asks for TEE %q, this host runs %q jobs", build.ErrInput, spec.TEE, h.tee)
	}
	o := build.Options{
		Spec: spec, SourceDir: j.SourceDir, OutDir: j.OutDir, WorkDir: j.WorkDir,
		GuestImageDir: h.guestImage, ToolchainImage: h.toolchain, SimDir: h.cfg.SimDir,
		Signer: h.signer, Firmware: h.Firmware(), QGS: h.cfg.QGS, KDS: h.kds,
		Accel: h.cfg.Accel, QEMU: h.cfg.QEMU, Console: j.Console, Logger: h.cfg.Logger,
		Version: h.cfg.Version, OnStage: j.OnStage, Unsigned: j.Unsigned,
		ExpectSourceSHA256: j.ExpectSourceSHA256, ExpectToolchainRoot: j.ExpectToolchainRoot,
	}
	if j.Logger != nil {
		o.Logger = j.Logger
	}
	if j.Signer != nil {
		o.Signer = j.Signer
	}
	return o, nil
}
