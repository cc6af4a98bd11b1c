// Package job defines the two documents that cross the confidential-VM boundary: the job
// manifest (everything the build may depend on, fixed by the host before launch and bound
// to the hardware report through HOST_DATA / MRCONFIGID) and the result record (what the
// guest saw and produced, bound through REPORT_DATA).
//
// Both are encoded canonically: encoding/json of these structs (fields in declared order,
// maps with sorted keys, no HTML escaping, no trailing newline). Digests are always taken
// over the exact bytes carried around, never over a re-encoding, so a verifier needs the
// bytes, not this package's encoder.
package job

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"regexp"
	"strings"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/strictjson"
	"github.com/cloche-dev/cloche/source"
)

// Type URIs identify the document kind and version; a reader rejects any other value.
const (
	ManifestType = "https://cloche.dev/job-manifest/v1"
	ResultType   = "https://cloche.dev/result-record/v1"
)

// Limits on documents read from outside. The manifest is bound by digest, but the guest
// still parses it before it can check anything else, so its size is capped.
const (
	// MaxManifestSize leaves room for the git objects that name the source (base64).
	MaxManifestSize = 4 << 20
	MaxResultSize   = 4 << 20
	MaxArtifacts    = 1024
	MaxCommandArgs  = 256
	MaxEnvEntries   = 256
)

// ErrInvalid is wrapped by every validation error of this package.
var ErrInvalid = errors.New("invalid job document")

// Manifest is the job manifest (docs/design.md, data flow step 1).
type Manifest struct {
	Type string `json:"_type"`
	// InvocationID names this run uniquely (e.g. the GitHub run URL plus attempt, or a
	// random id for local runs). It makes two runs of the same inputs distinguishable, so a
	// report from one run cannot be replayed into another's provenance.
	InvocationID string `json:"invocationId"`
	// TEE is the kind of evidence the host promises to launch with: "snp", "tdx" or "sim".
	TEE       string    `json:"tee"`
	Source    Source    `json:"source"`
	Toolchain Toolchain `json:"toolchain"`
	// Command is the argv run inside the toolchain root, in Workdir (relative to the source
	// root). Argv[0] is looked up in the toolchain's PATH.
	Command []string `json:"command"`
	Workdir string   `json:"workdir"`
	// Env is added to a fixed minimal environment (PATH, HOME, SOURCE_DATE_EPOCH, LANG).
	Env map[string]string `json:"env,omitempty"`
	// Artifacts are path.Match patterns relative to the source root; each must match at
	// least one regular file after the build. An empty list means "every regular file the
	// command created or changed in the source tree", so `cloche run -- make` needs no
	// artifact list for the common case.
	Artifacts       []string `json:"artifacts"`
	SourceDateEpoch int64    `json:"sourceDateEpoch"`
	TimeoutSeconds  int64    `json:"timeoutSeconds"`
	// MaxOutputBytes caps the total size of what the guest writes back (artifacts + log).
	MaxOutputBytes int64 `json:"maxOutputBytes"`
	// Rlimits are the resource limits the build's processes run under; zero fields take
	// DefaultRlimits. They are in the manifest so the launch binds them and a verifier sees
	// what the build ran under.
	Rlimits Rlimits `json:"rlimits,omitzero"`
	// Deps is the dependency disk, when the job has one.
	Deps *Deps `json:"deps,omitempty"`
}

// Deps identifies the dependency disk: a deterministic tar archive (package source's
// format) of what the host fetched for the lockfile, which the guest checks against these
// digests while unpacking and then, entry by entry, against the lockfile in the attested
// source. For DepsGo the archive holds a module proxy tree
// (cache/download/MODULE/@v/VERSION.{mod,zip,info}); for DepsNPM the content files of an
// npm cache (_cacache/content-v2/ALGO/HEX[0:2]/HEX[2:4]/HEX[4:]) named by the lockfile's
// integrity digests.
type Deps struct {
	Kind string `json:"kind"`
	// Lockfile is the lockfile's path relative to the source root (Go: Workdir/go.sum,
	// npm: Workdir/package-lock.json).
	Lockfile      string `json:"lockfile"`
	ArchiveSHA256 string `json:"archiveSha256"`
	ArchiveSize   int64  `json:"archiveSize"`
}

