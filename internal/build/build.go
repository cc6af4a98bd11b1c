// Package build runs one confidential build on this host: the host half of the data flow in
// docs/design.md. It packs the source, writes the job manifest, launches the guest through
// vmm with the manifest digest bound at launch, reads the output disk with strict bounds,
// completes the evidence, and writes the artifacts and a signed provenance bundle to the
// output directory.
//
// Nothing the guest returns is trusted here beyond what is needed to produce the provenance:
// the verifier recomputes every binding. The host still checks the evidence it is about to
// sign (fail early, never publish what a verifier would reject).
package build

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/kds"
	"github.com/cloche-dev/cloche/attest/verifier"
	"github.com/cloche-dev/cloche/internal/atomicfile"
	"github.com/cloche-dev/cloche/internal/disk"
	"github.com/cloche-dev/cloche/internal/fileio"
	"github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/internal/image/toolchain"
	"github.com/cloche-dev/cloche/internal/vmm"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/reference"
	"github.com/cloche-dev/cloche/source"
)

// BundleName is the provenance file written next to the artifacts.
const BundleName = "provenance.sigstore.json"

// StatementName is the unsigned provenance statement written instead of the bundle when
// Options.Unsigned asks for it (the signing happens elsewhere).
const StatementName = "provenance.intoto.json"

// Sentinel errors callers branch on; each is wrapped with the details.
var (
	ErrInput       = errors.New("invalid build input")
	ErrBuildFailed = errors.New("build failed")
	ErrGuest       = errors.New("guest failure")
	ErrEvidence    = errors.New("evidence check failed on the host")
)

// Options describe one build: the job as asked for (Spec), where its source and outputs
// are, and what the host launches it with. Zero values take the documented defaults.
type Options struct {
	job.Spec
	SourceDir string
	OutDir    string

	GuestImageDir  string // from `cloche image guest`
	ToolchainImage string // from `cloche image toolchain`
	SimDir         string // simulated secure processor state (keys and chain); sim only
	Signer         provenance.Signer
	// Unsigned writes the provenance statement (StatementName) instead of signing it: for
	// an agent whose client signs with an identity the agent never holds (a workflow's
	// OIDC token). Signer is then not used.
	Unsigned bool
	// Firmware is the -bios image for snp (AmdSev OVMF) and tdx (TDVF).
	Firmware string
	// QGS is the TDX quote generation service address (vmm.TDXOptions.QGS).
	QGS string
	// KDS completes SNP evidence with the VCEK chain; nil means an online client without a
	// cache.
	KDS *kds.Client

	Accel string // tcg, kvm or auto; default auto
	QEMU  string

	// Console receives the guest's serial console (the build log) live.
	Console io.Writer
	Logger  *slog.Logger
	Version string // cloche version recorded in the provenance
	// WorkDir holds the disks while the VM runs; a temp dir beside OutDir if empty.
	WorkDir string

	// ExpectSourceSHA256 and ExpectToolchainRoot, when set, are the source archive's
	// SHA-256 and the toolchain image's dm-verity root hash this build must use: Run
	// refuses (ErrInput) before the VM starts when the packed source or the loaded
	// toolchain differs. A rebuild from provenance checks both up front; these keep the
	// inputs from changing between that check and the build.
	ExpectSourceSHA256  string
	ExpectToolchainRoot string

	// OnStage, when set, is told as the build reaches each Stage (the agent shows
	// them as its job states). It runs on the build's goroutine and must not block.
	OnStage func(Stage)

	// beforeLaunch lets this package's tests play a hostile host that alters the input disk
	// after the manifest digest was bound; alterManifest one that writes a manifest the
	// host-side checks would have refused.
	beforeLaunch  func(inputDisk string) error
	alterManifest func(m *job.Manifest)
	// afterDepsDownload plays a host that alters the fetched dependencies (the module proxy
	// tree in dir) before they are packed.
	afterDepsDownload func(dir string) error
}

// Stage is a point a build reaches, reported through Options.OnStage.
type Stage string

const (
	// StageVM: the disks are ready and the VM is being started.
	StageVM Stage = "vm"
	// StageCollect: the VM has powered off; its output is being read, checked and signed.
	StageCollect Stage = "collect"
)

func (o *Options) stage(s Stage) {
	if o.OnStage != nil {
		o.OnStage(s)
	}
}

