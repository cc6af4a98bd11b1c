// Package rebuild re-runs a build from its provenance and compares what it produces with
// what the provenance says the build produced: the independent-rebuild check.
//
// The bundle is read only as an expectation (verify.ReadExpectation: well formed and
// consistent with the manifest and result record it carries; its evidence is not checked).
// Nothing in it is trusted: the source is the caller's directory, which must pack to the
// archive digest the manifest records; the toolchain is an image this host holds, which
// must have the recorded dm-verity root hash; the dependencies are fetched again from the
// lockfile in that source; the command, working directory, environment, artifact patterns,
// SOURCE_DATE_EPOCH, time limit, output cap and resource limits are the manifest's, and the
// vCPUs and memory the statement's. The build itself is host.Host's Run, the path `cloche
// run` takes. A match then shows that the recorded inputs reproduce the recorded
// artifacts, bit for bit, on this host.
package rebuild

import (
	"cmp"
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"unicode"

	"github.com/cloche-dev/cloche/internal/build"
	"github.com/cloche-dev/cloche/internal/host"
	"github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/internal/image/toolchain"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/source"
	"github.com/cloche-dev/cloche/verify"
)

// Sentinel errors callers branch on.
var (
	// ErrRebuildMismatch: the rebuild ran, and its artifacts are not exactly the
	// provenance's subjects (one differs, is missing or is extra). The Report says which.
	ErrRebuildMismatch = errors.New("rebuilt artifacts differ from the provenance")
	// ErrInput: an input is unusable or is not what the provenance records; nothing was
	// launched. The error is an *InputError naming the Options field.
	ErrInput = errors.New("invalid rebuild input")
)

// InputError is a rebuild input refused before anything is launched. Field is the Options
// field (Bundle, SourceDir, OutDir, Toolchain); a CLI maps it to its flag.
type InputError struct {
	Field string
	Err   error
}

func (e *InputError) Error() string { return "rebuild input " + e.Field + ": " + e.Err.Error() }

// Unwrap gives ErrInput and the reason.
func (e *InputError) Unwrap() []error { return []error{ErrInput, e.Err} }

func inputErr(field string, format string, a ...any) error {
	return &InputError{Field: field, Err: fmt.Errorf(format, a...)}
}

// Options say what to rebuild, from what, and where.
type Options struct {
	// Bundle is the provenance bundle of the build to repeat.
	Bundle string
	// BundleKey, when set, must have signed Bundle. The rebuild trusts nothing in the
	// bundle either way; the key only says whose expectation it is.
	BundleKey crypto.PublicKey
	// SourceDir is the source tree; it must pack to the manifest's source.archiveSha256.
	SourceDir string
	// OutDir receives the rebuilt artifacts and their own provenance bundle; it must not
	// hold Bundle.
	OutDir string
	// Toolchain is the toolchain image file; "" looks it up by the recorded verity root
	// hash in Host.StateDir's image cache. Either way its root hash and SHA-256 must be the
	// recorded ones.
	Toolchain string
	// Host is the host to build on. Its Toolchain and ToolchainImage are ignored (the
	// rebuild uses the recorded toolchain); StateDir is required.
	Host host.Config
	// Console receives the guest console; nil discards it. OnStage is told as the build
	// reaches each stage.
	Console io.Writer
	OnStage func(build.Stage)
}

// Plan is a checked rebuild: the expectation and the job that repeats it.
type Plan struct {
	Expect *verify.Expectation
	// Spec is the job: the manifest's, with the statement's vCPUs and memory; the TEE is
	// left to the host.
	Spec          job.Spec
	ToolchainPath string
	Toolchain     *job.Toolchain
}