// MaxModules bounds the modules a result record lists.
const MaxModules = 4096

// Module is one dependency module the guest found on the dependency disk and checked
// against the lockfile: the go.sum hashes it matched and the SHA-256 of the files.
// ZipSHA256 and ZipH1 are empty for a module of which only go.mod is needed (the module
// graph reads it, the build no package).
type Module struct {
	Path      string `json:"path"`
	Version   string `json:"version"`
	ZipSHA256 string `json:"zipSha256,omitempty"`
	ZipH1     string `json:"zipH1,omitempty"`
	ModSHA256 string `json:"modSha256"`
	ModH1     string `json:"modH1"`
}

// Package is one npm package the guest checked against the lockfile before the build
// (DepsNPM): its content file on the dependency disk hashes to Integrity. The same
// NAME@VERSION at several places of the lockfile is listed once.
type Package struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	// Integrity is the one hash of the lockfile's integrity the guest checked, as
	// Subresource Integrity (ALGO-BASE64): the strongest it gave (sha1 only when it gave
	// nothing else).
	Integrity string `json:"integrity"`
	// Resolved is where the lockfile says the package came from, as it says it ("" when
	// it does not): the lockfile's word, not the host's.
	Resolved string `json:"resolved,omitempty"`
}

// Rlimits bound what one build can take from the guest kernel (soft and hard limit alike).
// The guest runs only this build, so they guard against runaway builds rather than share
// a machine. Core dumps are always off (they would land in the build tree as artifacts).
type Rlimits struct {
	// Processes is RLIMIT_NPROC: a cap against fork bombs.
	Processes uint64 `json:"processes,omitempty"`
	// OpenFiles is RLIMIT_NOFILE.
	OpenFiles uint64 `json:"openFiles,omitempty"`
	// FileSizeBytes is RLIMIT_FSIZE, the largest file the build may write (0: no limit
	// beyond the disks and MaxOutputBytes).
	FileSizeBytes uint64 `json:"fileSizeBytes,omitempty"`
}

// Limits on Rlimits: the kernel's own ceilings for processes (pid_max) and open files
// (nr_open's default).
const (
	MaxRlimitProcesses = 1 << 22
	MaxRlimitOpenFiles = 1 << 20
)

// DefaultRlimits are the limits a build runs under when the manifest sets none: high
// enough for parallel builds.
func DefaultRlimits() Rlimits { return Rlimits{Processes: 16384, OpenFiles: 65536} }

// Check refuses limits outside what a guest kernel accepts and a build can run under; it
// returns the JSON name of the field at fault, its value and what was expected.
func (r Rlimits) Check() (field string, value uint64, err error) {
	switch {
	case r.Processes > MaxRlimitProcesses:
		return "processes", r.Processes, fmt.Errorf("expected at most %d", MaxRlimitProcesses)
	case r.OpenFiles > MaxRlimitOpenFiles:
		return "openFiles", r.OpenFiles, fmt.Errorf("expected at most %d", MaxRlimitOpenFiles)
	case r.OpenFiles != 0 && r.OpenFiles < 16:
		return "openFiles", r.OpenFiles, errors.New("expected at least 16 (a shell needs a few)")
	}
	return "", 0, nil
}

// Effective returns r with its zero fields taken from DefaultRlimits.
func (r Rlimits) Effective() Rlimits {
	d := DefaultRlimits()
	if r.Processes == 0 {
		r.Processes = d.Processes
	}
	if r.OpenFiles == 0 {
		r.OpenFiles = d.OpenFiles
	}
	return r
}

