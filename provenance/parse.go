package provenance

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	provv1 "github.com/in-toto/attestation/go/predicates/provenance/v1"
	intoto "github.com/in-toto/attestation/go/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/cloche-dev/cloche/internal/strictjson"
	"github.com/cloche-dev/cloche/job"
)

// Parsed is a verifier's typed view of a statement. Everything in it was read from the
// statement only: CheckAgainstManifest compares it with the job documents.
type Parsed struct {
	// Subjects maps each subject name (artifact path) to its SHA-256 in lowercase hex.
	Subjects       map[string]string
	BuilderID      string
	BuilderVersion string
	External       ExternalParameters
	MaxOutputBytes int64
	// Dependencies holds the resolved dependencies by name: source, toolchain, guest-image,
	// gomod:MODULE@VERSION for each checked Go module and npm:NAME@VERSION for each checked
	// npm package.
	Dependencies map[string]*Dependency
	// Guest is the guest-image dependency in typed form.
	Guest        GuestImage
	InvocationID string
	StartedOn    time.Time
	FinishedOn   time.Time
	// Manifest, Result and Evidence are the byproducts' exact bytes.
	Manifest, Result, Evidence []byte
}

var byproductSpecs = map[string]struct {
	mediaType string
	maxSize   int
}{
	ManifestByproduct: {ManifestMediaType, job.MaxManifestSize},
	ResultByproduct:   {ResultMediaType, job.MaxResultSize},
	EvidenceByproduct: {EvidenceMediaType, MaxEvidenceSize},
}

// statementErrorf is an error wrapping ErrStatement and, through %w, the cause.
func statementErrorf(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrStatement}, a...)...)
}

// ParseStatement decodes a cloche provenance statement strictly: it checks _type,
// predicateType and buildType, rejects unknown fields anywhere in the predicate (as
// slsa-verifier does for v1), decodes externalParameters into ExternalParameters rejecting
// unknown keys, and extracts exactly one of each byproduct. Every error wraps ErrStatement.
func ParseStatement(stmt []byte) (*Parsed, error) {
	st, err := decodeStatement(stmt)
	if err != nil {
		return nil, err
	}
	pred, err := decodePredicate(st)
	if err != nil {
		return nil, err
	}
	bd, rd := pred.GetBuildDefinition(), pred.GetRunDetails()
	p := &Parsed{}
	if err := p.parseParameters(bd); err != nil {
		return nil, err
	}
	if p.Subjects, err = parseSubjects(st.GetSubject()); err != nil {
		return nil, err
	}
	if p.Dependencies, err = parseDependencies(bd.GetResolvedDependencies()); err != nil {
		return nil, err
	}
	if p.Guest, err = parseGuest(p.Dependencies[GuestImageDependency]); err != nil {
		return nil, err
	}
	if err := p.parseRunDetails(rd); err != nil {
		return nil, err
	}
	return p, nil
}

// decodeStatement decodes the in-toto statement and checks its size, _type and
// predicateType.
func decodeStatement(stmt []byte) (*intoto.Statement, error) {
	if len(stmt) > MaxStatementSize {
		return nil, statementErrorf("statement is %d bytes, limit %d", len(stmt), MaxStatementSize)
	}
	var st intoto.Statement
	if err := protojson.Unmarshal(stmt, &st); err != nil {
		return nil, statementErrorf("decoding in-toto statement: %w", err)
	}
	if st.GetType() != StatementType {
		return nil, statementErrorf("_type is %q, expected %q", st.GetType(), StatementType)
	}
	if st.GetPredicateType() != PredicateType {
		return nil, statementErrorf("predicateType is %q, expected %q", st.GetPredicateType(), PredicateType)
	}
	if err := st.Validate(); err != nil {
		return nil, statementErrorf("in-toto statement: %w", err)
	}
	return &st, nil
}

