// Package provenance builds, parses and checks cloche's SLSA v1 provenance statement
// (docs/design.md, data flow step 5) and signs and verifies it as a DSSE envelope in a Sigstore
// bundle (v0.3 JSON).
//
// The statement carries the three documents the hardware binds (job manifest, result
// record, evidence) as byproducts, byte for byte, so a verifier can recompute every binding
// offline. Everything else in the statement restates what those documents say; a verifier
// checks the restatement with Parsed.CheckAgainstManifest, because whoever holds the signing
// key (the untrusted host, for key-file signing) could otherwise describe a build
// differently from what the hardware attested.
package provenance

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
	"regexp"
	"strings"
	"time"

	provv1 "github.com/in-toto/attestation/go/predicates/provenance/v1"
	intoto "github.com/in-toto/attestation/go/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cloche-dev/cloche/job"
)

// Type URIs of the statement. A reader rejects any other value.
const (
	PredicateType = "https://slsa.dev/provenance/v1"
	StatementType = "https://in-toto.io/Statement/v1"
	BuildType     = "https://cloche.dev/buildtypes/confidential-vm/v1"
	PayloadType   = "application/vnd.in-toto+json"
)

// Names of the byproducts carried in runDetails.byproducts.
const (
	ManifestByproduct = "manifest.json"
	ResultByproduct   = "result.json"
	EvidenceByproduct = "evidence.json"
)

// Media types of the byproducts.
const (
	ManifestMediaType = "application/vnd.cloche.job-manifest+json"
	ResultMediaType   = "application/vnd.cloche.result-record+json"
	EvidenceMediaType = "application/vnd.cloche.evidence+json"
)

// Names of the resolved dependencies.
const (
	SourceDependency     = "source"
	ToolchainDependency  = "toolchain"
	GuestImageDependency = "guest-image"
)

// Limits on what is read from outside.
const (
	// MaxStatementSize caps a statement; its base64 form must still fit in MaxBundleSize.
	MaxStatementSize = 32 << 20
	// MaxBundleSize caps a Sigstore bundle read by VerifyBundle.
	MaxBundleSize = 64 << 20
	// MaxEvidenceSize caps the evidence byproduct (a report or quote plus its
	// certificate chain is a few tens of kilobytes).
	MaxEvidenceSize = 4 << 20
)

// maxExactInteger is the largest integer a JSON number decoded as a float64 (as protobuf's
// Struct stores numbers) represents exactly. Larger values would be rounded silently, so the
// statement refuses them.
const maxExactInteger = 1 << 53

// Sentinel errors callers branch on.
var (
	// ErrBundle: the bundle is not a well-formed Sigstore v0.3 bundle of the expected kind.
	ErrBundle = errors.New("invalid provenance bundle")
	// ErrSignature: the bundle's signature does not verify with the trusted key.
	ErrSignature = errors.New("provenance signature verification failed")
	// ErrStatement: the statement is not a cloche SLSA v1 provenance statement.
	ErrStatement = errors.New("invalid provenance statement")
	// ErrMismatch: the statement says something the manifest or result record does not.
	ErrMismatch = errors.New("provenance does not match the job documents")
)

// BuilderID names cloche, its version and the TEE kind, e.g.
// "https://cloche.dev/builders/sim@v0.1.0". Self-hosted runners carry their own builder
// identity, and a simulated TEE must never share an id with real hardware. A leading "v" on
// version is not doubled.
func BuilderID(tee, version string) string {
	return "https://cloche.dev/builders/" + tee + "@v" + strings.TrimPrefix(version, "v")
}

// GuestImage identifies the cloche guest image the build ran in; its launch measurement is
// what the verifier compares with the hardware report and the trusted reference values.
type GuestImage struct {
	KernelSHA256 string `json:"kernelSha256"`
	InitrdSHA256 string `json:"initrdSha256"`
	Cmdline      string `json:"cmdline"`
	// Measurement is the launch measurement in lowercase hex (48 bytes: SNP MEASUREMENT or
	// TDX MRTD).
	Measurement string `json:"measurement"`
	VCPUs       int    `json:"vcpus"`
	MemoryMiB   int    `json:"memoryMiB"`
	// Recipe names the guest release: the recipe digest from the image's guest-image.json
	// (agent, kernel package, modules, cmdline). Optional: annotation "recipe".
	Recipe string `json:"recipe,omitempty"`
	// ReferenceValues is the SHA-256 of the signed reference-values statement that shipped
	// with the guest image (package reference), when there was one. Optional: annotation
	// "referenceValuesSha256".
	ReferenceValues string `json:"referenceValues,omitempty"`
	// Release is the guest image release (its tag, vX.Y.Z) the host says it launched, and
	// Repository the GitHub repository (OWNER/NAME) that published it; both empty for a
	// local build. In the statement: the dependency's uri (GuestReleaseURI, or
	// LocalGuestImageURI) and annotation "release" (the tag, or "local").
	Release    string `json:"release,omitempty"`
	Repository string `json:"repository,omitempty"`
}