// Source describes the source input: a deterministic tar archive (see package source), and
// the raw git objects that name it.
type Source struct {
	// Repository and Ref are the host's word (e.g. the GitHub checkout): no git object
	// names a repository or a branch. A keyless signing certificate binds both
	// (docs/design.md, "What binds each statement field").
	Repository string `json:"repository,omitempty"`
	Ref        string `json:"ref,omitempty"`
	// ObjectFormat is the repository's object format (empty: sha1); the guest computes the
	// tree, commit and tag ids in it.
	ObjectFormat source.ObjectFormat `json:"objectFormat,omitempty"`
	// CommitObject is the raw commit object (`git cat-file commit`), TagObject the
	// annotated tag object when the build is of a tag. The guest checks that the commit's
	// tree (followed down Path through TreeObjects, for a subdirectory of the commit) is the
	// tree it unpacked, and attests the ids it computes in the result record; the bytes
	// alone prove nothing.
	CommitObject []byte   `json:"commitObject,omitempty"`
	TagObject    []byte   `json:"tagObject,omitempty"`
	Path         string   `json:"path,omitempty"`
	TreeObjects  [][]byte `json:"treeObjects,omitempty"`
	// ArchiveSHA256 and ArchiveSize identify the archive on the input disk; the guest checks
	// both while unpacking.
	ArchiveSHA256 string `json:"archiveSha256"`
	ArchiveSize   int64  `json:"archiveSize"`
}

// GitObjects returns the git objects the source carries (none: a zero Commit).
func (s *Source) GitObjects() source.GitObjects {
	return source.GitObjects{Format: s.ObjectFormat, Commit: s.CommitObject, Tag: s.TagObject, Path: s.Path, Trees: s.TreeObjects}
}

// SetGitObjects records git objects read from the host's checkout.
func (s *Source) SetGitObjects(o *source.GitObjects) {
	if o == nil {
		return
	}
	s.ObjectFormat, s.CommitObject, s.TagObject, s.Path, s.TreeObjects = o.Format, o.Commit, o.Tag, o.Path, o.Trees
}

// Toolchain identifies the read-only root filesystem image the build runs in. The guest
// enforces it through dm-verity: every block read is checked against VerityRootHash, so the
// image cannot be swapped or altered after this manifest was fixed.
type Toolchain struct {
	Name string `json:"name,omitempty"`
	// ImageSHA256 is the SHA-256 of the whole image file (ext4 data followed by the verity
	// hash tree); ImageSize its length in bytes.
	ImageSHA256 string `json:"imageSha256"`
	ImageSize   int64  `json:"imageSize"`
	// Verity parameters (veritysetup format --no-superblock, sha256, 4096-byte blocks,
	// hash tree at HashOffset within the same image).
	VerityRootHash string `json:"verityRootHash"`
	VeritySalt     string `json:"veritySalt"`
	DataBlocks     int64  `json:"dataBlocks"`
	HashOffset     int64  `json:"hashOffset"`
	// SourceImage is the container image the root was flattened from, as
	// REPOSITORY@sha256:HEX (the manifest digest), when it was made from one. The
	// flattening is reproducible, so anyone can pull that digest and recompute
	// VerityRootHash (docs/design.md, "Toolchains from container images"). Empty for
	// other toolchains.
	SourceImage string `json:"sourceImage,omitempty"`
}

// MaxSourceImageLen bounds Toolchain.SourceImage.
const MaxSourceImageLen = 512

// sourceImageRef is the shape of Toolchain.SourceImage: a repository (registry host,
// optional port, path; an optional tag) pinned by its manifest digest.
var sourceImageRef = regexp.MustCompile(`^[a-z0-9][a-z0-9._:/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?@sha256:[0-9a-f]{64}$`)