// decodePredicate decodes the SLSA v1 predicate and checks its buildType. The predicate
// arrives as a generic Struct; decoding its JSON into the SLSA message rejects unknown and
// duplicated fields.
func decodePredicate(st *intoto.Statement) (*provv1.Provenance, error) {
	predJSON, err := protojson.Marshal(st.GetPredicate())
	if err != nil {
		return nil, statementErrorf("re-encoding predicate: %w", err)
	}
	var pred provv1.Provenance
	if err := protojson.Unmarshal(predJSON, &pred); err != nil {
		return nil, statementErrorf("decoding SLSA v1 predicate: %w", err)
	}
	if err := pred.Validate(); err != nil {
		return nil, statementErrorf("SLSA v1 predicate: %w", err)
	}
	if bt := pred.GetBuildDefinition().GetBuildType(); bt != BuildType {
		return nil, statementErrorf("buildDefinition.buildType is %q, expected %q", bt, BuildType)
	}
	return &pred, nil
}

// parseParameters decodes buildDefinition's external and internal parameters.
func (p *Parsed) parseParameters(bd *provv1.BuildDefinition) error {
	if err := decodeStruct(bd.GetExternalParameters(), &p.External); err != nil {
		return statementErrorf("buildDefinition.externalParameters: %w", err)
	}
	if bd.GetInternalParameters() == nil {
		return statementErrorf("buildDefinition.internalParameters is missing")
	}
	var internal internalParameters
	if err := decodeStruct(bd.GetInternalParameters(), &internal); err != nil {
		return statementErrorf("buildDefinition.internalParameters: %w", err)
	}
	p.MaxOutputBytes = internal.MaxOutputBytes
	return nil
}

// parseRunDetails reads the builder (no builder dependencies, exactly the cloche
// version), the run's metadata and the three byproducts.
func (p *Parsed) parseRunDetails(rd *provv1.RunDetails) error {
	builder := rd.GetBuilder()
	if len(builder.GetBuilderDependencies()) != 0 {
		return statementErrorf("runDetails.builder.builderDependencies must be empty")
	}
	version, ok := builder.GetVersion()["cloche"]
	if !ok || len(builder.GetVersion()) != 1 {
		return statementErrorf("runDetails.builder.version must be exactly {\"cloche\": <version>}")
	}
	p.BuilderID, p.BuilderVersion = builder.GetId(), version

	md := rd.GetMetadata()
	p.InvocationID = md.GetInvocationId()
	if md.GetStartedOn() != nil {
		p.StartedOn = md.GetStartedOn().AsTime()
	}
	if md.GetFinishedOn() != nil {
		p.FinishedOn = md.GetFinishedOn().AsTime()
	}

	byproducts, err := parseByproducts(rd.GetByproducts())
	if err != nil {
		return err
	}
	p.Manifest, p.Result, p.Evidence = byproducts[ManifestByproduct], byproducts[ResultByproduct], byproducts[EvidenceByproduct]
	return nil
}

// decodeStruct decodes a protobuf Struct into a JSON-tagged Go value strictly: no unknown
// key, no key in another case or spelling that encoding/json would fold onto a field
// ("ſource" for "source"), so the verifier reads exactly what every other reader of the
// statement reads; numbers must fit the field.
func decodeStruct(s *structpb.Struct, v any) error {
	if s == nil {
		return errors.New("missing")
	}
	b, err := protojson.Marshal(s)
	if err != nil {
		return err
	}
	return strictjson.Decode(b, v)
}

func parseSubjects(subjects []*intoto.ResourceDescriptor) (map[string]string, error) {
	// The artifacts and their checksums file.
	if len(subjects) > job.MaxArtifacts+1 {
		return nil, statementErrorf("statement has %d subjects, limit %d", len(subjects), job.MaxArtifacts+1)
	}
	out := make(map[string]string, len(subjects))
	for i, s := range subjects {
		name := s.GetName()
		if name == "" {
			return nil, statementErrorf("subject[%d] has no name", i)
		}
		if _, dup := out[name]; dup {
			return nil, statementErrorf("subject %q appears twice", name)
		}
		d := s.GetDigest()
		if len(d) != 1 || !hex64Pattern.MatchString(d["sha256"]) {
			return nil, statementErrorf("subject %q digest must be exactly {\"sha256\": <64 lowercase hex digits>}, got %v", name, d)
		}
		if s.GetUri() != "" || len(s.GetContent()) != 0 || s.GetDownloadLocation() != "" || s.GetMediaType() != "" || s.GetAnnotations() != nil {
			return nil, statementErrorf("subject %q may carry only name and digest", name)
		}
		out[name] = d["sha256"]
	}
	return out, nil
}