// ToolchainURI names a toolchain image in the statement's toolchain dependency: by the
// name it was built under (the host's label; the verity root hash annotation is what binds
// its content).
func ToolchainURI(name string) string {
	if name == "" {
		name = "unnamed"
	}
	return "urn:cloche:toolchain:" + url.PathEscape(name)
}

// LocalGuestImageURI is the guest-image dependency's uri when the host built the image
// itself rather than launching a published release.
const LocalGuestImageURI = "urn:cloche:guest-image:local-build"

// LocalGuestImageRelease is the "release" annotation of a local build.
const LocalGuestImageRelease = "local"

// GuestReleaseURI is the page of a guest image release, the dependency's uri.
func GuestReleaseURI(repository, tag string) string {
	return "https://github.com/" + repository + "/releases/tag/" + tag
}

// Input is everything NewStatement describes.
type Input struct {
	// Manifest is the exact job manifest bytes bound by HOST_DATA / MRCONFIGID.
	Manifest []byte
	// Result is the exact result record bytes bound by REPORT_DATA.
	Result []byte
	// Evidence is the attest.Evidence JSON, completed by the host with the vendor
	// certificates.
	Evidence       []byte
	Guest          GuestImage
	BuilderVersion string
	StartedOn      time.Time
	FinishedOn     time.Time
}

// ExternalParameters is the typed form of buildDefinition.externalParameters: the inputs the
// user controls, all taken from the job manifest except Source.Tree, which the guest
// computed.
type ExternalParameters struct {
	Command         []string            `json:"command"`
	Workdir         string              `json:"workdir"`
	Env             map[string]string   `json:"env"`
	Artifacts       []string            `json:"artifacts"`
	Source          SourceParameters    `json:"source"`
	Toolchain       ToolchainParameters `json:"toolchain"`
	TEE             string              `json:"tee"`
	SourceDateEpoch int64               `json:"sourceDateEpoch"`
	TimeoutSeconds  int64               `json:"timeoutSeconds"`
	// Rlimits are the limits the build's processes ran under, defaults filled in: they can
	// change what a build with fallbacks produces, so a reader sees them.
	Rlimits job.Rlimits `json:"rlimits"`
	// Deps is the manifest's dependency disk, when the job had one.
	Deps *job.Deps `json:"deps,omitempty"`
}

// SourceParameters is externalParameters.source. Repository and Ref are the manifest's
// (the host's word, bound by a keyless signer's certificate); Commit, Tag and Tree are what
// the guest computed and attested in the result record.
type SourceParameters struct {
	Repository string `json:"repository"`
	Ref        string `json:"ref"`
	Commit     string `json:"commit"`
	Tag        string `json:"tag,omitempty"`
	// Path is the source's directory inside the commit, when not its root.
	Path string `json:"path,omitempty"`
	// Tree is the git tree id the guest computed over the unpacked source.
	Tree string `json:"tree"`
}

// ToolchainParameters is externalParameters.toolchain.
type ToolchainParameters struct {
	Name           string `json:"name"`
	ImageSHA256    string `json:"imageSha256"`
	VerityRootHash string `json:"verityRootHash"`
	// SourceImage is the container image (REPOSITORY@sha256:HEX) the toolchain was
	// flattened from; absent for other toolchains.
	SourceImage string `json:"sourceImage,omitempty"`
}

// internalParameters is buildDefinition.internalParameters: limits the builder applied that
// do not change what is built.
type internalParameters struct {
	MaxOutputBytes int64 `json:"maxOutputBytes"`
}

// Dependency is one resolved dependency as the verifier sees it. Numbers in Annotations are
// float64, as JSON numbers decode.
type Dependency struct {
	URI         string
	Digest      map[string]string
	Annotations map[string]any
}