// Result is the result record (docs/design.md, data flow step 3), written by the guest.
type Result struct {
	Type string `json:"_type"`
	// ManifestSHA256 is the launch-bound digest the guest read from its own report and
	// checked the manifest against.
	ManifestSHA256 string `json:"manifestSha256"`
	// SourceTree is the git tree id (hex, in the manifest's object format) of the unpacked
	// source.
	SourceTree string `json:"sourceTree"`
	// SourceCommit is the id the guest computed over the manifest's commit object, after
	// checking that its tree is SourceTree; SourceTag and SourceTagObject the name and id
	// of the annotated tag object that points at it. Empty when the host sent none.
	SourceCommit    string `json:"sourceCommit,omitempty"`
	SourceTag       string `json:"sourceTag,omitempty"`
	SourceTagObject string `json:"sourceTagObject,omitempty"`
	// ExitCode of the command; -1 when it did not run to an exit (timeout, signal, error).
	ExitCode  int        `json:"exitCode"`
	Error     string     `json:"error,omitempty"`
	Artifacts []Artifact `json:"artifacts"`
	Log       Digest     `json:"log"`
	// DurationMillis is how long the command ran, as the guest measured it.
	DurationMillis int64 `json:"durationMillis"`
	// ACPITablesSHA256 digests the ACPI tables the host's VMM gave the guest, as the guest
	// kernel read them (/sys/firmware/acpi/tables; guest.ACPITablesDigest): on SEV-SNP no
	// measurement covers them, so this is how a verifier can pin them. Empty when the
	// guest has no ACPI tables.
	ACPITablesSHA256 string `json:"acpiTablesSha256,omitempty"`
	// GuestClockStart is the guest's wall clock (RFC 3339, UTC) when it accepted the
	// manifest. The host controls that clock on every TEE (kvmclock, the RTC), so it is no
	// trusted time: it is recorded so a verifier sees the clock the build saw (a host that
	// moves it to steer make's timestamp checks shows here), while unpacked files take
	// their times from the archive (SourceDateEpoch), not from this clock.
	GuestClockStart string `json:"guestClockStart,omitempty"`
	// Modules are the dependency modules the guest checked against the lockfile before
	// the build (Manifest.Deps), sorted by path and version.
	Modules []Module `json:"modules,omitempty"`
	// Packages are the npm packages the guest checked against the lockfile before the
	// build (Manifest.Deps of kind DepsNPM), sorted by name and version.
	Packages []Package `json:"packages,omitempty"`
}

// Artifact is one output file.
type Artifact struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Digest names a byte string by SHA-256 and length.
type Digest struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Marshal encodes v canonically (see the package comment).
func Marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// ManifestDigest is SHA-256 over the manifest bytes: the value of SNP HOST_DATA, and the
// first 32 bytes of TDX MRCONFIGID (the other 16 are zero).
func ManifestDigest(manifestBytes []byte) [32]byte { return sha256.Sum256(manifestBytes) }

// ReportData is SHA-512 over the result record bytes: the value of REPORT_DATA.
func ReportData(resultBytes []byte) [64]byte { return sha512.Sum512(resultBytes) }