// Outcome is what a successful build produced.
type Outcome struct {
	Artifacts []job.Artifact
	// Checksums is the SHA256SUMS file of the artifacts the host wrote into OutDir, a
	// subject of the statement too (provenance.ChecksumsName); nil when an artifact has
	// that name itself.
	Checksums   *job.Artifact
	ArtifactDir string // OutDir
	// BundlePath is the signed bundle; StatementPath the unsigned statement instead, with
	// Options.Unsigned. The other is "".
	BundlePath    string
	StatementPath string
	Measurement   string // hex
	SourceTree    string
	// ToolchainDigest is the verity root hash of the toolchain the guest mounted, what a
	// verifier pins (verify.Pins.ToolchainDigest).
	ToolchainDigest string
	// Commit and Tag are what the guest attested ("" when no commit object was sent).
	Commit string
	Tag    string
	TEE    attest.TEE
	// SimRootPath is the simulated TEE's root certificate, for --trusted-sim-root; empty
	// for hardware TEEs.
	SimRootPath string
	Duration    time.Duration
}

// FailureDetails accompanies ErrBuildFailed: what the guest reported.
type FailureDetails struct {
	ExitCode int
	Error    string
	LogTail  string
}

// BuildError is returned when the guest ran but the build did not succeed.
type BuildError struct {
	FailureDetails
	Err error
}

func (e *BuildError) Error() string {
	var b strings.Builder
	b.WriteString(e.Err.Error())
	if e.FailureDetails.Error != "" {
		fmt.Fprintf(&b, ": %s", e.FailureDetails.Error)
	}
	if e.ExitCode > 0 {
		fmt.Fprintf(&b, " (exit code %d)", e.ExitCode)
	}
	if e.LogTail != "" {
		fmt.Fprintf(&b, "\n--- last lines of the build log ---\n%s", e.LogTail)
	}
	return b.String()
}

func (e *BuildError) Unwrap() error { return e.Err }