// Prepare checks every input against the provenance without building or launching
// anything, in this order: the bundle, the output directory, the job the manifest records,
// the source (its archive digest, then the recorded commit) and the toolchain (its root hash
// and digest). A bad bundle is refused within a second; the source is packed once, to
// io.Discard, to take its digest. Errors are *InputError.
func Prepare(ctx context.Context, o Options) (*Plan, error) {
	exp, err := verify.ReadExpectation(o.Bundle, o.BundleKey)
	if err != nil {
		return nil, &InputError{Field: "Bundle", Err: err}
	}
	if err := checkOutDir(o.OutDir, o.Bundle); err != nil {
		return nil, err
	}
	m := exp.Manifest
	p := &Plan{Expect: exp, Spec: spec(exp)}
	bo := build.Options{Spec: p.Spec, SourceDir: o.SourceDir, OutDir: o.OutDir, Accel: cmp.Or(o.Host.Accel, "auto")}
	if err := bo.CheckInput(); err != nil {
		return nil, buildInputError(err)
	}
	if err := checkSource(ctx, o.SourceDir, m, exp.Result); err != nil {
		return nil, err
	}
	if m.Source.CommitObject != nil {
		if err := build.CheckCommit(o.SourceDir, m.Source.Ref, p.Spec.Git); err != nil {
			return nil, &InputError{Field: "SourceDir", Err: err}
		}
	}
	tc, tcPath, err := findToolchain(o, m.Toolchain)
	if err != nil {
		return nil, err
	}
	p.Toolchain, p.ToolchainPath = tc, tcPath
	return p, nil
}

// spec is the job the provenance records.
func spec(exp *verify.Expectation) job.Spec {
	m, g := exp.Manifest, exp.Parsed.Guest
	s := job.Spec{
		Command: m.Command, Workdir: m.Workdir, Env: m.Env, Artifacts: m.Artifacts,
		TimeoutSeconds: m.TimeoutSeconds, MaxOutputBytes: m.MaxOutputBytes,
		VCPUs: g.VCPUs, MemoryMiB: g.MemoryMiB, SourceDateEpoch: m.SourceDateEpoch,
		Rlimits: m.Rlimits, Repository: m.Source.Repository, Ref: m.Source.Ref,
	}
	if m.Source.CommitObject != nil {
		git := m.Source.GitObjects()
		s.Git = &git
	}
	if m.Deps != nil {
		s.Deps = m.Deps.Kind
	}
	return s
}

// checkOutDir refuses an output directory that holds the bundle: the rebuild writes its
// own provenance.sigstore.json and artifacts there.
func checkOutDir(outDir, bundle string) error {
	if outDir == "" {
		return inputErr("OutDir", "expected the output directory for the rebuilt artifacts")
	}
	absOut, err1 := filepath.Abs(outDir)
	absBundle, err2 := filepath.Abs(bundle)
	if err := errors.Join(err1, err2); err != nil {
		return inputErr("OutDir", "%w", err)
	}
	if rel, err := filepath.Rel(absOut, absBundle); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return inputErr("OutDir", "%q holds the bundle %s: the rebuild would overwrite what it compares against; give another directory", outDir, bundle)
	}
	return nil
}

// buildInputError names a build.InputError's field as the rebuild's: SourceDir and OutDir
// are the caller's, and so is a recorded lockfile the source lacks (Deps); every other
// field is the provenance's manifest.
func buildInputError(err error) error {
	var ie *build.InputError
	if !errors.As(err, &ie) {
		return &InputError{Field: "Bundle", Err: err}
	}
	switch ie.Field {
	case "SourceDir", "OutDir":
		return &InputError{Field: ie.Field, Err: fmt.Errorf("%s: %w", ie.Value, ie.Err)}
	case "Deps":
		// The recorded lockfile is not in the source: the source is not the recorded one.
		return &InputError{Field: "SourceDir", Err: fmt.Errorf("the provenance records dependencies %s: %w", ie.Value, ie.Err)}
	case "Accel":
		return &InputError{Field: "Host.Accel", Err: fmt.Errorf("%s: %w", ie.Value, ie.Err)}
	}
	return &InputError{Field: "Bundle", Err: fmt.Errorf("the provenance's job cannot run here: %w", err)}
}

// checkSource packs the source directory as the build will (the manifest's
// SOURCE_DATE_EPOCH as file times) and compares the archive's SHA-256 with the manifest's;
// on a difference it names the git trees too, which do not depend on file times.
func checkSource(ctx context.Context, dir string, m *job.Manifest, r *job.Result) error {
	sum, _, err := source.Pack(ctx, dir, m.SourceDateEpoch, io.Discard)
	if err != nil {
		return inputErr("SourceDir", "packing %s: %w", dir, err)
	}
	if sum == m.Source.ArchiveSHA256 {
		return nil
	}
	msg := fmt.Sprintf("the source directory %s packs to sha256:%s, the provenance's manifest field source.archiveSha256 is sha256:%s", dir, sum, m.Source.ArchiveSHA256)
	format := m.Source.ObjectFormat
	if format == "" {
		format = source.FormatSHA1
	}
	if tree, err := source.TreeIDFormat(dir, format); err == nil && r.SourceTree != "" {
		if tree == r.SourceTree {
			msg += fmt.Sprintf(" (its git tree %s is the recorded one: file modes, empty directories or ignored files differ)", tree)
		} else {
			msg += fmt.Sprintf(" (its git tree is %s, the recorded source.tree %s)", tree, r.SourceTree)
		}
	}
	return inputErr("SourceDir", "%s", msg)
}

