package provenance

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/cloche-dev/cloche/job"
)

// CheckAgainstManifest verifies that the statement says exactly what the manifest and the
// result record say: every external parameter, the internal parameters, the source and
// toolchain dependencies, the Go modules the guest checked (both ways), the invocation id,
// the builder's TEE kind, and the subjects (equal to the result record's artifacts as a
// set, plus the checksums file of them, ChecksumsName). The host that holds a signing key is
// thereby kept from describing a build differently from what the hardware attested. m and r
// are the parsed byproducts; the guest-image dependency is not checked here (the verifier
// compares it with the evidence).
//
// The error wraps ErrMismatch and names the first differing field with both values.
func (p *Parsed) CheckAgainstManifest(m *job.Manifest, r *job.Result) error {
	if m == nil || r == nil {
		return errors.New("checking provenance: manifest and result record are required")
	}
	// Numbers travel as JSON numbers; one too large to be carried exactly could match a
	// rounded value, so it can never match.
	if err := checkExactIntegers(m); err != nil {
		return fmt.Errorf("%w: %w", ErrMismatch, err)
	}
	c := checker{}

	// The byproducts must belong together: the result record names the manifest it ran.
	digest := sha256.Sum256(p.Manifest)
	c.equal("result.manifestSha256", "SHA-256 of the manifest byproduct", r.ManifestSHA256, hex.EncodeToString(digest[:]))

	want := expectedExternal(m, r)
	got := p.External
	c.equal("externalParameters.command", "manifest", got.Command, want.Command)
	c.equal("externalParameters.workdir", "manifest", got.Workdir, want.Workdir)
	c.equal("externalParameters.env", "manifest", nonNil(got.Env), want.Env)
	c.equal("externalParameters.artifacts", "manifest", got.Artifacts, want.Artifacts)
	c.equal("externalParameters.source.repository", "manifest", got.Source.Repository, want.Source.Repository)
	c.equal("externalParameters.source.ref", "manifest", got.Source.Ref, want.Source.Ref)
	c.equal("externalParameters.source.commit", "result record", got.Source.Commit, want.Source.Commit)
	c.equal("externalParameters.source.tag", "result record", got.Source.Tag, want.Source.Tag)
	c.equal("externalParameters.source.path", "manifest", got.Source.Path, want.Source.Path)
	c.equal("externalParameters.source.tree", "result record", got.Source.Tree, want.Source.Tree)
	c.equal("externalParameters.toolchain.name", "manifest", got.Toolchain.Name, want.Toolchain.Name)
	c.equal("externalParameters.toolchain.imageSha256", "manifest", got.Toolchain.ImageSHA256, want.Toolchain.ImageSHA256)
	c.equal("externalParameters.toolchain.verityRootHash", "manifest", got.Toolchain.VerityRootHash, want.Toolchain.VerityRootHash)
	c.equal("externalParameters.toolchain.sourceImage", "manifest", got.Toolchain.SourceImage, want.Toolchain.SourceImage)
	c.equal("externalParameters.tee", "manifest", got.TEE, want.TEE)
	c.equal("externalParameters.sourceDateEpoch", "manifest", got.SourceDateEpoch, want.SourceDateEpoch)
	c.equal("externalParameters.timeoutSeconds", "manifest", got.TimeoutSeconds, want.TimeoutSeconds)
	c.equal("externalParameters.rlimits", "manifest", got.Rlimits, want.Rlimits)
	c.equal("externalParameters.deps", "manifest", got.Deps, want.Deps)
	c.equal("internalParameters.maxOutputBytes", "manifest", p.MaxOutputBytes, m.MaxOutputBytes)

	c.dependency(SourceDependency, p.Dependencies[SourceDependency], expectedSourceDependency(m, r))
	c.dependency(ToolchainDependency, p.Dependencies[ToolchainDependency], expectedToolchainDependency(m))
	c.modules(p.Dependencies, r)

	c.equal("runDetails.metadata.invocationId", "manifest", p.InvocationID, m.InvocationID)
	c.equal("runDetails.builder.id", "manifest tee "+m.TEE, p.BuilderID, BuilderID(m.TEE, p.BuilderVersion))

	c.subjects(p.Subjects, r.Artifacts)
	return c.err
}

// checker records the first mismatch; later comparisons are skipped.
type checker struct{ err error }

func (c *checker) fail(field, source string, got, want any) {
	if c.err == nil {
		c.err = fmt.Errorf("%w: %s: statement says %s, %s says %s", ErrMismatch, field, show(got), source, show(want))
	}
}

func (c *checker) equal(field, source string, got, want any) {
	if c.err != nil {
		return
	}
	// Comparing the JSON forms treats nil and empty slices alike and orders map keys.
	if show(got) != show(want) {
		c.fail(field, source, got, want)
	}
}

func (c *checker) dependency(name string, got, want *Dependency) {
	field := "resolvedDependencies[" + name + "]"
	if got == nil {
		c.fail(field, "manifest", nil, want)
		return
	}
	c.equal(field+".uri", "manifest", got.URI, want.URI)
	c.equal(field+".digest keys", "manifest", sortedKeys(got.Digest), sortedKeys(want.Digest))
	for _, k := range sortedKeys(want.Digest) {
		c.equal(field+".digest."+k, "manifest", got.Digest[k], want.Digest[k])
	}
	c.equal(field+".annotations keys", "manifest", sortedKeys(got.Annotations), sortedKeys(want.Annotations))
	for _, k := range sortedKeys(want.Annotations) {
		c.equal(field+".annotations."+k, "manifest", got.Annotations[k], want.Annotations[k])
	}
}

// subjects checks the subjects are the result record's artifacts and, optionally (a
// statement from before cloche wrote it), the checksums file of them, whose digest is
// recomputed here: the host writes that file, so only its recomputed digest vouches for it.
func (c *checker) subjects(got map[string]string, artifacts []job.Artifact) {
	want := make(map[string]string, len(artifacts)+1)
	for _, a := range artifacts {
		want[a.Path] = a.SHA256
	}
	if sum := checksumsSubject(artifacts); sum != "" {
		if g, ok := got[ChecksumsName]; ok {
			c.equal("subject "+ChecksumsName+" sha256", "result record's artifacts", g, sum)
			want[ChecksumsName] = sum
		}
	}
	for _, name := range sortedKeys(want) {
		g, ok := got[name]
		if !ok {
			c.fail("subject "+name, "result record", "no such subject", "sha256 "+want[name])
			return
		}
		c.equal("subject "+name+" sha256", "result record", g, want[name])
	}
	for _, name := range sortedKeys(got) {
		if _, ok := want[name]; !ok {
			c.fail("subject "+name, "result record", "sha256 "+got[name], "no such artifact")
			return
		}
	}
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// show formats a value for an error message: strings quoted, everything else as JSON.
func show(v any) string {
	if s, ok := v.(string); ok {
		return fmt.Sprintf("%q", s)
	}
	if s, ok := v.([]string); ok && s == nil {
		v = []string{}
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%v", v)
	}
	return string(b)
}