func (o *Options) setDefaults() {
	if o.Workdir == "" {
		o.Workdir = "."
	}
	if o.TEE == "" {
		o.TEE = attest.TEESim
	}
	if o.TimeoutSeconds == 0 {
		o.SetTimeout(DefaultTimeout)
	}
	if o.MaxOutputBytes == 0 {
		o.MaxOutputBytes = DefaultMaxOutputBytes
	}
	if o.VCPUs == 0 {
		o.VCPUs = DefaultVCPUs
	}
	if o.MemoryMiB == 0 {
		o.MemoryMiB = DefaultMemoryMiB
	}
	if o.Artifacts == nil {
		o.Artifacts = []string{} // every file the build created or changed
	}
	if o.Accel == "" {
		o.Accel = "auto"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Console == nil {
		o.Console = io.Discard
	}
}

func (o *Options) check() error {
	if err := o.CheckInput(); err != nil {
		return err
	}
	switch o.TEE {
	case attest.TEESim:
		if o.SimDir == "" {
			return fmt.Errorf("%w: no simulated-TEE state directory given", ErrInput)
		}
	case attest.TEESNP, attest.TEETDX:
		if o.Firmware == "" {
			return fmt.Errorf("%w: a %s build needs the firmware image (Options.Firmware)", ErrInput, o.TEE)
		}
	default:
		return fmt.Errorf("%w: TEE %q, expected sim, snp or tdx", ErrInput, o.TEE)
	}
	if o.Signer == nil && !o.Unsigned {
		return fmt.Errorf("%w: no signer configured", ErrInput)
	}
	if o.Version == "" {
		return fmt.Errorf("%w: no cloche version given for the provenance's builder", ErrInput)
	}
	return nil
}

// vmSlack is the time the VM gets on top of the build's own limit: boot, unpacking, hashing,
// writing the output. The guest enforces the build limit itself; the host limit only stops a
// guest that stopped answering.
const vmSlack = 3 * time.Minute

// Run performs the build. On success the artifacts and the bundle are in OutDir; on failure
// OutDir is left as it was.
func Run(ctx context.Context, o Options) (*Outcome, error) {
	o.setDefaults()
	if err := o.check(); err != nil {
		return nil, err
	}
	start := time.Now()
	r, err := newRun(&o)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(r.work)
	if err := r.prepareInput(ctx); err != nil {
		return nil, err
	}
	if err := r.launch(ctx); err != nil {
		return nil, err
	}
	out, res, err := r.collect()
	if err != nil {
		return nil, err
	}
	measurement, provFile, err := r.attestAndSign(ctx, out)
	if err != nil {
		return nil, err
	}
	checksums, provPath, err := r.publish(res, provFile)
	if err != nil {
		return nil, err
	}
	bundlePath, statementPath := provPath, ""
	if o.Unsigned {
		bundlePath, statementPath = "", provPath
	}
	return &Outcome{
		Artifacts:       res.Artifacts,
		Checksums:       checksums,
		ArtifactDir:     o.OutDir,
		BundlePath:      bundlePath,
		StatementPath:   statementPath,
		Measurement:     hex.EncodeToString(measurement),
		SourceTree:      res.SourceTree,
		ToolchainDigest: r.tc.VerityRootHash,
		Commit:          res.SourceCommit,
		Tag:             res.SourceTag,
		TEE:             o.TEE,
		SimRootPath:     r.ht.simRootPath(),
		Duration:        time.Since(start),
	}, nil
}

// run is one build's state as it moves through Run's steps.
type run struct {
	o    *Options
	log  *slog.Logger
	gimg *guestimage.Image
	tc   *job.Toolchain
	ht   *hostTEE
	// work holds the disks and the extracted output while the build runs.
	work string

	manifest       []byte
	manifestDigest [32]byte
	inputDisk      string
	outputDisk     string
	depsDisk       string // "" without Options.Deps
	// started and finished bracket the VM's run, for the provenance.
	started, finished time.Time
}

// newRun loads the images and the TEE's host side, and makes the output and work
// directories.
func newRun(o *Options) (*run, error) {
	gimg, err := guestimage.Load(o.GuestImageDir)
	if err != nil {
		return nil, fmt.Errorf("%w: guest image: %w", ErrInput, err)
	}
	tc, err := toolchain.Load(o.ToolchainImage)
	if err != nil {
		return nil, fmt.Errorf("%w: toolchain image: %w", ErrInput, err)
	}
	if o.ExpectToolchainRoot != "" && tc.VerityRootHash != o.ExpectToolchainRoot {
		return nil, fmt.Errorf("%w: toolchain image %s: toolchain.verityRootHash is %s, expected %s", ErrInput, o.ToolchainImage, tc.VerityRootHash, o.ExpectToolchainRoot)
	}
	ht, err := newHostTEE(o)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("output directory: %w", err)
	}
	workParent := o.WorkDir
	if workParent == "" {
		workParent = filepath.Dir(filepath.Clean(o.OutDir))
	}
	work, err := os.MkdirTemp(workParent, ".cloche-work-")
	if err != nil {
		return nil, fmt.Errorf("work directory: %w", err)
	}
	return &run{o: o, log: o.Logger, gimg: gimg, tc: tc, ht: ht, work: work}, nil
}

// prepareInput is step 1: the source archive, the manifest that names it, and the input
// and output disks. The commit is checked here too, although the guest checks it again: a
// checkout that differs from its commit fails before the VM starts.
func (r *run) prepareInput(ctx context.Context) error {
	o := r.o
	if err := CheckCommit(o.SourceDir, o.Ref, o.Git); err != nil {
		return err
	}
	archivePath := filepath.Join(r.work, "source.tar")
	archiveSHA, archiveSize, err := source.PackFile(ctx, o.SourceDir, o.SourceDateEpoch, archivePath)
	if err != nil {
		return fmt.Errorf("%w: packing source %s: %w", ErrInput, o.SourceDir, err)
	}
	r.log.Info("source packed", "sha256", archiveSHA, "bytes", archiveSize)
	if o.ExpectSourceSHA256 != "" && archiveSHA != o.ExpectSourceSHA256 {
		return fmt.Errorf("%w: source %s: source.archiveSha256 is %s, expected %s (the source changed)", ErrInput, o.SourceDir, archiveSHA, o.ExpectSourceSHA256)
	}
	deps, depsArchive, err := r.prepareDeps(ctx)
	if err != nil {
		return err
	}
	if err := r.writeManifest(job.Source{Repository: o.Repository, Ref: o.Ref, ArchiveSHA256: archiveSHA, ArchiveSize: archiveSize}, deps); err != nil {
		return err
	}
	if err := r.writeDisks(archivePath, archiveSize); err != nil {
		return err
	}
	if deps != nil {
		r.depsDisk = filepath.Join(r.work, "deps.img")
		if err := writeDepsDisk(depsArchive, r.depsDisk); err != nil {
			return err
		}
	}
	if o.beforeLaunch != nil {
		return o.beforeLaunch(r.inputDisk)
	}
	return nil
}

