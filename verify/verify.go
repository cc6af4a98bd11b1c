// Package verify checks released artifacts against a cloche provenance bundle, offline:
// the bundle's signature, the SLSA statement, the artifacts' digests, the hardware (or
// simulated) evidence and every binding between them (docs/design.md, data flow step 6).
//
// The order matters and stops at the first failure. The signing key belongs to the runner
// host, which the trust model does not trust, so a valid signature only says who published
// the statement; what was built is established by the evidence, whose HOST_DATA binds the
// manifest and whose REPORT_DATA binds the result record. The statement must then say
// nothing the manifest and the result record do not.
package verify

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/sigstore/sigstore-go/pkg/root"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/fileio"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
)

// Check names, used in FAILED lines. They are stable: scripts may match on them.
const (
	CheckOptions     = "options"
	CheckArtifact    = "artifact"
	CheckBundle      = "bundle"
	CheckSignature   = "signature"
	CheckStatement   = "statement"
	CheckSubject     = "subject"
	CheckManifest    = "manifest"
	CheckResult      = "result record"
	CheckEvidence    = "evidence"
	CheckSimulated   = "simulated TEE"
	CheckMeasurement = "measurement"
	CheckHostData    = "HOST_DATA binding"
	CheckReportData  = "REPORT_DATA binding"
	CheckConsistency = "statement consistency"
	CheckSource      = "source"
	// Evidence policy checks (see policy.go).
	CheckTCB        = "minimum TCB"
	CheckRevocation = "revocation"
	CheckCollateral = "TDX collateral"
)

// Sentinel errors, wrapped in every *Error this package returns.
var (
	ErrMismatchHash     = errors.New("artifact hash does not match any provenance subject")
	ErrMismatchBinding  = errors.New("binding mismatch")
	ErrMismatchSource   = errors.New("source does not match")
	ErrBuildNotSucceded = errors.New("the attested build did not succeed")
)

// Error is a failed check: Check names it, Err says why.
type Error struct {
	Check string
	Err   error
}