// findToolchain loads the toolchain image (Options.Toolchain, or the one in the state
// directory's cache with the recorded root hash) and checks it is the recorded one.
func findToolchain(o Options, want job.Toolchain) (*job.Toolchain, string, error) {
	if o.Toolchain == "" {
		if o.Host.StateDir == "" {
			return nil, "", inputErr("Toolchain", "no state directory (Host.StateDir) to look the provenance's toolchain up in: give the image with Toolchain")
		}
		tc, p, err := toolchain.FindCached(o.Host.StateDir, want.VerityRootHash)
		if err != nil {
			hint := "give the image with Toolchain"
			if want.SourceImage != "" {
				hint = fmt.Sprintf("make it with cloche image toolchain --from-image %s, or give the image with Toolchain", want.SourceImage)
			}
			return nil, "", inputErr("Toolchain", "the provenance's toolchain (%s, toolchain.verityRootHash %s) is not in the image cache: %w; %s", want.Name, want.VerityRootHash, err, hint)
		}
		return tc, p, nil
	}
	tc, err := toolchain.Load(o.Toolchain)
	if err != nil {
		return nil, "", inputErr("Toolchain", "%w", err)
	}
	for _, f := range []struct{ field, got, want string }{
		{"toolchain.verityRootHash", tc.VerityRootHash, want.VerityRootHash},
		{"toolchain.imageSha256", tc.ImageSHA256, want.ImageSHA256},
	} {
		if f.got != f.want {
			return nil, "", inputErr("Toolchain", "the image %s has %s sha256:%s, the provenance records sha256:%s", o.Toolchain, f.field, f.got, f.want)
		}
	}
	return tc, o.Toolchain, nil
}

// Run prepares the rebuild (Prepare) and runs it (Plan.Run).
func Run(ctx context.Context, o Options) (*Report, error) {
	p, err := Prepare(ctx, o)
	if err != nil {
		return nil, err
	}
	return p.Run(ctx, o)
}

// Run builds the plan on a host made from o.Host with the recorded toolchain (Host.Run,
// with the checked source digest and toolchain root as the build's expectations), and
// compares the artifacts with the provenance's subjects. o is the Options p was prepared
// from. It returns the Report whenever the build ran; the error then wraps
// ErrRebuildMismatch when the artifacts differ.
func (p *Plan) Run(ctx context.Context, o Options) (*Report, error) {
	cfg := o.Host
	cfg.Toolchain, cfg.ToolchainImage = p.ToolchainPath, ""
	h, err := host.New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	out, err := h.Run(ctx, host.Job{Spec: p.Spec, SourceDir: o.SourceDir, OutDir: o.OutDir, Console: o.Console, OnStage: o.OnStage,
		ExpectSourceSHA256: p.Expect.Manifest.Source.ArchiveSHA256, ExpectToolchainRoot: p.Toolchain.VerityRootHash})
	if err != nil {
		return nil, err
	}
	got := Rebuilt(out)
	if _, ok := p.Expect.Parsed.Subjects[provenance.ChecksumsName]; !ok && out.Checksums != nil {
		// A provenance from before the checksums subject: the file the host writes beside
		// the artifacts is no artifact of the build.
		delete(got, out.Checksums.Path)
	}
	rep := Compare(p.Expect.Parsed.Subjects, got)
	rep.Outcome = out
	rep.Warnings = guestWarnings(h.GuestImageDir(), p.Expect.Parsed.Guest)
	return rep, rep.Err()
}

// guestWarnings says when the guest image differs from the one the provenance records: not
// an input the rebuild pins, but a difference in artifacts may come from it.
func guestWarnings(dir string, want provenance.GuestImage) []string {
	img, err := guestimage.Load(dir)
	if err != nil {
		return []string{fmt.Sprintf("guest image %s: %v", dir, err)}
	}
	if img.Kernel.SHA256 != want.KernelSHA256 || img.Initrd.SHA256 != want.InitrdSHA256 {
		return []string{fmt.Sprintf("the guest image differs from the provenance's (kernel sha256:%s, initrd sha256:%s; recorded kernel sha256:%s, initrd sha256:%s): a difference in artifacts may come from it",
			img.Kernel.SHA256, img.Initrd.SHA256, want.KernelSHA256, want.InitrdSHA256)}
	}
	return nil
}