// writeManifest fixes everything the build may depend on; its digest is bound at launch.
func (r *run) writeManifest(src job.Source, deps *job.Deps) error {
	o := r.o
	invocation := o.InvocationID
	if invocation == "" {
		invocation = "local:" + randomID()
	}
	m := &job.Manifest{
		Type:            job.ManifestType,
		InvocationID:    invocation,
		TEE:             string(o.TEE),
		Source:          src,
		Toolchain:       *r.tc,
		Command:         o.Command,
		Workdir:         o.Workdir,
		Env:             o.Env,
		Artifacts:       o.Artifacts,
		SourceDateEpoch: o.SourceDateEpoch,
		TimeoutSeconds:  o.TimeoutSeconds,
		MaxOutputBytes:  o.MaxOutputBytes,
		Rlimits:         o.Rlimits,
		Deps:            deps,
	}
	m.Source.SetGitObjects(o.Git)
	if o.alterManifest != nil {
		o.alterManifest(m)
	}
	if err := m.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInput, err)
	}
	manifest, err := job.Marshal(m)
	if err != nil {
		return err
	}
	r.manifest, r.manifestDigest = manifest, job.ManifestDigest(manifest)
	return nil
}

// writeDisks writes the input disk (manifest and archive) and an empty output disk with
// room for the payload plus tar headers and the log's framing.
func (r *run) writeDisks(archivePath string, archiveSize int64) error {
	r.inputDisk = filepath.Join(r.work, "input.img")
	af, err := os.Open(archivePath)
	if err != nil {
		return err
	}
	err = disk.WriteInput(r.inputDisk, r.manifest, af, archiveSize)
	af.Close()
	if err != nil {
		return fmt.Errorf("writing input disk: %w", err)
	}
	r.outputDisk = filepath.Join(r.work, "output.img")
	if err := vmm.CreateOutputDisk(r.outputDisk, r.o.MaxOutputBytes+16<<20); err != nil {
		return fmt.Errorf("creating output disk: %w", err)
	}
	return nil
}

// launch is step 2: the VM, with the manifest digest bound (SNP HOST_DATA, TDX
// MRCONFIGID, or the simulated secure processor's HOST_DATA).
func (r *run) launch(ctx context.Context) error {
	o := r.o
	vmCfg := vmm.Config{
		Log:           r.log,
		QEMU:          o.QEMU,
		Accel:         o.Accel,
		Kernel:        filepath.Join(r.gimg.Dir, r.gimg.Kernel.Path),
		Initrd:        filepath.Join(r.gimg.Dir, r.gimg.Initrd.Path),
		Cmdline:       r.gimg.Cmdline,
		VCPUs:         o.VCPUs,
		MemoryMiB:     o.MemoryMiB,
		InputDisk:     r.inputDisk,
		ToolchainDisk: o.ToolchainImage,
		OutputDisk:    r.outputDisk,
		DepsDisk:      r.depsDisk,
		TEE:           o.TEE,
		Console:       o.Console,
		Timeout:       o.Timeout() + vmSlack,
		RunDir:        r.work,
	}
	if err := r.ht.configure(&vmCfg, o, r.gimg, r.manifestDigest); err != nil {
		return err
	}
	r.log.Info("launching guest", "tee", o.TEE, "host_data", hex.EncodeToString(r.manifestDigest[:]))
	o.stage(StageVM)
	r.started = time.Now().UTC()
	_, err := vmm.Run(ctx, vmCfg)
	r.finished = time.Now().UTC()
	switch {
	case errors.Is(err, vmm.ErrTimeout):
		return &BuildError{Err: ErrGuest, FailureDetails: FailureDetails{ExitCode: -1,
			Error: fmt.Sprintf("the VM did not finish within %s (build limit %s plus %s for boot and output)", o.Timeout()+vmSlack, o.Timeout(), vmSlack)}}
	case err != nil:
		// %w twice: callers tell a host that cannot run the VM (QEMU missing, TEE
		// unavailable) from a guest that failed.
		return fmt.Errorf("%w: running the VM: %w", ErrGuest, err)
	}
	return nil
}