func parseDependencies(deps []*intoto.ResourceDescriptor) (map[string]*Dependency, error) {
	out := map[string]*Dependency{}
	for i, d := range deps {
		name := d.GetName()
		switch {
		case name == SourceDependency, name == ToolchainDependency, name == GuestImageDependency:
		case strings.HasPrefix(name, GoModuleDependencyPrefix), strings.HasPrefix(name, NPMPackageDependencyPrefix):
		default:
			return nil, statementErrorf("resolvedDependencies[%d] has name %q, expected %s, %s, %s, %sMODULE@VERSION or %sNAME@VERSION",
				i, name, SourceDependency, ToolchainDependency, GuestImageDependency, GoModuleDependencyPrefix, NPMPackageDependencyPrefix)
		}
		if _, dup := out[name]; dup {
			return nil, statementErrorf("resolved dependency %q appears twice", name)
		}
		if len(d.GetContent()) != 0 || d.GetDownloadLocation() != "" || d.GetMediaType() != "" {
			return nil, statementErrorf("resolved dependency %q may carry only name, uri, digest and annotations", name)
		}
		dep := &Dependency{URI: d.GetUri(), Digest: map[string]string{}}
		for k, v := range d.GetDigest() {
			dep.Digest[k] = v
		}
		if d.GetAnnotations() != nil {
			dep.Annotations = d.GetAnnotations().AsMap()
		}
		out[name] = dep
	}
	for _, name := range []string{SourceDependency, ToolchainDependency, GuestImageDependency} {
		if out[name] == nil {
			return nil, statementErrorf("resolved dependency %q is missing", name)
		}
	}
	return out, nil
}

// parseGuest reads the guest-image dependency strictly: it is the one dependency that
// CheckAgainstManifest cannot compare (the verifier compares it with the evidence instead).
func parseGuest(d *Dependency) (GuestImage, error) {
	var g GuestImage
	fail := func(format string, a ...any) (GuestImage, error) {
		return GuestImage{}, statementErrorf("resolved dependency %q: %s", GuestImageDependency, fmt.Sprintf(format, a...))
	}
	if len(d.Digest) != 0 {
		return fail("digest must be empty (the launch measurement is annotation launchMeasurement), got %v", d.Digest)
	}
	if err := parseGuestRelease(d, &g); err != nil {
		return fail("%v", err)
	}
	var ok bool
	if g.Measurement, ok = d.Annotations["launchMeasurement"].(string); !ok || !hex96Pattern.MatchString(g.Measurement) {
		return fail("annotation launchMeasurement must be 96 lowercase hex digits")
	}
	want := []string{"cmdline", "initrdSha256", "kernelSha256", "launchMeasurement", "memoryMiB", "release", "vcpus"}
	// recipe and referenceValuesSha256 are optional (guest images without a recipe or
	// without shipped reference values); nothing else may appear.
	required := map[string]bool{}
	for _, k := range sortedKeys(d.Annotations) {
		if k == "recipe" || k == "referenceValuesSha256" {
			continue
		}
		required[k] = true
	}
	if got := sortedKeys(required); strings.Join(got, ",") != strings.Join(want, ",") {
		return fail("annotations must be exactly %v (plus optional recipe, referenceValuesSha256), got %v", want, sortedKeys(d.Annotations))
	}
	for key, field := range map[string]*string{"recipe": &g.Recipe, "referenceValuesSha256": &g.ReferenceValues} {
		v, present := d.Annotations[key]
		if !present {
			continue
		}
		s, ok := v.(string)
		if !ok || !hex64Pattern.MatchString(s) {
			return fail("annotation %s must be 64 lowercase hex digits", key)
		}
		*field = s
	}
	if g.Cmdline, ok = d.Annotations["cmdline"].(string); !ok {
		return fail("annotation cmdline must be a string")
	}
	if g.KernelSHA256, ok = d.Annotations["kernelSha256"].(string); !ok || !hex64Pattern.MatchString(g.KernelSHA256) {
		return fail("annotation kernelSha256 must be 64 lowercase hex digits")
	}
	if g.InitrdSHA256, ok = d.Annotations["initrdSha256"].(string); !ok || !hex64Pattern.MatchString(g.InitrdSHA256) {
		return fail("annotation initrdSha256 must be 64 lowercase hex digits")
	}
	vcpus, ok := exactInteger(d.Annotations["vcpus"])
	if !ok || vcpus <= 0 || vcpus > 4096 {
		return fail("annotation vcpus must be an integer in 1..4096")
	}
	mem, ok := exactInteger(d.Annotations["memoryMiB"])
	if !ok || mem <= 0 || mem > 1<<24 {
		return fail("annotation memoryMiB must be an integer in 1..%d", 1<<24)
	}
	g.VCPUs, g.MemoryMiB = int(vcpus), int(mem)
	return g, nil
}