func (e *Error) Error() string { return e.Check + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

func fail(check string, err error) error { return &Error{Check: check, Err: err} }

// Limits on what is read from outside.
const (
	MaxBundleSize = 64 << 20
)

// Options say what to verify and what to expect. Optional expectations are checked only
// when set.
type Options struct {
	BundlePath string
	// PublicKey verifies key-signed bundles.
	PublicKey crypto.PublicKey
	// TrustedMaterial verifies keyless bundles (Sigstore trusted root); Identity is then
	// required. See identity.go.
	TrustedMaterial root.TrustedMaterial
	// Identity, when set, is the expected source and signer (required with
	// TrustedMaterial); ExpectedBuilderID the expected runDetails.builder.id.
	Identity          *Identity
	ExpectedBuilderID string
	// Artifacts are the files to check; each must be a subject of the statement.
	Artifacts []string

	// AllowSimulated accepts evidence from the simulated TEE, verified only against
	// SimRoots. Both are required: the opt-in alone never trusts anything.
	AllowSimulated bool
	SimRoots       []*x509.Certificate

	// ExpectedMeasurements, when non-empty, lists the guest launch measurements to accept.
	ExpectedMeasurements [][]byte
	// ExpectedSourceTree / ExpectedSourceCommit, when set, must equal the attested tree
	// id and the commit named in the manifest.
	ExpectedSourceTree   string
	ExpectedSourceCommit string

	// EvidencePolicy is what the hardware evidence must satisfy (minimum TCB, TDX module
	// and owner values, CRLs, collateral); see evidencePolicy for what is always enforced.
	EvidencePolicy attest.Policy

	// Reference, when set, says where the trusted launch measurements come from: signed
	// reference values or the guest image files (reference.go).
	Reference ReferenceOptions

	Now time.Time
}

// Result summarises a passed verification.
type Result struct {
	Artifacts    []job.Artifact
	BuilderID    string
	TEE          attest.TEE
	Simulated    bool
	Measurement  string
	SourceTree   string
	Command      []string
	InvocationID string
	Statement    []byte
	// Signer is the signing workflow (certificate SAN) of a keyless bundle.
	Signer string
	// SourceCommit is the commit the attested manifest names.
	SourceCommit string
	// Warnings name evidence checks that were skipped (e.g. revocation without a CRL).
	Warnings []string
	// ReferenceMatch says which reference value the measurement matched, when checked.
	ReferenceMatch string
}

// Summary is the text after "PASSED: ".
func (r *Result) Summary() string {
	tee := string(r.TEE)
	if r.Simulated {
		tee = "SIMULATED TEE (sim: no hardware guarantee)"
	}
	names := make([]string, len(r.Artifacts))
	for i, a := range r.Artifacts {
		names[i] = a.Path
	}
	s := fmt.Sprintf("%d artifact(s) [%s] built by %s in %s; measurement %s; source tree %s; command %q",
		len(r.Artifacts), strings.Join(names, ", "), r.BuilderID, tee, short(r.Measurement), short(r.SourceTree), strings.Join(r.Command, " "))
	if r.Signer != "" {
		s += "; signed by " + r.Signer
	}
	if r.ReferenceMatch != "" {
		s += "; measurement listed in " + r.ReferenceMatch
	}
	return s
}

func short(h string) string {
	if len(h) > 16 {
		return h[:16] + "…"
	}
	return h
}

// Verify runs every check in order and returns the first failure as *Error.
func Verify(ctx context.Context, o Options) (*Result, error) {
	if o.BundlePath == "" {
		return nil, fail(CheckOptions, errors.New("no bundle given (expected --bundle FILE)"))
	}
	if err := o.checkSignatureOptions(); err != nil {
		return nil, fail(CheckOptions, err)
	}
	if len(o.Artifacts) == 0 {
		return nil, fail(CheckOptions, errors.New("no artifacts given (expected one or more files to verify)"))
	}
	if o.AllowSimulated && len(o.SimRoots) == 0 {
		return nil, fail(CheckOptions, errors.New("--allow-simulated needs --trusted-sim-root: the opt-in alone trusts nothing"))
	}
	if err := o.Reference.Check(); err != nil {
		return nil, fail(CheckOptions, err)
	}

	// 1. The artifacts' digests, first, as slsa-verifier does.
	type localArtifact struct{ path, sha256 string }
	var locals []localArtifact
	for _, p := range o.Artifacts {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		sum, err := hashFile(p)
		if err != nil {
			return nil, fail(CheckArtifact, err)
		}
		locals = append(locals, localArtifact{p, sum})
	}

	// 2. Bundle and signature.
	bundleJSON, err := fileio.ReadCapped(o.BundlePath, MaxBundleSize)
	if err != nil {
		return nil, fail(CheckBundle, err)
	}
	stmt, cert, err := verifySignature(bundleJSON, &o)
	if err != nil {
		return nil, err
	}

	// 3. Statement.
	p, err := provenance.ParseStatement(stmt)
	if err != nil {
		return nil, fail(CheckStatement, err)
	}

	// 4. Subjects: every given file must be a subject, matched by digest.
	subjectDigests := map[string]bool{}
	for _, d := range p.Subjects {
		subjectDigests[d] = true
	}
	for _, l := range locals {
		if !subjectDigests[l.sha256] {
			return nil, fail(CheckSubject, fmt.Errorf("%w: %s has sha256 %s", ErrMismatchHash, l.path, l.sha256))
		}
	}

	// 5. The documents the evidence binds.
	m, err := job.ParseManifest(p.Manifest)
	if err != nil {
		return nil, fail(CheckManifest, err)
	}
	r, err := job.ParseResult(p.Result)
	if err != nil {
		return nil, fail(CheckResult, err)
	}
	ev, err := attest.ParseEvidence(p.Evidence)
	if err != nil {
		return nil, fail(CheckEvidence, err)
	}

	// 6. Evidence: vendor (or simulated) signature chain, policy, and the two bindings.
	manifestDigest := job.ManifestDigest(p.Manifest)
	reportData := job.ReportData(p.Result)
	claims, err := attest.Verify(ev, attest.VerifyOptions{
		AllowSimulated:       o.AllowSimulated,
		SimRoots:             o.SimRoots,
		Now:                  o.Now,
		ExpectedMeasurements: o.ExpectedMeasurements,
		ExpectedHostData:     manifestDigest[:],
		ExpectedReportData:   reportData[:],
		Policy:               evidencePolicy(o.EvidencePolicy),
	})
	if err != nil {
		switch {
		case errors.Is(err, attest.ErrSimulatedNotAllowed):
			return nil, fail(CheckSimulated, err)
		case errors.Is(err, attest.ErrHostData):
			return nil, fail(CheckHostData, fmt.Errorf("%w: the evidence was not launched with this manifest: %v", ErrMismatchBinding, err))
		case errors.Is(err, attest.ErrReportData):
			return nil, fail(CheckReportData, fmt.Errorf("%w: the evidence does not vouch for this result record: %v", ErrMismatchBinding, err))
		case errors.Is(err, attest.ErrMeasurement):
			return nil, fail(CheckMeasurement, err)
		}
		return nil, fail(EvidenceCheck(err), err)
	}
	if string(ev.TEE) != m.TEE {
		return nil, fail(CheckEvidence, fmt.Errorf("%w: evidence is from TEE %q but the manifest asked for %q", ErrMismatchBinding, ev.TEE, m.TEE))
	}

	// 7. The result record: same manifest, a successful build.
	if r.ManifestSHA256 != hex.EncodeToString(manifestDigest[:]) {
		return nil, fail(CheckResult, fmt.Errorf("%w: result record names manifest %s, the provenance carries %s", ErrMismatchBinding, r.ManifestSHA256, hex.EncodeToString(manifestDigest[:])))
	}
	if r.ExitCode != 0 || r.Error != "" {
		return nil, fail(CheckResult, fmt.Errorf("%w: exit code %d %s", ErrBuildNotSucceded, r.ExitCode, r.Error))
	}

	// 8. The statement says exactly what the attested documents say.
	if err := p.CheckAgainstManifest(m, r); err != nil {
		return nil, fail(CheckConsistency, err)
	}
	if dep := p.Dependencies["guest-image"]; dep == nil || dep.Digest["sha384"] != hex.EncodeToString(claims.Measurement) {
		got := ""
		if dep != nil {
			got = dep.Digest["sha384"]
		}
		return nil, fail(CheckConsistency, fmt.Errorf("%w: guest-image dependency names measurement %q, the evidence has %s", ErrMismatchBinding, got, hex.EncodeToString(claims.Measurement)))
	}
	// 8b. The measurement is listed in the guest release's reference values (reference.go).
	refMatch, err := checkReference(ctx, &o.Reference, ev.TEE, p.Guest, claims)
	if err != nil {
		return nil, err
	}

	// 9. Optional source expectations.
	if o.ExpectedSourceTree != "" && !strings.EqualFold(o.ExpectedSourceTree, r.SourceTree) {
		return nil, fail(CheckSource, fmt.Errorf("%w: attested source tree is %s, expected %s", ErrMismatchSource, r.SourceTree, o.ExpectedSourceTree))
	}
	if o.ExpectedSourceCommit != "" && !strings.EqualFold(o.ExpectedSourceCommit, m.Source.Commit) {
		return nil, fail(CheckSource, fmt.Errorf("%w: manifest names commit %q, expected %s", ErrMismatchSource, m.Source.Commit, o.ExpectedSourceCommit))
	}

	// 10. Who built and signed: builder id, source repository and ref, and for keyless
	// bundles the certificate's run (identity.go).
	if err := checkIdentity(&o, cert, m, p.BuilderID); err != nil {
		return nil, err
	}

	// The verified artifacts, in the result record's words.
	byDigest := map[string]job.Artifact{}
	for _, a := range r.Artifacts {
		byDigest[a.SHA256] = a
	}
	var verified []job.Artifact
	for _, l := range locals {
		verified = append(verified, byDigest[l.sha256])
	}
	sort.Slice(verified, func(i, j int) bool { return verified[i].Path < verified[j].Path })
	return &Result{
		Artifacts:      verified,
		BuilderID:      p.BuilderID,
		TEE:            ev.TEE,
		Simulated:      claims.Simulated,
		Measurement:    hex.EncodeToString(claims.Measurement),
		SourceTree:     r.SourceTree,
		Command:        m.Command,
		InvocationID:   m.InvocationID,
		Statement:      stmt,
		Signer:         signerSummary(cert),
		SourceCommit:   m.Source.Commit,
		Warnings:       claims.Warnings,
		ReferenceMatch: refMatch,
	}, nil
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", path)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