// collect is step 3: the output disk, read with strict bounds, and the guest's result.
func (r *run) collect() (*disk.Output, *job.Result, error) {
	r.o.stage(StageCollect)
	extract := filepath.Join(r.work, "out")
	if err := os.Mkdir(extract, 0o755); err != nil {
		return nil, nil, err
	}
	out, err := disk.ReadOutput(r.outputDisk, extract, r.o.MaxOutputBytes+16<<20)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: reading the output disk: %w", ErrGuest, err)
	}
	if out.Result == nil {
		msg := cmp.Or(out.Error, "the guest wrote no result record")
		return nil, nil, &BuildError{Err: ErrGuest, FailureDetails: FailureDetails{ExitCode: -1, Error: msg, LogTail: tail(out.Log, 20)}}
	}
	res, err := job.ParseResult(out.Result)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrGuest, err)
	}
	if res.Error != "" || res.ExitCode != 0 || out.Error != "" {
		msg := cmp.Or(res.Error, out.Error, fmt.Sprintf("the build command exited with code %d", res.ExitCode))
		return nil, nil, &BuildError{Err: ErrBuildFailed, FailureDetails: FailureDetails{ExitCode: res.ExitCode, Error: msg, LogTail: tail(out.Log, 20)}}
	}
	if out.Evidence == nil {
		return nil, nil, fmt.Errorf("%w: the guest wrote no evidence", ErrGuest)
	}
	return out, res, nil
}

// attestAndSign is step 4: the evidence, completed and checked before anything is signed
// (never publish what a verifier would reject), then the signed provenance statement. It
// returns the launch measurement and the bundle, or the statement itself with
// Options.Unsigned.
func (r *run) attestAndSign(ctx context.Context, out *disk.Output) ([]byte, []byte, error) {
	ev, err := attest.ParseEvidence(out.Evidence)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrEvidence, err)
	}
	if err := r.ht.complete(ctx, ev); err != nil {
		return nil, nil, fmt.Errorf("%w: completing evidence: %w", ErrEvidence, err)
	}
	verifyOpts, err := r.ht.verifyOptions(r.manifestDigest, job.ReportData(out.Result))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrEvidence, err)
	}
	claims, err := verifier.Verify(ev, verifyOpts)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrEvidence, err)
	}
	evidence, err := ev.Marshal()
	if err != nil {
		return nil, nil, err
	}
	guest, err := r.guestImageRecord(claims.Measurement)
	if err != nil {
		return nil, nil, err
	}
	stmt, err := provenance.NewStatement(provenance.Input{
		Manifest: r.manifest, Result: out.Result, Evidence: evidence, Guest: guest,
		BuilderVersion: r.o.Version, StartedOn: r.started, FinishedOn: r.finished,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("building the provenance statement: %w", err)
	}
	if r.o.Unsigned {
		return claims.Measurement, stmt, nil
	}
	bundle, err := r.o.Signer.SignStatement(ctx, stmt)
	if err != nil {
		return nil, nil, fmt.Errorf("signing the provenance: %w", err)
	}
	return claims.Measurement, bundle, nil
}

// guestImageRecord is what the provenance says of the guest image: its files and launch,
// the reference values it shipped with when they list this launch (the verifier checks
// their signature; the host only records which they were), and which release it is
// (release.json, written when a release was fetched and checked) or a local build: the
// host's word, which the verifier checks against the reference values that list the
// measurement.
func (r *run) guestImageRecord(measurement []byte) (provenance.GuestImage, error) {
	o, gimg := r.o, r.gimg
	refValues, err := reference.ShippedWith(gimg.Dir, reference.Launch{TEE: o.TEE, VCPUs: o.VCPUs, MemoryMiB: o.MemoryMiB,
		KernelSHA256: gimg.Kernel.SHA256, InitrdSHA256: gimg.Initrd.SHA256, Measurement: measurement})
	if err != nil {
		r.log.Warn("not recording the guest image's reference values", "err", err)
	}
	rel, err := guestimage.LoadRelease(gimg.Dir)
	if err != nil {
		return provenance.GuestImage{}, fmt.Errorf("guest image release: %w", err)
	}
	g := provenance.GuestImage{
		KernelSHA256:    gimg.Kernel.SHA256,
		InitrdSHA256:    gimg.Initrd.SHA256,
		Cmdline:         gimg.Cmdline,
		Measurement:     hex.EncodeToString(measurement),
		VCPUs:           o.VCPUs,
		MemoryMiB:       o.MemoryMiB,
		Recipe:          gimg.Recipe,
		ReferenceValues: refValues,
	}
	if rel != nil {
		g.Release, g.Repository = rel.Tag, rel.Repository
	}
	return g, nil
}