var (
	hex64Pattern   = regexp.MustCompile(`^[0-9a-f]{64}$`)
	hex96Pattern   = regexp.MustCompile(`^[0-9a-f]{96}$`)
	versionPattern = regexp.MustCompile(`^v?[0-9A-Za-z][0-9A-Za-z.+-]{0,63}$`)
)

// NewStatement builds the provenance statement for one finished build and returns its JSON
// (compact, one line). It refuses inputs that do not describe a successful build of the
// given manifest: the documents must parse, the result record must name this manifest's
// digest, the command must have exited 0, and there must be at least one artifact.
func NewStatement(in Input) ([]byte, error) {
	m, err := job.ParseManifest(in.Manifest)
	if err != nil {
		return nil, fmt.Errorf("provenance input: %w", err)
	}
	r, err := job.ParseResult(in.Result)
	if err != nil {
		return nil, fmt.Errorf("provenance input: %w", err)
	}
	if err := checkInput(in, m, r); err != nil {
		return nil, fmt.Errorf("provenance input: %w", err)
	}
	def, err := buildDefinition(in, m, r)
	if err != nil {
		return nil, err
	}
	pred := &provv1.Provenance{BuildDefinition: def, RunDetails: newRunDetails(in, m)}
	predStruct, err := predicateStruct(pred)
	if err != nil {
		return nil, err
	}
	return encodeStatement(subjects(r), predStruct)
}

// buildDefinition is the predicate's buildDefinition: the parameters and the resolved
// dependencies (source, toolchain, guest image, and the Go modules the guest checked).
func buildDefinition(in Input, m *job.Manifest, r *job.Result) (*provv1.BuildDefinition, error) {
	external, err := toStruct(expectedExternal(m, r))
	if err != nil {
		return nil, fmt.Errorf("encoding externalParameters: %w", err)
	}
	internal, err := toStruct(internalParameters{MaxOutputBytes: m.MaxOutputBytes})
	if err != nil {
		return nil, fmt.Errorf("encoding internalParameters: %w", err)
	}
	deps := []struct {
		name string
		dep  *Dependency
	}{
		{SourceDependency, expectedSourceDependency(m, r)},
		{ToolchainDependency, expectedToolchainDependency(m)},
		{GuestImageDependency, guestDependency(in.Guest)},
	}
	names, modules := moduleDependencies(r)
	for _, name := range names {
		deps = append(deps, struct {
			name string
			dep  *Dependency
		}{name, modules[name]})
	}
	resolved := make([]*intoto.ResourceDescriptor, 0, len(deps))
	for _, d := range deps {
		rd, err := d.dep.descriptor(d.name)
		if err != nil {
			return nil, fmt.Errorf("encoding dependency %s: %w", d.name, err)
		}
		resolved = append(resolved, rd)
	}
	return &provv1.BuildDefinition{
		BuildType:            BuildType,
		ExternalParameters:   external,
		InternalParameters:   internal,
		ResolvedDependencies: resolved,
	}, nil
}

// newRunDetails is the predicate's runDetails: the builder, the run's metadata and the three
// attested documents as byproducts.
func newRunDetails(in Input, m *job.Manifest) *provv1.RunDetails {
	return &provv1.RunDetails{
		Builder: &provv1.Builder{
			Id:      BuilderID(m.TEE, in.BuilderVersion),
			Version: map[string]string{"cloche": in.BuilderVersion},
		},
		Metadata: &provv1.BuildMetadata{
			InvocationId: m.InvocationID,
			StartedOn:    timestamppb.New(in.StartedOn.UTC()),
			FinishedOn:   timestamppb.New(in.FinishedOn.UTC()),
		},
		Byproducts: []*intoto.ResourceDescriptor{
			{Name: ManifestByproduct, MediaType: ManifestMediaType, Content: in.Manifest},
			{Name: ResultByproduct, MediaType: ResultMediaType, Content: in.Result},
			{Name: EvidenceByproduct, MediaType: EvidenceMediaType, Content: in.Evidence},
		},
	}
}

// subjects are the result record's artifacts, by SHA-256, and the checksums file of them
// (ChecksumsName).
func subjects(r *job.Result) []*intoto.ResourceDescriptor {
	out := make([]*intoto.ResourceDescriptor, 0, len(r.Artifacts)+1)
	for _, a := range r.Artifacts {
		out = append(out, &intoto.ResourceDescriptor{
			Name:   a.Path,
			Digest: map[string]string{"sha256": a.SHA256},
		})
	}
	if sum := checksumsSubject(r.Artifacts); sum != "" {
		out = append(out, &intoto.ResourceDescriptor{Name: ChecksumsName, Digest: map[string]string{"sha256": sum}})
	}
	return out
}