func parseByproducts(rds []*intoto.ResourceDescriptor) (map[string][]byte, error) {
	out := map[string][]byte{}
	for i, b := range rds {
		name := b.GetName()
		spec, known := byproductSpecs[name]
		if !known {
			return nil, statementErrorf("byproduct[%d] has name %q, expected %s, %s or %s",
				i, name, ManifestByproduct, ResultByproduct, EvidenceByproduct)
		}
		if _, dup := out[name]; dup {
			return nil, statementErrorf("byproduct %q appears twice", name)
		}
		if b.GetMediaType() != spec.mediaType {
			return nil, statementErrorf("byproduct %q has mediaType %q, expected %q", name, b.GetMediaType(), spec.mediaType)
		}
		if n := len(b.GetContent()); n == 0 || n > spec.maxSize {
			return nil, statementErrorf("byproduct %q content is %d bytes, expected 1..%d", name, n, spec.maxSize)
		}
		if b.GetUri() != "" || len(b.GetDigest()) != 0 || b.GetDownloadLocation() != "" || b.GetAnnotations() != nil {
			return nil, statementErrorf("byproduct %q may carry only name, mediaType and content", name)
		}
		out[name] = b.GetContent()
	}
	for _, name := range []string{ManifestByproduct, ResultByproduct, EvidenceByproduct} {
		if out[name] == nil {
			return nil, statementErrorf("byproduct %q is missing", name)
		}
	}
	return out, nil
}

// exactInteger accepts a JSON number (float64) that is an integer small enough to have been
// carried exactly.
func exactInteger(v any) (int64, bool) {
	f, ok := v.(float64)
	if !ok || f != math.Trunc(f) || math.Abs(f) > maxExactInteger {
		return 0, false
	}
	return int64(f), true
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// parseGuestRelease reads the release annotation and the uri that must go with it: a
// release's page for a tag, LocalGuestImageURI for "local".
func parseGuestRelease(d *Dependency, g *GuestImage) error {
	release, _ := d.Annotations["release"].(string)
	if release == LocalGuestImageRelease {
		if d.URI != LocalGuestImageURI {
			return fmt.Errorf("uri of a local build must be %s, got %q", LocalGuestImageURI, d.URI)
		}
		return nil
	}
	rest, ok := strings.CutPrefix(d.URI, "https://github.com/")
	repo, tag, ok2 := strings.Cut(rest, "/releases/tag/")
	if !ok || !ok2 || tag != release || !releaseTag.MatchString(tag) || !repositoryName.MatchString(repo) {
		return fmt.Errorf("annotation release %q and uri %q: expected %q with uri %s, or a tag with uri %s", release, d.URI,
			LocalGuestImageRelease, LocalGuestImageURI, GuestReleaseURI("OWNER/NAME", "TAG"))
	}
	g.Release, g.Repository = tag, repo
	return nil
}