// ParseManifest decodes and validates manifest bytes strictly (unknown, duplicate and
// case-variant keys rejected).
func ParseManifest(b []byte) (*Manifest, error) {
	if len(b) > MaxManifestSize {
		return nil, fmt.Errorf("%w: manifest is %d bytes, limit %d", ErrInvalid, len(b), MaxManifestSize)
	}
	var m Manifest
	if err := strictUnmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: manifest: %w", ErrInvalid, err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// ParseResult decodes and validates result record bytes strictly.
func ParseResult(b []byte) (*Result, error) {
	if len(b) > MaxResultSize {
		return nil, fmt.Errorf("%w: result record is %d bytes, limit %d", ErrInvalid, len(b), MaxResultSize)
	}
	var r Result
	if err := strictUnmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: result record: %w", ErrInvalid, err)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// strictUnmarshal decodes a document from outside with internal/strictjson: unknown,
// duplicate and case-variant keys are refused, so every reader sees the same document.
func strictUnmarshal(b []byte, v any) error { return strictjson.Decode(b, v) }

var (
	hex64   = regexp.MustCompile(`^[0-9a-f]{64}$`)
	hex40   = regexp.MustCompile(`^[0-9a-f]{40}$`)
	hexEven = regexp.MustCompile(`^([0-9a-f]{2})*$`)
	envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

func invalidf(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
}

// Validate checks every field for shape and bounds.
func (m *Manifest) Validate() error {
	switch {
	case m.Type != ManifestType:
		return invalidf("manifest _type is %q, expected %q", m.Type, ManifestType)
	case m.InvocationID == "" || len(m.InvocationID) > 512:
		return invalidf("manifest invocationId must be 1..512 characters")
	case !attest.TEE(m.TEE).Valid():
		return invalidf("manifest tee is %q, expected snp, tdx or sim", m.TEE)
	case !hex64.MatchString(m.Source.ArchiveSHA256):
		return invalidf("manifest source.archiveSha256 must be 64 lowercase hex digits")
	case m.Source.ArchiveSize <= 0:
		return invalidf("manifest source.archiveSize must be positive")
	case m.Source.ObjectFormat.Check() != nil:
		return invalidf("manifest source.objectFormat: %v", m.Source.ObjectFormat.Check())
	case len(m.Source.CommitObject) > source.MaxObjectSize || len(m.Source.TagObject) > source.MaxObjectSize:
		return invalidf("manifest source.commitObject and tagObject must be at most %d bytes each", source.MaxObjectSize)
	case m.Source.CommitObject == nil && (m.Source.TagObject != nil || m.Source.Path != "" || m.Source.TreeObjects != nil):
		return invalidf("manifest source.tagObject, path and treeObjects need a commitObject")
	case len(m.Source.TreeObjects) > source.MaxTreePath:
		return invalidf("manifest source.treeObjects lists %d objects, limit %d", len(m.Source.TreeObjects), source.MaxTreePath)
	case m.Source.Path != "" && !isRelPath(m.Source.Path, false):
		return invalidf("manifest source.path %q must be a clean relative path", m.Source.Path)
	case !hex64.MatchString(m.Toolchain.ImageSHA256):
		return invalidf("manifest toolchain.imageSha256 must be 64 lowercase hex digits")
	case !hex64.MatchString(m.Toolchain.VerityRootHash):
		return invalidf("manifest toolchain.verityRootHash must be 64 lowercase hex digits")
	case !hexEven.MatchString(m.Toolchain.VeritySalt) || len(m.Toolchain.VeritySalt) > 512:
		return invalidf("manifest toolchain.veritySalt must be lowercase hex, at most 256 bytes")
	case m.Toolchain.DataBlocks <= 0 || m.Toolchain.HashOffset != m.Toolchain.DataBlocks*4096:
		return invalidf("manifest toolchain.dataBlocks must be positive and hashOffset equal dataBlocks*4096")
	case m.Toolchain.ImageSize <= m.Toolchain.HashOffset || m.Toolchain.ImageSize%4096 != 0:
		return invalidf("manifest toolchain.imageSize must be a multiple of 4096 beyond hashOffset")
	case m.Toolchain.SourceImage != "" && (len(m.Toolchain.SourceImage) > MaxSourceImageLen || !sourceImageRef.MatchString(m.Toolchain.SourceImage)):
		return invalidf("manifest toolchain.sourceImage must be REPOSITORY@sha256:HEX, at most %d characters", MaxSourceImageLen)
	case len(m.Command) == 0 || len(m.Command) > MaxCommandArgs || m.Command[0] == "":
		return invalidf("manifest command must have 1..%d arguments and a non-empty program", MaxCommandArgs)
	case len(m.Env) > MaxEnvEntries:
		return invalidf("manifest env has %d entries, limit %d", len(m.Env), MaxEnvEntries)
	case m.Artifacts == nil:
		return invalidf("manifest artifacts must be a list (empty: every file the build created or changed)")
	case len(m.Artifacts) > MaxArtifacts:
		return invalidf("manifest artifacts lists %d patterns, limit %d", len(m.Artifacts), MaxArtifacts)
	case m.TimeoutSeconds <= 0:
		return invalidf("manifest timeoutSeconds must be positive")
	case m.MaxOutputBytes <= 0:
		return invalidf("manifest maxOutputBytes must be positive")
	case m.SourceDateEpoch < 0:
		return invalidf("manifest sourceDateEpoch must not be negative")
	}
	if field, value, err := m.Rlimits.Check(); err != nil {
		return invalidf("manifest rlimits.%s is %d: %v", field, value, err)
	}
	if err := checkRelPath("workdir", m.Workdir, true); err != nil {
		return err
	}
	if err := m.Deps.validate(); err != nil {
		return err
	}
	if err := m.Deps.checkAgainst(m); err != nil {
		return err
	}
	for k, v := range m.Env {
		if !envName.MatchString(k) || strings.ContainsRune(v, 0) {
			return invalidf("manifest env entry %q is not NAME=value without NUL", k)
		}
	}
	for _, a := range m.Command {
		if strings.ContainsRune(a, 0) {
			return invalidf("manifest command argument contains NUL")
		}
	}
	for _, p := range m.Artifacts {
		if err := checkRelPath("artifact pattern", p, false); err != nil {
			return err
		}
		if _, err := path.Match(p, ""); err != nil {
			return invalidf("manifest artifact pattern %q: %v", p, err)
		}
	}
	return nil
}

// checkRelPath accepts clean, relative, slash-separated paths without "..".
func checkRelPath(what, p string, allowDot bool) error {
	if !isRelPath(p, allowDot) {
		return invalidf("manifest %s %q must be a clean relative path inside the source", what, p)
	}
	return nil
}

func isRelPath(p string, allowDot bool) bool {
	if p == "." && allowDot {
		return true
	}
	return !(p == "" || len(p) > 4096 || strings.HasPrefix(p, "/") || path.Clean(p) != p || p == ".." ||
		strings.HasPrefix(p, "../") || strings.ContainsRune(p, 0) || p == ".")
}

// Validate checks the result record's shape.
func (r *Result) Validate() error {
	switch {
	case r.Type != ResultType:
		return invalidf("result record _type is %q, expected %q", r.Type, ResultType)
	case !hex64.MatchString(r.ManifestSHA256):
		return invalidf("result record manifestSha256 must be 64 lowercase hex digits")
	case r.SourceTree != "" && !hex40.MatchString(r.SourceTree) && !hex64.MatchString(r.SourceTree):
		return invalidf("result record sourceTree must be 40 (sha1) or 64 (sha256) lowercase hex digits")
	case r.SourceCommit != "" && (len(r.SourceCommit) != len(r.SourceTree) || !hexEven.MatchString(r.SourceCommit)):
		return invalidf("result record sourceCommit must be lowercase hex of the source tree id's length")
	case (r.SourceTag != "" || r.SourceTagObject != "") && (r.SourceCommit == "" || r.SourceTag == "" || len(r.SourceTagObject) != len(r.SourceCommit) || !hexEven.MatchString(r.SourceTagObject)):
		return invalidf("result record sourceTag and sourceTagObject go together, with a sourceCommit, and the tag object id in its format")
	case len(r.Artifacts) > MaxArtifacts:
		return invalidf("result record lists %d artifacts, limit %d", len(r.Artifacts), MaxArtifacts)
	case r.ACPITablesSHA256 != "" && !hex64.MatchString(r.ACPITablesSHA256):
		return invalidf("result record acpiTablesSha256 must be 64 lowercase hex digits")
	case r.Log.SHA256 != "" && !hex64.MatchString(r.Log.SHA256):
		return invalidf("result record log.sha256 must be 64 lowercase hex digits")
	}
	if err := validateModules(r.Modules); err != nil {
		return err
	}
	if err := validatePackages(r.Packages); err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, a := range r.Artifacts {
		if err := checkRelPath("artifact path", a.Path, false); err != nil {
			return fmt.Errorf("result record: %w", err)
		}
		if !hex64.MatchString(a.SHA256) || a.Size < 0 {
			return invalidf("result record artifact %q has a malformed digest or size", a.Path)
		}
		if seen[a.Path] {
			return invalidf("result record lists artifact %q twice", a.Path)
		}
		seen[a.Path] = true
	}
	return nil
}

// depsGoEnv are the environment variables that decide where go takes modules from and
// whether it checks them. With a dependency disk the guest sets them; a manifest may not,
// or a host could point the build at modules nobody checked (a GOENV file can set the
// others).
var depsGoEnv = []string{"GOPROXY", "GOFLAGS", "GOSUMDB", "GONOSUMDB", "GONOSUMCHECK", "GONOPROXY",
	"GOINSECURE", "GOPRIVATE", "GOMODCACHE", "GOWORK", "GOTOOLCHAIN", "GOENV", "GOPATH", "GOVCS"}

// depsNPMEnvPrefix starts the environment variables npm reads its configuration from
// (case-insensitively): with an npm dependency disk the guest sets the cache and offline
// mode; a manifest may set none, or a host could point npm at packages nobody checked.
const depsNPMEnvPrefix = "npm_config_"

// checkAgainst refuses a dependency disk whose lockfile is not the one beside the
// workdir's go.mod or package.json, which the build's go or npm reads, and an env that
// overrides the guest's go or npm settings.
func (d *Deps) checkAgainst(m *Manifest) error {
	if d == nil {
		return nil
	}
	if want := path.Join(m.Workdir, DepsLockfile(d.Kind)); d.Lockfile != want {
		return invalidf("manifest deps.lockfile is %q, expected %q: the %s of the workdir, which the build reads", d.Lockfile, want, DepsLockfile(d.Kind))
	}
	switch d.Kind {
	case DepsGo:
		for _, k := range depsGoEnv {
			if _, ok := m.Env[k]; ok {
				return invalidf("manifest env sets %s, which a build with a dependency disk may not: the guest points go at the checked modules", k)
			}
		}
	case DepsNPM:
		for k := range m.Env {
			if strings.HasPrefix(strings.ToLower(k), depsNPMEnvPrefix) {
				return invalidf("manifest env sets %s, which a build with an npm dependency disk may not: the guest points npm at the checked packages", k)
			}
		}
	}
	return nil
}

// HexDigest formats a digest as lowercase hex.
func HexDigest(b []byte) string { return hex.EncodeToString(b) }

func (d *Deps) validate() error {
	switch {
	case d == nil:
		return nil
	case DepsLockfile(d.Kind) == "":
		return invalidf("manifest deps.kind is %q, expected %q or %q", d.Kind, DepsGo, DepsNPM)
	case !isRelPath(d.Lockfile, false) || path.Base(d.Lockfile) != DepsLockfile(d.Kind):
		return invalidf("manifest deps.lockfile %q must be a clean relative path to a %s", d.Lockfile, DepsLockfile(d.Kind))
	case !hex64.MatchString(d.ArchiveSHA256):
		return invalidf("manifest deps.archiveSha256 must be 64 lowercase hex digits")
	case d.ArchiveSize <= 0:
		return invalidf("manifest deps.archiveSize must be positive")
	}
	return nil
}

// modulePart is what a module path or version may contain: no spaces, slashes only in
// paths, nothing that could break a URI or a go.sum line; at most maxModulePart bytes (a
// length check, not a counted repetition, which would make compiling the pattern cost
// milliseconds at every start of every program that links this package).
var modulePart = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._~+/-]*$`)

const maxModulePart = 500

func validModulePart(s string) bool { return len(s) <= maxModulePart && modulePart.MatchString(s) }

func validateModules(mods []Module) error {
	if len(mods) > MaxModules {
		return invalidf("result record lists %d modules, limit %d", len(mods), MaxModules)
	}
	for i, mod := range mods {
		switch {
		case !validModulePart(mod.Path) || !validModulePart(mod.Version) || strings.Contains(mod.Version, "/"):
			return invalidf("result record module %d has a malformed path or version", i)
		case !hex64.MatchString(mod.ModSHA256) || !strings.HasPrefix(mod.ModH1, "h1:"):
			return invalidf("result record module %s@%s has a malformed go.mod digest", mod.Path, mod.Version)
		case (mod.ZipSHA256 == "") != (mod.ZipH1 == ""),
			mod.ZipSHA256 != "" && (!hex64.MatchString(mod.ZipSHA256) || !strings.HasPrefix(mod.ZipH1, "h1:")):
			return invalidf("result record module %s@%s has a malformed zip digest", mod.Path, mod.Version)
		case i > 0 && (mods[i-1].Path > mod.Path || mods[i-1].Path == mod.Path && mods[i-1].Version >= mod.Version):
			return invalidf("result record modules are not sorted by path and version without repeats at %s@%s", mod.Path, mod.Version)
		}
	}
	return nil
}

// npmName is an npm package name: lowercase URL-safe characters, an optional @scope/.
// Older packages have capitals, so they are allowed too.
var npmName = regexp.MustCompile(`^(@[A-Za-z0-9._~-][A-Za-z0-9._~!*'()-]{0,213}/)?[A-Za-z0-9._~-][A-Za-z0-9._~!*'()-]{0,213}$`)

// npmVersion is a version as a lockfile records it: semver, with build metadata.
var npmVersion = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.+-]{0,255}$`)

// MaxResolvedLen bounds a package's resolved URI.
const MaxResolvedLen = 4096

// IntegrityAlgorithms are the hashes a Package.Integrity may name, by their digest
// length in bytes.
var IntegrityAlgorithms = map[string]int{"sha512": 64, "sha384": 48, "sha256": 32, "sha1": 20}

// ParseIntegrity splits one Subresource Integrity hash ALGO-BASE64 into its algorithm and
// digest, checking the digest's length; options after "?" are refused.
func ParseIntegrity(sri string) (algo string, digest []byte, err error) {
	algo, b64, ok := strings.Cut(sri, "-")
	n, known := IntegrityAlgorithms[algo]
	if !ok || !known {
		return "", nil, fmt.Errorf("integrity %q: expected ALGO-BASE64 with ALGO one of sha512, sha384, sha256, sha1", sri)
	}
	digest, err = base64.StdEncoding.DecodeString(b64)
	if err != nil || len(digest) != n {
		return "", nil, fmt.Errorf("integrity %q: expected the base64 of a %d-byte %s digest", sri, n, algo)
	}
	return algo, digest, nil
}

func validatePackages(pkgs []Package) error {
	if len(pkgs) > MaxModules {
		return invalidf("result record lists %d packages, limit %d", len(pkgs), MaxModules)
	}
	for i, p := range pkgs {
		if !npmName.MatchString(p.Name) || !npmVersion.MatchString(p.Version) {
			return invalidf("result record package %d has a malformed name or version", i)
		}
		if _, _, err := ParseIntegrity(p.Integrity); err != nil {
			return invalidf("result record package %s@%s: %v", p.Name, p.Version, err)
		}
		if len(p.Resolved) > MaxResolvedLen || strings.ContainsFunc(p.Resolved, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			return invalidf("result record package %s@%s has a resolved URI longer than %d characters or with spaces or control characters", p.Name, p.Version, MaxResolvedLen)
		}
		if i > 0 && (pkgs[i-1].Name > p.Name || pkgs[i-1].Name == p.Name && pkgs[i-1].Version >= p.Version) {
			return invalidf("result record packages are not sorted by name and version without repeats at %s@%s", p.Name, p.Version)
		}
	}
	return nil
}