// predicateStruct validates the SLSA predicate and converts it to the statement's
// predicate struct.
func predicateStruct(pred *provv1.Provenance) (*structpb.Struct, error) {
	if err := pred.Validate(); err != nil {
		return nil, fmt.Errorf("building SLSA predicate: %w", err)
	}
	predJSON, err := protojson.Marshal(pred)
	if err != nil {
		return nil, fmt.Errorf("encoding SLSA predicate: %w", err)
	}
	predStruct := &structpb.Struct{}
	if err := protojson.Unmarshal(predJSON, predStruct); err != nil {
		return nil, fmt.Errorf("converting SLSA predicate: %w", err)
	}
	return predStruct, nil
}

// encodeStatement validates the in-toto statement and encodes it compactly, within
// MaxStatementSize.
func encodeStatement(subjects []*intoto.ResourceDescriptor, predStruct *structpb.Struct) ([]byte, error) {
	st := &intoto.Statement{
		Type:          StatementType,
		Subject:       subjects,
		PredicateType: PredicateType,
		Predicate:     predStruct,
	}
	if err := st.Validate(); err != nil {
		return nil, fmt.Errorf("building in-toto statement: %w", err)
	}
	out, err := protojson.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("encoding in-toto statement: %w", err)
	}
	// protojson varies its whitespace on purpose; compacting makes the bytes depend on the
	// content only, and keeps the statement on one line.
	var compact bytes.Buffer
	if err := json.Compact(&compact, out); err != nil {
		return nil, fmt.Errorf("compacting in-toto statement: %w", err)
	}
	if compact.Len() > MaxStatementSize {
		return nil, fmt.Errorf("statement is %d bytes, limit %d", compact.Len(), MaxStatementSize)
	}
	return compact.Bytes(), nil
}

// checkInput checks what job.Parse* cannot: that the documents belong together, describe a
// successful build, and that every other input is well formed.
func checkInput(in Input, m *job.Manifest, r *job.Result) error {
	digest := sha256.Sum256(in.Manifest)
	if got := hex.EncodeToString(digest[:]); r.ManifestSHA256 != got {
		return fmt.Errorf("result record manifestSha256 is %s, but the manifest's SHA-256 is %s", r.ManifestSHA256, got)
	}
	if r.ExitCode != 0 || r.Error != "" {
		return fmt.Errorf("result record reports a failed build (exit code %d, error %q): a failed build gets no provenance", r.ExitCode, r.Error)
	}
	if len(r.Artifacts) == 0 {
		return errors.New("result record lists no artifacts: a statement needs at least one subject")
	}
	if len(in.Evidence) == 0 || len(in.Evidence) > MaxEvidenceSize || !json.Valid(in.Evidence) {
		return fmt.Errorf("evidence must be a JSON document of 1..%d bytes", MaxEvidenceSize)
	}
	if !versionPattern.MatchString(in.BuilderVersion) {
		return fmt.Errorf("builder version %q must look like 0.1.0 (letters, digits, '.', '+', '-')", in.BuilderVersion)
	}
	if in.StartedOn.IsZero() || in.FinishedOn.IsZero() || in.FinishedOn.Before(in.StartedOn) {
		return fmt.Errorf("build times must be set and finishedOn (%s) not before startedOn (%s)",
			in.FinishedOn.Format(time.RFC3339), in.StartedOn.Format(time.RFC3339))
	}
	if err := checkGuest(in.Guest); err != nil {
		return err
	}
	return checkExactIntegers(m)
}

// checkExactIntegers refuses manifest numbers a JSON number (a float64 to most readers,
// protobuf's Struct included) cannot carry exactly.
func checkExactIntegers(m *job.Manifest) error {
	for _, f := range []struct {
		name  string
		value int64
	}{
		{"sourceDateEpoch", m.SourceDateEpoch}, {"timeoutSeconds", m.TimeoutSeconds},
		{"maxOutputBytes", m.MaxOutputBytes}, {"toolchain.dataBlocks", m.Toolchain.DataBlocks},
		{"toolchain.hashOffset", m.Toolchain.HashOffset}, {"toolchain.imageSize", m.Toolchain.ImageSize},
		{"rlimits.fileSizeBytes", int64(min(m.Rlimits.FileSizeBytes, math.MaxInt64))},
	} {
		if f.value > maxExactInteger || f.value < -maxExactInteger {
			return fmt.Errorf("manifest %s is %d, beyond the %d a JSON number carries exactly", f.name, f.value, int64(maxExactInteger))
		}
	}
	return nil
}