// Rebuilt are a build's outputs by name, as the provenance names its subjects: the
// artifacts and the checksums file of them.
func Rebuilt(out *build.Outcome) map[string]string {
	got := make(map[string]string, len(out.Artifacts)+1)
	for _, a := range out.Artifacts {
		got[a.Path] = a.SHA256
	}
	if out.Checksums != nil {
		got[out.Checksums.Path] = out.Checksums.SHA256
	}
	return got
}

// Status is one artifact's outcome.
type Status string

// The outcomes, as the report's lines begin.
const (
	Match   Status = "MATCH"   // rebuilt with the recorded digest
	Differ  Status = "DIFFER"  // rebuilt with another digest
	Missing Status = "MISSING" // recorded, not rebuilt
	Extra   Status = "EXTRA"   // rebuilt, not recorded
)

// Line is one artifact in the report. Want is the recorded SHA-256 (hex; "" for Extra),
// Got the rebuilt one ("" for Missing).
type Line struct {
	Status Status
	Name   string
	Want   string
	Got    string
}

func (l Line) String() string {
	name := quoteName(l.Name)
	switch l.Status {
	case Match:
		return fmt.Sprintf("MATCH %s sha256:%s", name, l.Got)
	case Differ:
		return fmt.Sprintf("DIFFER %s want sha256:%s got sha256:%s", name, l.Want, l.Got)
	case Missing:
		return fmt.Sprintf("MISSING %s want sha256:%s", name, l.Want)
	}
	return fmt.Sprintf("EXTRA %s got sha256:%s", name, l.Got)
}

// quoteName keeps one artifact per line: a name with a space, a control character or a
// quote is printed Go-quoted.
func quoteName(name string) string {
	for _, c := range name {
		if unicode.IsSpace(c) || !unicode.IsPrint(c) || c == '"' {
			return strconv.Quote(name)
		}
	}
	return name
}

// Report is the comparison of a rebuild with its provenance.
type Report struct {
	// Lines has one entry per artifact name in either set, sorted by name.
	Lines []Line
	// Outcome is the rebuild's (nil from Compare alone).
	Outcome *build.Outcome
	// Warnings are differences in what the rebuild does not pin (the guest image).
	Warnings []string
}

// Compare compares the recorded artifacts (name to SHA-256 hex, the statement's subjects)
// with the rebuilt ones.
func Compare(want, got map[string]string) *Report {
	names := make([]string, 0, len(want)+len(got))
	for n := range want {
		names = append(names, n)
	}
	for n := range got {
		if _, ok := want[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	r := &Report{Lines: make([]Line, 0, len(names))}
	for _, n := range names {
		w, inWant := want[n]
		g, inGot := got[n]
		l := Line{Name: n, Want: w, Got: g}
		switch {
		case !inGot:
			l.Status = Missing
		case !inWant:
			l.Status = Extra
		case w == g:
			l.Status = Match
		default:
			l.Status = Differ
		}
		r.Lines = append(r.Lines, l)
	}
	return r
}

// Matched says whether every recorded artifact was rebuilt with its digest and nothing
// else was: at least one artifact, and every line a Match.
func (r *Report) Matched() bool {
	if len(r.Lines) == 0 {
		return false
	}
	for _, l := range r.Lines {
		if l.Status != Match {
			return false
		}
	}
	return true
}

// Err is nil when the rebuild matched, else an error wrapping ErrRebuildMismatch that
// counts the differences.
func (r *Report) Err() error {
	if r.Matched() {
		return nil
	}
	n := map[Status]int{}
	for _, l := range r.Lines {
		n[l.Status]++
	}
	if len(r.Lines) == 0 {
		return fmt.Errorf("%w: neither the provenance nor the rebuild has an artifact", ErrRebuildMismatch)
	}
	return fmt.Errorf("%w: %d differ, %d missing, %d extra, %d match", ErrRebuildMismatch, n[Differ], n[Missing], n[Extra], n[Match])
}

// Summary is the report's last line: REBUILD MATCHED or REBUILD DIFFERED.
func (r *Report) Summary() string {
	if r.Matched() {
		return "REBUILD MATCHED"
	}
	return "REBUILD DIFFERED"
}
