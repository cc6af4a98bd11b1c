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
	"github.com/cloche-dev/cloche/disk"
	guestimage "github.com/cloche-dev/cloche/image/guest"
	"github.com/cloche-dev/cloche/image/toolchain"
	"github.com/cloche-dev/cloche/internal/atomicfile"
	"github.com/cloche-dev/cloche/internal/fileio"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/reference"
	"github.com/cloche-dev/cloche/source"
	"github.com/cloche-dev/cloche/vmm"
)

// BundleName is the provenance file written next to the artifacts.
const BundleName = "provenance.sigstore.json"

// Sentinel errors callers branch on; each is wrapped with the details.
var (
	ErrInput       = errors.New("invalid build input")
	ErrBuildFailed = errors.New("build failed")
	ErrGuest       = errors.New("guest failure")
	ErrEvidence    = errors.New("evidence check failed on the host")
)

// Options describe one build. Zero values take the documented defaults.
type Options struct {
	SourceDir string
	Command   []string
	Workdir   string // relative to the source root; default "."
	Env       map[string]string
	// Artifacts are path.Match patterns relative to the source root; none means every
	// regular file the command created or changed.
	Artifacts []string
	OutDir    string

	TEE            attest.TEE // sim, snp or tdx
	GuestImageDir  string     // from `cloche image guest`
	ToolchainImage string     // from `cloche image toolchain`
	SimDir         string     // simulated secure processor state (keys and chain); sim only
	Signer         provenance.Signer
	// Firmware is the -bios image for snp (AmdSev OVMF) and tdx (TDVF).
	Firmware string
	// QGS is the TDX quote generation service address (vmm.TDXOptions.QGS).
	QGS string
	// KDS completes SNP evidence with the VCEK chain; nil means an online client without a
	// cache.
	KDS *kds.Client

	Timeout         time.Duration // build command limit inside the guest; default 10 min
	MaxOutputBytes  int64         // artifacts + log; default 256 MiB
	VCPUs           int           // default 2
	MemoryMiB       int           // default 2048
	Accel           string        // tcg, kvm or auto; default auto
	QEMU            string
	SourceDateEpoch int64
	InvocationID    string // default: a random local id
	// Repository and Ref are recorded as the host's word (a keyless signer's certificate
	// binds them).
	Repository string
	Ref        string
	// Git are the raw git objects naming the source (source.ReadGitObjects): the guest
	// checks the commit's tree against what it unpacked and attests the commit id, and the
	// tag's, in the result record. Nil: no commit is attested.
	Git *source.GitObjects

	// Console receives the guest's serial console (the build log) live.
	Console io.Writer
	Logger  *slog.Logger
	Version string // cloche version recorded in the provenance
	// WorkDir holds the disks while the VM runs; a temp dir beside OutDir if empty.
	WorkDir string

	// OnStage, when set, is told as the build reaches each Stage (the runner agent shows
	// them as its job states). It runs on the build's goroutine and must not block.
	OnStage func(Stage)

	// beforeLaunch lets this package's tests play a hostile host that alters the input disk
	// after the manifest digest was bound; alterManifest one that writes a manifest the
	// host-side checks would have refused.
	beforeLaunch  func(inputDisk string) error
	alterManifest func(m *job.Manifest)
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
	Artifacts   []job.Artifact
	ArtifactDir string // OutDir
	BundlePath  string
	Measurement string // hex
	SourceTree  string
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
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
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
	if o.Signer == nil {
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
	log := o.Logger

	gimg, err := guestimage.Load(o.GuestImageDir)
	if err != nil {
		return nil, fmt.Errorf("%w: guest image: %w", ErrInput, err)
	}
	tc, err := toolchain.Load(o.ToolchainImage)
	if err != nil {
		return nil, fmt.Errorf("%w: toolchain image: %w", ErrInput, err)
	}
	ht, err := newHostTEE(&o)
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
	defer os.RemoveAll(work)

	// 1. Source archive and manifest. The commit is checked here too, although the guest
	// checks it again: a checkout that differs from its commit fails before the VM starts.
	if err := CheckCommit(o.SourceDir, o.Ref, o.Git); err != nil {
		return nil, err
	}
	archivePath := filepath.Join(work, "source.tar")
	archiveSHA, archiveSize, err := source.PackFile(ctx, o.SourceDir, o.SourceDateEpoch, archivePath)
	if err != nil {
		return nil, fmt.Errorf("%w: packing source %s: %w", ErrInput, o.SourceDir, err)
	}
	log.Info("source packed", "sha256", archiveSHA, "bytes", archiveSize)
	invocation := o.InvocationID
	if invocation == "" {
		invocation = "local:" + randomID()
	}
	m := &job.Manifest{
		Type:            job.ManifestType,
		InvocationID:    invocation,
		TEE:             string(o.TEE),
		Source:          job.Source{Repository: o.Repository, Ref: o.Ref, ArchiveSHA256: archiveSHA, ArchiveSize: archiveSize},
		Toolchain:       *tc,
		Command:         o.Command,
		Workdir:         o.Workdir,
		Env:             o.Env,
		Artifacts:       o.Artifacts,
		SourceDateEpoch: o.SourceDateEpoch,
		TimeoutSeconds:  int64((o.Timeout + time.Second - 1) / time.Second),
		MaxOutputBytes:  o.MaxOutputBytes,
	}
	m.Source.SetGitObjects(o.Git)
	if o.alterManifest != nil {
		o.alterManifest(m)
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInput, err)
	}
	manifest, err := job.Marshal(m)
	if err != nil {
		return nil, err
	}
	manifestDigest := job.ManifestDigest(manifest)

	// 2. Disks.
	inputDisk := filepath.Join(work, "input.img")
	af, err := os.Open(archivePath)
	if err != nil {
		return nil, err
	}
	err = disk.WriteInput(inputDisk, manifest, af, archiveSize)
	af.Close()
	if err != nil {
		return nil, fmt.Errorf("writing input disk: %w", err)
	}
	outputDisk := filepath.Join(work, "output.img")
	// Room for the payload plus tar headers and the log's framing.
	if err := vmm.CreateOutputDisk(outputDisk, o.MaxOutputBytes+16<<20); err != nil {
		return nil, fmt.Errorf("creating output disk: %w", err)
	}

	if o.beforeLaunch != nil {
		if err := o.beforeLaunch(inputDisk); err != nil {
			return nil, err
		}
	}

	// 3. Launch with the manifest digest bound (SNP HOST_DATA, TDX MRCONFIGID, or the
	// simulated secure processor's HOST_DATA).
	vmCfg := vmm.Config{
		Log:           log,
		QEMU:          o.QEMU,
		Accel:         o.Accel,
		Kernel:        filepath.Join(gimg.Dir, gimg.Kernel.Path),
		Initrd:        filepath.Join(gimg.Dir, gimg.Initrd.Path),
		Cmdline:       gimg.Cmdline,
		VCPUs:         o.VCPUs,
		MemoryMiB:     o.MemoryMiB,
		InputDisk:     inputDisk,
		ToolchainDisk: o.ToolchainImage,
		OutputDisk:    outputDisk,
		TEE:           o.TEE,
		Console:       o.Console,
		Timeout:       o.Timeout + vmSlack,
		RunDir:        work,
	}
	if err := ht.configure(&vmCfg, &o, gimg, manifestDigest); err != nil {
		return nil, err
	}
	log.Info("launching guest", "tee", o.TEE, "host_data", hex.EncodeToString(manifestDigest[:]))
	o.stage(StageVM)
	started := time.Now().UTC()
	_, err = vmm.Run(ctx, vmCfg)
	finished := time.Now().UTC()
	if err != nil {
		if errors.Is(err, vmm.ErrTimeout) {
			return nil, &BuildError{Err: ErrGuest, FailureDetails: FailureDetails{ExitCode: -1,
				Error: fmt.Sprintf("the VM did not finish within %s (build limit %s plus %s for boot and output)", o.Timeout+vmSlack, o.Timeout, vmSlack)}}
		}
		// %w twice: callers tell a host that cannot run the VM (QEMU missing, TEE
		// unavailable) from a guest that failed.
		return nil, fmt.Errorf("%w: running the VM: %w", ErrGuest, err)
	}

	// 4. Output disk, strictly bounded.
	o.stage(StageCollect)
	extract := filepath.Join(work, "out")
	if err := os.Mkdir(extract, 0o755); err != nil {
		return nil, err
	}
	out, err := disk.ReadOutput(outputDisk, extract, o.MaxOutputBytes+16<<20)
	if err != nil {
		return nil, fmt.Errorf("%w: reading the output disk: %w", ErrGuest, err)
	}
	if out.Result == nil {
		msg := out.Error
		if msg == "" {
			msg = "the guest wrote no result record"
		}
		return nil, &BuildError{Err: ErrGuest, FailureDetails: FailureDetails{ExitCode: -1, Error: msg, LogTail: tail(out.Log, 20)}}
	}
	res, err := job.ParseResult(out.Result)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrGuest, err)
	}
	if res.Error != "" || res.ExitCode != 0 || out.Error != "" {
		msg := res.Error
		if msg == "" {
			msg = out.Error
		}
		if msg == "" {
			msg = fmt.Sprintf("the build command exited with code %d", res.ExitCode)
		}
		return nil, &BuildError{Err: ErrBuildFailed, FailureDetails: FailureDetails{ExitCode: res.ExitCode, Error: msg, LogTail: tail(out.Log, 20)}}
	}
	if out.Evidence == nil {
		return nil, fmt.Errorf("%w: the guest wrote no evidence", ErrGuest)
	}

	// 5. Complete and check the evidence before signing anything.
	ev, err := attest.ParseEvidence(out.Evidence)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrEvidence, err)
	}
	if err := ht.complete(ctx, ev); err != nil {
		return nil, fmt.Errorf("%w: completing evidence: %w", ErrEvidence, err)
	}
	verifyOpts, err := ht.verifyOptions(manifestDigest, job.ReportData(out.Result))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrEvidence, err)
	}
	claims, err := verifier.Verify(ev, verifyOpts)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrEvidence, err)
	}
	evidence, err := ev.Marshal()
	if err != nil {
		return nil, err
	}

	// 6. Provenance.
	// The guest release, and the reference values it shipped with when they list this
	// launch (the verifier checks their signature; the host only records which they were).
	refValues, err := reference.ShippedWith(gimg.Dir, reference.Launch{TEE: o.TEE, VCPUs: o.VCPUs, MemoryMiB: o.MemoryMiB,
		KernelSHA256: gimg.Kernel.SHA256, InitrdSHA256: gimg.Initrd.SHA256, Measurement: claims.Measurement})
	if err != nil {
		log.Warn("not recording the guest image's reference values", "err", err)
	}
	// Which release the image is (release.json, written when a release was fetched and
	// checked), or a local build: the host's word, which the verifier checks against the
	// reference values that list the measurement.
	rel, err := guestimage.LoadRelease(gimg.Dir)
	if err != nil {
		return nil, fmt.Errorf("guest image release: %w", err)
	}
	var release, repository string
	if rel != nil {
		release, repository = rel.Tag, rel.Repository
	}
	stmt, err := provenance.NewStatement(provenance.Input{
		Manifest: manifest,
		Result:   out.Result,
		Evidence: evidence,
		Guest: provenance.GuestImage{
			KernelSHA256:    gimg.Kernel.SHA256,
			InitrdSHA256:    gimg.Initrd.SHA256,
			Cmdline:         gimg.Cmdline,
			Measurement:     hex.EncodeToString(claims.Measurement),
			VCPUs:           o.VCPUs,
			MemoryMiB:       o.MemoryMiB,
			Recipe:          gimg.Recipe,
			ReferenceValues: refValues,
			Release:         release,
			Repository:      repository,
		},
		BuilderVersion: o.Version,
		StartedOn:      started,
		FinishedOn:     finished,
	})
	if err != nil {
		return nil, fmt.Errorf("building the provenance statement: %w", err)
	}
	bundle, err := o.Signer.SignStatement(ctx, stmt)
	if err != nil {
		return nil, fmt.Errorf("signing the provenance: %w", err)
	}

	// 7. Publish into OutDir: artifacts first, the bundle last, each by rename.
	for _, a := range res.Artifacts {
		src := filepath.Join(extract, "artifacts", filepath.FromSlash(a.Path))
		if err := checkFile(src, a); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrGuest, err)
		}
		dst := filepath.Join(o.OutDir, filepath.FromSlash(a.Path))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return nil, err
		}
		if err := moveFile(src, dst); err != nil {
			return nil, err
		}
	}
	bundlePath := filepath.Join(o.OutDir, BundleName)
	if err := atomicfile.WriteFile(bundlePath, bundle, 0o644); err != nil {
		return nil, err
	}
	return &Outcome{
		Artifacts:   res.Artifacts,
		ArtifactDir: o.OutDir,
		BundlePath:  bundlePath,
		Measurement: hex.EncodeToString(claims.Measurement),
		SourceTree:  res.SourceTree,
		Commit:      res.SourceCommit,
		Tag:         res.SourceTag,
		TEE:         o.TEE,
		SimRootPath: ht.simRootPath(),
		Duration:    time.Since(start),
	}, nil
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