func checkGuest(g GuestImage) error {
	switch {
	case !hex64Pattern.MatchString(g.KernelSHA256):
		return fmt.Errorf("guest image kernelSha256 %q must be 64 lowercase hex digits", g.KernelSHA256)
	case !hex64Pattern.MatchString(g.InitrdSHA256):
		return fmt.Errorf("guest image initrdSha256 %q must be 64 lowercase hex digits", g.InitrdSHA256)
	case !hex96Pattern.MatchString(g.Measurement):
		return fmt.Errorf("guest image measurement %q must be 96 lowercase hex digits (48 bytes)", g.Measurement)
	case g.VCPUs <= 0 || g.VCPUs > 4096:
		return fmt.Errorf("guest image vcpus is %d, expected 1..4096", g.VCPUs)
	case g.MemoryMiB <= 0 || g.MemoryMiB > 1<<24:
		return fmt.Errorf("guest image memoryMiB is %d, expected 1..%d", g.MemoryMiB, 1<<24)
	case (g.Release == "") != (g.Repository == ""):
		return fmt.Errorf("guest image release %q and repository %q: both or neither", g.Release, g.Repository)
	case g.Release != "" && (!releaseTag.MatchString(g.Release) || !repositoryName.MatchString(g.Repository)):
		return fmt.Errorf("guest image release %q of %q: expected vX.Y.Z of OWNER/NAME", g.Release, g.Repository)
	case len(g.Cmdline) > 4096:
		return fmt.Errorf("guest image cmdline is %d bytes, limit 4096", len(g.Cmdline))
	case g.Recipe != "" && !hex64Pattern.MatchString(g.Recipe):
		return fmt.Errorf("guest image recipe %q must be 64 lowercase hex digits", g.Recipe)
	case g.ReferenceValues != "" && !hex64Pattern.MatchString(g.ReferenceValues):
		return fmt.Errorf("guest image reference values digest %q must be 64 lowercase hex digits", g.ReferenceValues)
	}
	return nil
}

// expectedExternal is externalParameters as the manifest and result record state them. The
// writer and the checker share it, so they cannot drift apart.
func expectedExternal(m *job.Manifest, r *job.Result) ExternalParameters {
	env := map[string]string{}
	for k, v := range m.Env {
		env[k] = v
	}
	return ExternalParameters{
		Command:   append([]string{}, m.Command...),
		Workdir:   m.Workdir,
		Env:       env,
		Artifacts: append([]string{}, m.Artifacts...),
		Source: SourceParameters{
			Repository: m.Source.Repository,
			Ref:        m.Source.Ref,
			Commit:     r.SourceCommit,
			Tag:        r.SourceTag,
			Path:       m.Source.Path,
			Tree:       r.SourceTree,
		},
		Toolchain: ToolchainParameters{
			Name:           m.Toolchain.Name,
			ImageSHA256:    m.Toolchain.ImageSHA256,
			VerityRootHash: m.Toolchain.VerityRootHash,
			SourceImage:    m.Toolchain.SourceImage,
		},
		TEE:             m.TEE,
		SourceDateEpoch: m.SourceDateEpoch,
		TimeoutSeconds:  m.TimeoutSeconds,
		Rlimits:         m.Rlimits.Effective(),
		Deps:            m.Deps,
	}
}

// expectedSourceDependency is the source dependency as the manifest and result record state
// it: the commit and tree only as the guest attested them, the ref as the attested tag when
// there is one.
func expectedSourceDependency(m *job.Manifest, r *job.Result) *Dependency {
	d := &Dependency{Digest: map[string]string{"sha256": m.Source.ArchiveSHA256}}
	if m.Source.Repository != "" {
		d.URI = "git+" + m.Source.Repository
		ref := m.Source.Ref
		if r.SourceTag != "" {
			ref = "refs/tags/" + r.SourceTag
		}
		if ref != "" {
			d.URI += "@" + ref
		}
	}
	if r.SourceCommit != "" {
		d.Digest[gitDigestKey("gitCommit", r.SourceCommit)] = r.SourceCommit
	}
	if r.SourceTree != "" {
		d.Digest[gitDigestKey("gitTree", r.SourceTree)] = r.SourceTree
	}
	return d
}