// publish is step 5: the artifacts into OutDir, each checked against the result record
// and moved by rename, then their SHA256SUMS, then the bundle (or the unsigned statement)
// last. It returns the checksums file (nil when the build made its own) and the path of
// the bundle or statement.
func (r *run) publish(res *job.Result, provFile []byte) (*job.Artifact, string, error) {
	extract := filepath.Join(r.work, "out")
	for _, a := range res.Artifacts {
		src := filepath.Join(extract, "artifacts", filepath.FromSlash(a.Path))
		if err := checkFile(src, a); err != nil {
			return nil, "", fmt.Errorf("%w: %w", ErrGuest, err)
		}
		dst := filepath.Join(r.o.OutDir, filepath.FromSlash(a.Path))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return nil, "", err
		}
		if err := moveFile(src, dst); err != nil {
			return nil, "", err
		}
	}
	checksums, err := writeChecksums(r.o.OutDir, res.Artifacts)
	if err != nil {
		return nil, "", err
	}
	name := BundleName
	if r.o.Unsigned {
		name = StatementName
	}
	p := filepath.Join(r.o.OutDir, name)
	if err := atomicfile.WriteFile(p, provFile, 0o644); err != nil {
		return nil, "", err
	}
	return checksums, p, nil
}

// writeChecksums writes the artifacts' SHA256SUMS into dir, the content the statement's
// subject of that name digests (from the result record, which the verifier recomputes it
// from). It writes nothing when an artifact has that name.
func writeChecksums(dir string, artifacts []job.Artifact) (*job.Artifact, error) {
	a := provenance.ChecksumsArtifact(artifacts)
	if a == nil {
		return nil, nil
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, provenance.ChecksumsName), provenance.Checksums(artifacts), 0o644); err != nil {
		return nil, fmt.Errorf("writing %s: %w", provenance.ChecksumsName, err)
	}
	return a, nil
}

// CheckCommit ties git objects (Options.Git) to the source directory, as the guest will,
// so that a checkout that is not its commit fails before anything is packed or launched.
// Nil objects attest nothing and pass.
func CheckCommit(dir, ref string, git *source.GitObjects) error {
	if git == nil {
		return nil
	}
	tree, err := source.TreeIDFormat(dir, git.Format)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInput, err)
	}
	a, err := source.AttestCommit(*git, tree)
	if err != nil {
		return fmt.Errorf("%w: the source directory %s differs from commit %s (build a clean checkout: untracked or modified files would be built but not named by the commit): %w",
			ErrInput, dir, git.Format.ObjectID("commit", git.Commit), err)
	}
	if err := source.CheckTagRef(ref, a.Tag); err != nil {
		return fmt.Errorf("%w: %w", ErrInput, err)
	}
	return nil
}

// checkFile re-hashes an extracted artifact against the result record: the output disk's
// tar entry and the record are both written by the guest, but a mismatch means a guest bug
// or a damaged disk, and must never reach a signed statement.
func checkFile(path string, a job.Artifact) error {
	sum, size, err := fileio.SHA256(path)
	if err != nil {
		return fmt.Errorf("artifact %s: %w", a.Path, err)
	}
	if size != a.Size || sum != a.SHA256 {
		return fmt.Errorf("artifact %s on the output disk (sha256 %s, %d bytes) differs from the result record (sha256 %s, %d bytes)", a.Path, sum, size, a.SHA256, a.Size)
	}
	return nil
}

func tail(b []byte, lines int) string {
	s := strings.TrimRight(string(b), "\n")
	if s == "" {
		return ""
	}
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

func randomID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b[:])
}