// gitDigestKey names a git object id in a digest set: in-toto's gitCommit and gitTree
// are SHA-1 ids, so a SHA-256 repository's ids go under gitCommitSha256 / gitTreeSha256.
func gitDigestKey(base, id string) string {
	if len(id) == 64 {
		return base + "Sha256"
	}
	return base
}

// expectedToolchainDependency is the toolchain dependency as the manifest states it; the
// annotations are what a verifier needs to recompute the dm-verity root hash from the image.
func expectedToolchainDependency(m *job.Manifest) *Dependency {
	// The guest enforces the dm-verity root hash on every block it reads; the image file's
	// SHA-256 is the host's statement, which the guest never recomputes (that would re-read
	// the whole image on every run). So it is an annotation, not the descriptor's digest,
	// where a policy engine matching digests would take it for a checked one.
	d := &Dependency{
		URI: ToolchainURI(m.Toolchain.Name),
		Annotations: map[string]any{
			"imageSha256":    m.Toolchain.ImageSHA256,
			"verityRootHash": m.Toolchain.VerityRootHash,
			"veritySalt":     m.Toolchain.VeritySalt,
			"dataBlocks":     float64(m.Toolchain.DataBlocks),
			"hashOffset":     float64(m.Toolchain.HashOffset),
			"imageSize":      float64(m.Toolchain.ImageSize),
		},
	}
	// Only when there is one, so that the statements of other toolchains are unchanged.
	// It names content (a manifest digest), but the guest never sees it: it is the
	// host's account of where the root came from, checkable by rebuilding the image and
	// comparing verity root hashes, so an annotation too.
	if m.Toolchain.SourceImage != "" {
		d.Annotations["sourceImage"] = m.Toolchain.SourceImage
	}
	return d
}

func guestDependency(g GuestImage) *Dependency {
	// The launch measurement is no file's digest, so it is an annotation: a policy engine
	// matching digests must not take it for one. The file digests are the kernel's and the
	// initrd's annotations; the uri names the release (or says local build).
	uri, release := LocalGuestImageURI, LocalGuestImageRelease
	if g.Release != "" {
		uri, release = GuestReleaseURI(g.Repository, g.Release), g.Release
	}
	d := &Dependency{
		URI: uri,
		Annotations: map[string]any{
			"kernelSha256":      g.KernelSHA256,
			"initrdSha256":      g.InitrdSHA256,
			"cmdline":           g.Cmdline,
			"launchMeasurement": g.Measurement,
			"release":           release,
			"vcpus":             float64(g.VCPUs),
			"memoryMiB":         float64(g.MemoryMiB),
		},
	}
	if g.Recipe != "" {
		d.Annotations["recipe"] = g.Recipe
	}
	if g.ReferenceValues != "" {
		d.Annotations["referenceValuesSha256"] = g.ReferenceValues
	}
	return d
}

func (d *Dependency) descriptor(name string) (*intoto.ResourceDescriptor, error) {
	rd := &intoto.ResourceDescriptor{Name: name, Uri: d.URI, Digest: d.Digest}
	if len(d.Annotations) > 0 {
		s, err := structpb.NewStruct(d.Annotations)
		if err != nil {
			return nil, err
		}
		rd.Annotations = s
	}
	return rd, rd.Validate()
}

// toStruct converts a JSON-tagged Go value to a protobuf Struct through its JSON encoding,
// so the Struct's keys are exactly the struct's JSON tags.
func toStruct(v any) (*structpb.Struct, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	s := &structpb.Struct{}
	if err := protojson.Unmarshal(b, s); err != nil {
		return nil, err
	}
	return s, nil
}

var (
	releaseTag     = regexp.MustCompile(`^v[0-9A-Za-z][0-9A-Za-z.+-]{0,63}$`)
	repositoryName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$`)
)

// ValidReleaseTag says whether tag is a release tag (vX.Y.Z) a guest image release may have.
func ValidReleaseTag(tag string) bool { return releaseTag.MatchString(tag) }

// ValidRepository says whether name is a GitHub repository name, OWNER/NAME.
func ValidRepository(name string) bool { return repositoryName.MatchString(name) }
