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
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
	"github.com/sigstore/sigstore-go/pkg/root"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/verifier"
	"github.com/cloche-dev/cloche/internal/fileio"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/reference"
	"github.com/cloche-dev/cloche/source"
)

// Sentinel errors, wrapped in every *Error this package returns.
var (
	ErrMismatchHash     = errors.New("artifact hash does not match any provenance subject")
	ErrMismatchBinding  = errors.New("binding mismatch")
	ErrMismatchSource   = errors.New("source does not match")
	ErrBuildNotSucceded = errors.New("the attested build did not succeed")
	// ErrNoExpectation: a PASSED would vouch for a source or toolchain nobody but the runner
	// host chose, because the options name none (and no unsafe opt-out accepts that).
	ErrNoExpectation = errors.New("no expectation given")
)

// Limits on what is read from outside.
const (
	MaxBundleSize = 64 << 20
)

// Options say what to verify and what to expect. Optional expectations are checked only
// when set; the launch measurement is always checked against a trusted source.
type Options struct {
	BundlePath string
	// PublicKey verifies key-signed bundles.
	PublicKey crypto.PublicKey
	// TrustedMaterial verifies keyless bundles (Sigstore trusted root); Identity is then
	// required. See identity.go.
	TrustedMaterial root.TrustedMaterial
	// Identity, when set, is the expected source and signer (required with
	// TrustedMaterial); ExpectedBuilderID the expected builder ("…/builders/snp", or with
	// "@vX" the version, which only trusted reference values can bind).
	Identity          *Identity
	ExpectedBuilderID string
	// Artifacts are the files to check; each must be a subject of the statement, a
	// regular file, and given once.
	Artifacts []string
	// Checksums are checksums files (sha256sum's format, e.g. goreleaser's): each is
	// checked as an artifact, and every file it lists, beside it, must have the listed
	// SHA-256. Artifacts may then be empty.
	Checksums []string

	// AllowSimulated accepts evidence from the simulated TEE, verified only against
	// SimRoots (self-signed CA certificates). Both are required.
	AllowSimulated bool
	SimRoots       []*x509.Certificate

	// The trusted sources of launch measurements; PASSED needs the measurement to match
	// one of those given. ExpectedMeasurements are pinned values: 48 bytes (SNP and sim
	// MEASUREMENT) or, for TDX, 192 bytes (MRTD || RTMR0 || RTMR1 || RTMR2; MRTD alone
	// binds no kernel). Reference are signed reference values or a guest image to compute
	// them from; EmbeddedReferences are the reference values built into this cloche for the
	// guest images its release publishes, used when Reference names neither.
	ExpectedMeasurements [][]byte
	Reference            ReferenceOptions
	EmbeddedReferences   []*reference.Document
	// InsecureSkipMeasurement accepts any launch measurement. The result then carries a
	// warning and its summary says "measurement NOT checked".
	InsecureSkipMeasurement bool
	// UnsafeAllowAnyRTMR0 accepts TDX evidence whose RTMR0 nothing pins (no
	// EvidencePolicy.TDX.RTMR[0], no 192-byte ExpectedMeasurements, no Pins.RTMR0Events):
	// the host's ACPI tables, which the guest kernel runs, are then unchecked. The result
	// carries a warning. The event log must still replay to RTMR0.
	UnsafeAllowAnyRTMR0 bool

	// ExpectedSourceTree / ExpectedSourceCommit / ExpectedSourceTag, when set, must equal
	// the tree id, commit id and annotated tag name the guest attested in the result record
	// (computed from the git objects, never the host's strings). A lightweight tag has no
	// object: only a keyless signer's ref (Identity.SourceTag) can name it.
	ExpectedSourceTree   string
	ExpectedSourceCommit string
	ExpectedSourceTag    string

	// Pins on what the host chose and the evidence attests faithfully (pins.go).
	Pins Pins

	// A PASSED must say which source was built with which toolchain, and the runner host
	// writes both into the manifest, so each needs an expectation the host cannot write:
	// the source ExpectedSourceCommit or ExpectedSourceTree (ExpectedSourceTag alone is not
	// one) or a keyless Identity (whose certificate names the repository and commit), the
	// toolchain Pins.ToolchainDigest. UnsafeAllowAnySource and
	// UnsafeAllowAnyToolchain accept whatever the host chose instead; the result then
	// carries a warning saying so.
	UnsafeAllowAnySource    bool
	UnsafeAllowAnyToolchain bool

	// EvidencePolicy is what the hardware evidence must satisfy (minimum TCB, TDX module
	// and owner values, CRLs, collateral, platform allow-list); see evidencePolicy for what
	// is always enforced.
	EvidencePolicy verifier.Policy

	Now time.Time
}

// Result is the outcome of a verification. Verify returns it also on failure, with
// Checks up to the failed one.
type Result struct {
	Passed bool `json:"passed"`
	// Checks lists every check that ran, in order, with its outcome.
	Checks    []CheckOutcome `json:"checks"`
	Artifacts []job.Artifact `json:"artifacts,omitempty"`
	Bundle    string         `json:"bundle"`
	// BuilderID is the builder as verified: TEE kind, and the version only when trusted
	// reference values bound it. StatementBuilderID is what the statement says.
	BuilderID          string     `json:"builderId,omitempty"`
	StatementBuilderID string     `json:"statementBuilderId,omitempty"`
	TEE                attest.TEE `json:"tee,omitempty"`
	Simulated          bool       `json:"simulated"`
	ProductLine        string     `json:"productLine,omitempty"`
	Platform           string     `json:"platform,omitempty"`
	Measurement        string     `json:"measurement,omitempty"`
	// MeasurementChecked is false only with InsecureSkipMeasurement.
	MeasurementChecked bool `json:"measurementChecked"`
	// ReferenceMatch says which reference value the measurement matched, when one did.
	ReferenceMatch string `json:"referenceMatch,omitempty"`
	SourceTree     string `json:"sourceTree,omitempty"`
	SourceCommit   string `json:"sourceCommit,omitempty"`
	SourceTag      string `json:"sourceTag,omitempty"`
	// SourcePath is the subdirectory of the attested commit that was the source.
	SourcePath string `json:"sourcePath,omitempty"`
	// ACPITables is the digest of the ACPI tables the guest was given, as it computed it.
	ACPITables string `json:"acpiTables,omitempty"`
	// RTMR0Events are the TDX event log's events that replayed to RTMR0 (Pins.RTMR0Events
	// pins their digests).
	RTMR0Events []RTMR0Event `json:"rtmr0Events,omitempty"`
	// GuestImageRelease says which guest image release was launched, as far as the
	// reference values bind it ("release vX", "local build", "... not bound").
	GuestImageRelease string `json:"guestImageRelease,omitempty"`
	// GuestClockStart is the guest's wall clock when it accepted the manifest: bound by
	// REPORT_DATA, but the host sets that clock, so it says what the build saw, not when.
	GuestClockStart string   `json:"guestClockStart,omitempty"`
	Command         []string `json:"command,omitempty"`
	InvocationID    string   `json:"invocationId,omitempty"`
	// Signer is the signing workflow (certificate SAN) of a keyless bundle.
	Signer string `json:"signer,omitempty"`
	// Pinned names what the verifier's options pinned; Reported what was only reported
	// (attested, but the host's choice and not compared with anything).
	Pinned   []string `json:"pinned"`
	Reported []string `json:"reported"`
	// Unbound lists statement claims that no trusted source binds; they are dropped from
	// what this result vouches for.
	Unbound []string `json:"unbound,omitempty"`
	// Warnings name limitations of a passed verification (e.g. revocation without a CRL).
	Warnings []string `json:"warnings,omitempty"`
	// Policy is the policy a verification summary (NewVSA) digested, once one was made.
	Policy    *VSAPolicy `json:"policy,omitempty"`
	Statement []byte     `json:"-"`
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
	meas := "measurement " + short(r.Measurement)
	switch {
	case !r.MeasurementChecked:
		meas += " NOT checked"
	case r.ReferenceMatch != "":
		meas += " listed in " + r.ReferenceMatch
	default:
		meas += " pinned"
	}
	src := "source tree " + short(r.SourceTree)
	if r.SourceCommit != "" {
		src += ", commit " + r.SourceCommit
	}
	if r.SourceTag != "" {
		src += ", tag " + r.SourceTag
		if r.Signer == "" {
			// Key-signed: no certificate names the ref, and anyone can write a tag object.
			src += " (an unsigned tag object the host sent)"
		}
	}
	if r.SourcePath != "" {
		src += ", path " + r.SourcePath
	}
	s := fmt.Sprintf("%d artifact(s) [%s] built by %s in %s; %s; %s; command %q",
		len(r.Artifacts), strings.Join(names, ", "), r.BuilderID, tee, meas, src, strings.Join(r.Command, " "))
	if r.Signer != "" {
		s += "; signed by " + r.Signer
	}
	s += "; pinned: " + listOrNone(r.Pinned) + "; only reported: " + listOrNone(r.Reported)
	return s
}

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ", ")
}

func short(h string) string {
	if len(h) > 16 {
		return h[:16] + "…"
	}
	return h
}

// Verify runs every check in order and stops at the first failure, returned as *Error.
// The Result is never nil: on failure it lists the checks up to the failed one.
func Verify(ctx context.Context, o Options) (*Result, error) {
	res := &Result{Bundle: o.BundlePath, MeasurementChecked: !o.InsecureSkipMeasurement}
	if err := verify(ctx, &o, res); err != nil {
		return res, res.failed(CheckOptions, err)
	}
	res.Passed = true
	return res, nil
}

// checkOptions refuses options that are missing or contradict each other, before
// anything is read.
func (o *Options) checkOptions() error {
	switch {
	case o.BundlePath == "":
		return fail(CheckOptions, errors.New("no bundle given (expected Options.BundlePath)"))
	case len(o.Artifacts) == 0 && len(o.Checksums) == 0:
		return fail(CheckOptions, errors.New("no artifacts given (expected one or more files to verify)"))
	case o.AllowSimulated && len(o.SimRoots) == 0:
		return fail(CheckOptions, errors.New("AllowSimulated needs SimRoots: the opt-in alone trusts nothing"))
	}
	if err := o.checkSignatureOptions(); err != nil {
		return fail(CheckOptions, err)
	}
	for i, r := range o.SimRoots {
		if err := verifier.CheckSimRoot(r); err != nil {
			return fail(CheckOptions, fmt.Errorf("SimRoots[%d]: %w", i, err))
		}
	}
	if err := o.Reference.Check(); err != nil {
		return fail(CheckOptions, err)
	}
	for i, m := range o.ExpectedMeasurements {
		if len(m) != 48 && len(m) != 192 {
			return fail(CheckOptions, fmt.Errorf("ExpectedMeasurements[%d] is %d bytes, expected 48 (SNP, sim) or 192 (TDX MRTD||RTMR0||RTMR1||RTMR2)", i, len(m)))
		}
	}
	if err := o.Pins.check(); err != nil {
		return fail(CheckOptions, err)
	}
	if err := o.checkRTMR0Options(); err != nil {
		return fail(CheckOptions, err)
	}
	if o.Identity != nil && o.TrustedMaterial == nil {
		return fail(CheckSourceRepository, errUnboundRepository)
	}
	if o.Reference.Key != nil && o.PublicKey != nil && sameKey(o.Reference.Key, o.PublicKey) {
		return fail(CheckReference, errors.New("Reference.Key is the provenance signing key: the host holds that key, so reference values signed with it are the host's own word (use the guest image release's key)"))
	}
	if err := o.checkExpectations(); err != nil {
		return err
	}
	trusted := len(o.ExpectedMeasurements) > 0 || o.Reference.BundlePath != "" || o.Reference.GuestImageDir != "" || countDocs(o.EmbeddedReferences) > 0
	switch {
	case o.InsecureSkipMeasurement && trusted:
		return fail(CheckOptions, errors.New("InsecureSkipMeasurement contradicts the measurement sources given"))
	case !trusted && !o.InsecureSkipMeasurement:
		return fail(CheckMeasurement, errors.New("no trusted source of launch measurements: give signed reference values (Reference.BundlePath), a guest image to compute them from (Reference.GuestImageDir) or expected measurements (ExpectedMeasurements); InsecureSkipMeasurement accepts any guest"))
	}
	return nil
}

// The warnings the unsafe opt-outs add (a verification summary then vouches for L1 only).
const (
	warnSourceNotPinned    = "source NOT pinned"
	warnToolchainNotPinned = "toolchain NOT pinned"
)

// checkExpectations requires an expectation on the source and on the toolchain, or the
// unsafe opt-out that stands for it, never both.
func (o *Options) checkExpectations() error {
	// A tag name alone is no expectation: the host can write an annotated tag object of any
	// name for any commit it made. A commit or tree id names the content.
	source := o.ExpectedSourceTree != "" || o.ExpectedSourceCommit != "" || o.Identity != nil
	switch {
	case source && o.UnsafeAllowAnySource:
		return fail(CheckOptions, errors.New("UnsafeAllowAnySource contradicts the source expectation given"))
	case !source && !o.UnsafeAllowAnySource:
		return fail(CheckExpectSource, fmt.Errorf("%w for the source: the manifest's source is the runner host's choice; give Options.ExpectedSourceCommit, ExpectedSourceTree or a keyless Identity (ExpectedSourceTag alone binds no content: the host can write a tag object of that name for any commit), or UnsafeAllowAnySource to accept any source", ErrNoExpectation))
	}
	toolchain := o.Pins.ToolchainDigest != ""
	switch {
	case toolchain && o.UnsafeAllowAnyToolchain:
		return fail(CheckOptions, errors.New("UnsafeAllowAnyToolchain contradicts Pins.ToolchainDigest"))
	case !toolchain && !o.UnsafeAllowAnyToolchain:
		return fail(CheckExpectToolchain, fmt.Errorf("%w for the toolchain: the manifest's toolchain is the runner host's choice, and its compiler makes the artifacts; give Pins.ToolchainDigest (its dm-verity root hash), or UnsafeAllowAnyToolchain to accept any toolchain", ErrNoExpectation))
	}
	return nil
}

func verify(ctx context.Context, o *Options, res *Result) error {
	if err := o.checkOptions(); err != nil {
		return err
	}
	res.record(CheckOptions, Passed, "")
	v := &verification{o: o, res: res}
	steps := []func(context.Context) error{
		v.readStatement,
		v.matchSubjects,
		v.parseDocuments,
		v.verifyEvidence,
		v.matchMeasurement,
		v.checkResultRecord,
		v.checkConsistency,
		v.checkGuestImage,
		v.checkWho,
		v.applyPins,
	}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			return err
		}
	}
	v.fillResult()
	return nil
}

// verification is what verify's steps have established so far, in the order they run.
type verification struct {
	o   *Options
	res *Result

	locals []localArtifact      // the artifacts given and their digests
	cert   *certificate.Summary // the bundle's signer (keyless bundles)
	p      *provenance.Parsed   // the signed statement
	listed []job.Artifact       // the files the checksum files list
	m      *job.Manifest        // the attested manifest
	r      *job.Result          // the attested result record
	ev     *attest.Evidence     // the hardware (or simulated) evidence
	claims *verifier.Claims     // what the evidence establishes
	match  *refMatch            // the trusted reference value the measurement matched
}

// readStatement is steps 1-3: the artifacts' digests first, as slsa-verifier does, then
// the bundle and its signature, then the statement.
func (v *verification) readStatement(ctx context.Context) error {
	locals, err := hashArtifacts(ctx, slices.Concat(v.o.Artifacts, v.o.Checksums))
	if err != nil {
		return err
	}
	v.locals = locals
	v.res.record(CheckArtifact, Passed, "%d file(s)", len(locals))

	bundleJSON, err := fileio.ReadCapped(v.o.BundlePath, MaxBundleSize)
	if err != nil {
		return fail(CheckBundle, err)
	}
	stmt, cert, err := verifySignature(bundleJSON, v.o)
	if err != nil {
		return err
	}
	v.cert = cert
	v.res.record(CheckSignature, Passed, "%s", signerDesc(v.o, cert))
	v.res.Statement, v.res.Signer = stmt, signerSummary(cert)

	p, err := provenance.ParseStatement(stmt)
	if err != nil {
		return fail(CheckStatement, err)
	}
	v.p = p
	v.res.StatementBuilderID = p.BuilderID
	v.res.record(CheckStatement, Passed, "")
	return nil
}

// matchSubjects is step 4: every given file must be a subject, matched by digest, and
// every file a checksum file lists must match it.
func (v *verification) matchSubjects(ctx context.Context) error {
	if err := checkSubjects(v.p, v.locals); err != nil {
		return err
	}
	v.res.record(CheckSubject, Passed, "")
	listed, err := checkChecksums(ctx, v.o.Checksums, v.p.Subjects)
	if err != nil {
		return err
	}
	v.listed = listed
	if len(v.o.Checksums) > 0 {
		v.res.record(CheckChecksums, Passed, "%d file(s) listed", len(listed))
	}
	return nil
}

// parseDocuments is step 5: the documents the evidence binds.
func (v *verification) parseDocuments(context.Context) error {
	m, err := job.ParseManifest(v.p.Manifest)
	if err != nil {
		return fail(CheckManifest, err)
	}
	r, err := job.ParseResult(v.p.Result)
	if err != nil {
		return fail(CheckResult, err)
	}
	ev, err := attest.ParseEvidence(v.p.Evidence)
	if err != nil {
		return fail(CheckEvidenceParse, err)
	}
	v.m, v.r, v.ev = m, r, ev
	return nil
}

// verifyEvidence is step 6: the vendor (or simulated) signature chain, policy and the
// two bindings, then the evidence's TEE against the manifest's.
func (v *verification) verifyEvidence(context.Context) error {
	claims, err := verifyEvidence(v.o, v.p, v.ev)
	if err != nil {
		return err
	}
	v.claims = claims
	res, ev := v.res, v.ev
	res.TEE, res.Simulated, res.Measurement = ev.TEE, claims.Simulated, hex.EncodeToString(claims.Measurement)
	res.ProductLine, res.Platform = claims.ProductLine, claims.PlatformID
	res.Warnings = append(res.Warnings, claims.Warnings...)
	res.record(CheckChain, Passed, "%s evidence", ev.TEE)
	res.record(CheckHostData, Passed, "manifest")
	res.record(CheckReportData, Passed, "result record")
	recordRevocation(res, ev.TEE, v.o.EvidencePolicy)
	if len(v.o.EvidencePolicy.AllowedPlatforms) > 0 {
		res.Pinned = append(res.Pinned, "platform")
	}
	if string(ev.TEE) != v.m.TEE {
		return fail(CheckEvidenceTEE, fmt.Errorf("%w: evidence is from TEE %q but the manifest asked for %q", ErrMismatchBinding, ev.TEE, v.m.TEE))
	}
	return nil
}

// recordRevocation says whether the vendor's revocation data was checked: the AMD CRL for
// SEV-SNP, Intel's collateral (CRLs, TCB status, QE identity) for TDX. Without it the
// evidence verified, with a warning, and the outcome is a warning too, which keeps a
// verification summary from vouching for Build L3 (buildLevel).
func recordRevocation(res *Result, tee attest.TEE, pol verifier.Policy) {
	switch {
	case tee == attest.TEESNP && pol.AMDCRL != nil:
		res.record(CheckRevocation, Passed, "AMD CRL")
	case tee == attest.TEESNP:
		res.record(CheckRevocation, Warning, "NOT checked: no AMD CRL")
	case tee == attest.TEETDX && pol.TDXCollateral != nil:
		res.record(CheckCollateral, Passed, "Intel collateral")
	case tee == attest.TEETDX:
		res.record(CheckCollateral, Warning, "NOT checked: no TDX collateral")
	}
}

// matchMeasurement is step 9, run before 7: the measurement is one a trusted source
// lists, and the guest-image claims are those of the listed value.
func (v *verification) matchMeasurement(ctx context.Context) error {
	match, err := checkMeasurement(ctx, v.o, v.res, v.ev.TEE, v.p.Guest, v.claims)
	if err != nil {
		return err
	}
	v.match = match
	return checkRTMR0(v.o, v.res, v.claims)
}

// checkResultRecord is step 7: the result record names the same manifest and a
// successful build.
func (v *verification) checkResultRecord(context.Context) error {
	return checkResultRecord(v.p.Manifest, v.r)
}

// checkResultRecord checks that r names the manifest (its exact bytes) and a successful
// build.
func checkResultRecord(manifest []byte, r *job.Result) error {
	manifestDigest := job.ManifestDigest(manifest)
	if r.ManifestSHA256 != hex.EncodeToString(manifestDigest[:]) {
		return fail(CheckResultManifest, fmt.Errorf("%w: result record names manifest %s, the provenance carries %s", ErrMismatchBinding, r.ManifestSHA256, hex.EncodeToString(manifestDigest[:])))
	}
	if r.ExitCode != 0 || r.Error != "" {
		return fail(CheckResultStatus, fmt.Errorf("%w: exit code %d %s", ErrBuildNotSucceded, r.ExitCode, r.Error))
	}
	return nil
}

// checkConsistency is step 8: the statement says exactly what the attested documents
// say; its commit and tag first, under their own names.
func (v *verification) checkConsistency(context.Context) error {
	if err := checkAttestedSource(v.p, v.m, v.r); err != nil {
		return err
	}
	unboundBuilder, err := checkStatementBuilder(v.p, v.m.TEE, v.match)
	if err != nil {
		return err
	}
	v.res.Unbound = append(v.res.Unbound, unboundBuilder...)
	v.res.Unbound = append(v.res.Unbound, hostClaims(v.m, v.o.Identity != nil)...)
	if err := checkStatementFields(v.p, v.m, v.r, v.claims); err != nil {
		return err
	}
	v.res.record(CheckConsistency, Passed, "")
	return nil
}

// hostClaims are the manifest's claims only the runner host vouches for, which the
// statement repeats: the toolchain image's file digest and container image (the guest
// mounts the image through dm-verity and checks neither; its verity root is what binds the
// bytes), and, without a keyless identity, the source repository, ref and invocation id.
func hostClaims(m *job.Manifest, keyless bool) []string {
	claims := []string{"toolchain imageSha256"}
	if m.Toolchain.SourceImage != "" {
		claims = append(claims, "toolchain sourceImage")
	}
	if !keyless {
		// A keyless certificate names the workflow run the invocation id must be; with a
		// key, it is whatever the host wrote.
		claims = append(claims, "source repository", "source ref", "invocation id")
	}
	return claims
}

// checkGuestImage checks the statement's guest-image claims and release against the
// matched reference value, and records the builder id they bind.
func (v *verification) checkGuestImage(context.Context) error {
	res := v.res
	unbound, err := checkGuestBinding(v.p.Guest, v.match)
	if err != nil {
		return err
	}
	for _, u := range unbound {
		res.Unbound = append(res.Unbound, "guest-image "+u)
	}
	res.record(CheckGuestImage, Passed, "unbound: %s", listOrNone(unbound))
	released, unboundRelease, err := checkGuestRelease(v.p.Guest, v.match)
	if err != nil {
		return err
	}
	for _, u := range unboundRelease {
		res.Unbound = append(res.Unbound, "guest-image "+u)
	}
	res.GuestImageRelease = released
	res.record(CheckGuestRelease, Passed, "%s", released)
	res.BuilderID = boundBuilderID(v.m.TEE, v.match)
	return nil
}

// checkWho is steps 10 and 11: the optional source expectations, then who built and
// signed: builder id, source repository and ref, and for keyless bundles the
// certificate's run (identity.go).
func (v *verification) checkWho(context.Context) error {
	o, res := v.o, v.res
	if err := checkSource(o, res, v.r); err != nil {
		return err
	}
	if err := checkIdentity(o, v.cert, v.m, v.r, res.BuilderID); err != nil {
		return err
	}
	if o.ExpectedBuilderID != "" {
		res.record(CheckBuilderID, Passed, "%s", res.BuilderID)
		res.Pinned = append(res.Pinned, "builder")
	}
	if o.Identity != nil {
		res.record(CheckSourceRepository, Passed, "%s", v.m.Source.Repository)
		res.Pinned = append(res.Pinned, "repository")
	}
	return nil
}

// applyPins is step 12: pins on what the host chose.
func (v *verification) applyPins(context.Context) error {
	if err := v.o.Pins.apply(v.res, v.m, v.r); err != nil {
		return err
	}
	if v.o.UnsafeAllowAnySource {
		v.res.Warnings = append(v.res.Warnings, warnSourceNotPinned+" (UnsafeAllowAnySource): the runner host chose what was built")
	}
	if v.o.UnsafeAllowAnyToolchain {
		v.res.Warnings = append(v.res.Warnings, warnToolchainNotPinned+" (UnsafeAllowAnyToolchain): the runner host chose the compiler that made the artifacts")
	}
	if v.o.InsecureSkipMeasurement {
		v.res.Warnings = append(v.res.Warnings, "measurement NOT checked (InsecureSkipMeasurement): any guest image, including one the host wrote, could have produced this evidence")
	}
	return nil
}

// fillResult copies what passed verification establishes into the Result.
func (v *verification) fillResult() {
	res, m, r := v.res, v.m, v.r
	res.Artifacts = append(verifiedArtifacts(r, v.locals), v.listed...)
	res.SourceTree, res.SourceCommit, res.SourceTag = r.SourceTree, r.SourceCommit, r.SourceTag
	if r.SourceCommit != "" {
		res.SourcePath = m.Source.Path
	}
	res.ACPITables = r.ACPITablesSHA256
	res.GuestClockStart = r.GuestClockStart
	res.Command, res.InvocationID = m.Command, m.InvocationID
}

// localArtifact is a file given to verify and its digest.
type localArtifact struct{ path, sha256 string }

// hashArtifacts hashes each artifact once; the same file given twice is refused.
func hashArtifacts(ctx context.Context, paths []string) ([]localArtifact, error) {
	var locals []localArtifact
	var infos []os.FileInfo
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		st, err := os.Stat(p)
		if err != nil {
			return nil, fail(CheckArtifact, err)
		}
		if !st.Mode().IsRegular() {
			return nil, fail(CheckArtifact, fmt.Errorf("%s is not a regular file (%v)", p, st.Mode().Type()))
		}
		for i, prev := range infos {
			if os.SameFile(prev, st) {
				return nil, fail(CheckArtifact, fmt.Errorf("%s is given twice (also as %s)", p, locals[i].path))
			}
		}
		sum, err := hashFile(p)
		if err != nil {
			return nil, fail(CheckArtifact, err)
		}
		infos = append(infos, st)
		locals = append(locals, localArtifact{p, sum})
	}
	return locals, nil
}

func checkSubjects(p *provenance.Parsed, locals []localArtifact) error {
	subjectDigests := map[string]bool{}
	for _, d := range p.Subjects {
		subjectDigests[d] = true
	}
	for _, l := range locals {
		if !subjectDigests[l.sha256] {
			return fail(CheckSubject, fmt.Errorf("%w: %s has sha256 %s", ErrMismatchHash, l.path, l.sha256))
		}
	}
	return nil
}

// verifyEvidence checks the evidence against the vendor (or sim) roots, the policy and
// the two bindings, with the pinned measurements that fit its TEE.
func verifyEvidence(o *Options, p *provenance.Parsed, ev *attest.Evidence) (*verifier.Claims, error) {
	manifestDigest := job.ManifestDigest(p.Manifest)
	reportData := job.ReportData(p.Result)
	pinned, err := pinnedMeasurements(o.ExpectedMeasurements, ev.TEE)
	if err != nil {
		return nil, err
	}
	claims, err := verifier.Verify(ev, verifier.Options{
		AllowSimulated:       o.AllowSimulated,
		SimRoots:             o.SimRoots,
		Now:                  o.Now,
		ExpectedMeasurements: pinned,
		ExpectedHostData:     manifestDigest[:],
		ExpectedReportData:   reportData[:],
		Policy:               evidencePolicy(o.EvidencePolicy),
	})
	if err != nil {
		check := EvidenceCheck(err)
		switch check {
		case CheckHostData:
			err = fmt.Errorf("%w: the evidence was not launched with this manifest: %w", ErrMismatchBinding, err)
		case CheckReportData:
			err = fmt.Errorf("%w: the evidence does not vouch for this result record: %w", ErrMismatchBinding, err)
		}
		return nil, fail(check, err)
	}
	return claims, nil
}

// pinnedMeasurements keeps the pinned values that apply to the TEE: 48-byte values for SNP
// and sim, 192-byte MRTD||RTMR0..2 values for TDX. Pins given that fit none is a failure,
// not "no pin".
func pinnedMeasurements(all [][]byte, tee attest.TEE) ([][]byte, error) {
	want := 48
	if tee == attest.TEETDX {
		want = 192
	}
	var out [][]byte
	for _, m := range all {
		if len(m) == want {
			out = append(out, m)
		}
	}
	if len(all) > 0 && len(out) == 0 {
		return nil, fail(CheckMeasurement, fmt.Errorf("%w: none of the %d expected measurement(s) is a %d-byte %s value (TDX: MRTD||RTMR0||RTMR1||RTMR2, since MRTD alone binds no kernel, initrd or cmdline)", attest.ErrMeasurement, len(all), want, tee))
	}
	return out, nil
}

// checkMeasurement records the measurement check: the evidence matched the pinned values
// (verifier.Verify compared them), and a trusted reference document lists it.
func checkMeasurement(ctx context.Context, o *Options, res *Result, tee attest.TEE, guest provenance.GuestImage, claims *verifier.Claims) (*refMatch, error) {
	if o.InsecureSkipMeasurement {
		res.record(CheckMeasurement, Warning, "NOT checked (InsecureSkipMeasurement)")
		return nil, nil
	}
	match, err := checkReference(ctx, o, tee, guest, claims)
	if err != nil {
		return nil, err
	}
	if len(o.ExpectedMeasurements) > 0 {
		res.Pinned = append(res.Pinned, "measurement")
	}
	if match == nil && len(o.ExpectedMeasurements) == 0 {
		// Fail closed: a measurement source was named but nothing in it was usable.
		return nil, fail(CheckMeasurement, errors.New("no trusted measurement source listed the measurement (the sources given held no reference values)"))
	}
	detail := "pinned"
	if match != nil {
		res.ReferenceMatch = match.summary
		detail = match.summary
	}
	res.record(CheckMeasurement, Passed, "%s", detail)
	return match, nil
}

// checkStatementFields: the statement says what the manifest and result record say, its
// guest-image dependency names the evidence's measurement, and its times are in order.
func checkStatementFields(p *provenance.Parsed, m *job.Manifest, r *job.Result, claims *verifier.Claims) error {
	if err := p.CheckAgainstManifest(m, r); err != nil {
		return fail(CheckConsistency, err)
	}
	if got := p.Guest.Measurement; got != hex.EncodeToString(claims.Measurement) {
		return fail(CheckConsistency, fmt.Errorf("%w: guest-image dependency names measurement %q, the evidence has %s", ErrMismatchBinding, got, hex.EncodeToString(claims.Measurement)))
	}
	if !p.StartedOn.IsZero() && !p.FinishedOn.IsZero() && p.FinishedOn.Before(p.StartedOn) {
		return fail(CheckTime, fmt.Errorf("runDetails.metadata.finishedOn %s is before startedOn %s", p.FinishedOn.Format(time.RFC3339), p.StartedOn.Format(time.RFC3339)))
	}
	return nil
}

// checkAttestedSource checks the source commit and tag: the result record's must be the
// ids of the manifest's git objects (the guest computed them so; recomputing costs
// nothing), and the statement must name exactly those, in its parameters and in its source
// dependency. The statement's are the host's words: only the result record's count.
func checkAttestedSource(p *provenance.Parsed, m *job.Manifest, r *job.Result) error {
	var att source.Attested
	if m.Source.CommitObject != nil {
		a, err := source.AttestCommit(m.Source.GitObjects(), r.SourceTree)
		if err != nil {
			return fail(CheckSourceCommit, fmt.Errorf("%w: the manifest's git objects do not name the attested tree: %w", ErrMismatchBinding, err))
		}
		att = *a
	}
	switch {
	case att.Commit != r.SourceCommit:
		return fail(CheckSourceCommit, fmt.Errorf("%w: the result record names commit %q, the manifest's commit object is %q", ErrMismatchBinding, r.SourceCommit, att.Commit))
	case att.Tag != r.SourceTag || att.TagObject != r.SourceTagObject:
		return fail(CheckSourceTag, fmt.Errorf("%w: the result record names tag %q (object %q), the manifest's tag object is %q (%q)", ErrMismatchBinding, r.SourceTag, r.SourceTagObject, att.Tag, att.TagObject))
	}
	dep := p.Dependencies[provenance.SourceDependency]
	var depCommit string
	if dep != nil {
		depCommit = dep.Digest["gitCommit"] + dep.Digest["gitCommitSha256"]
	}
	switch {
	case p.External.Source.Commit != r.SourceCommit:
		return fail(CheckSourceCommit, fmt.Errorf("%w: externalParameters.source.commit is %q, the guest attested %q", ErrMismatchBinding, p.External.Source.Commit, r.SourceCommit))
	case depCommit != r.SourceCommit:
		return fail(CheckSourceCommit, fmt.Errorf("%w: resolvedDependencies[source] names commit %q, the guest attested %q", ErrMismatchBinding, depCommit, r.SourceCommit))
	case p.External.Source.Tag != r.SourceTag:
		return fail(CheckSourceTag, fmt.Errorf("%w: externalParameters.source.tag is %q, the guest attested %q", ErrMismatchBinding, p.External.Source.Tag, r.SourceTag))
	}
	return nil
}

// checkSource compares the optional source expectations with the attested values.
func checkSource(o *Options, res *Result, r *job.Result) error {
	if o.ExpectedSourceTree != "" {
		if !strings.EqualFold(o.ExpectedSourceTree, r.SourceTree) {
			return fail(CheckSourceTree, fmt.Errorf("%w: attested source tree is %s, expected %s", ErrMismatchSource, r.SourceTree, o.ExpectedSourceTree))
		}
		res.record(CheckSourceTree, Passed, "%s", r.SourceTree)
		res.Pinned = append(res.Pinned, "source tree")
	} else {
		res.Reported = append(res.Reported, "source tree")
	}
	for _, c := range []struct {
		check, what, expected, attested, none string
		fold                                  bool // hex ids compare case-insensitively, tag names do not
	}{
		{CheckSourceCommit, "source commit", o.ExpectedSourceCommit, r.SourceCommit, "the host sent no commit object", true},
		{CheckSourceTag, "source tag", strings.TrimPrefix(o.ExpectedSourceTag, "refs/tags/"), r.SourceTag, "the host sent no annotated tag object (a lightweight tag has none: only a keyless signer's ref names it)", false},
	} {
		if c.expected == "" {
			if c.attested != "" {
				res.Reported = append(res.Reported, c.what)
			}
			continue
		}
		switch {
		case c.attested == "":
			return fail(c.check, fmt.Errorf("%w: expected %s %s, but the guest attested none: %s", ErrMismatchSource, c.what, c.expected, c.none))
		case c.expected != c.attested && !(c.fold && strings.EqualFold(c.expected, c.attested)):
			return fail(c.check, fmt.Errorf("%w: the guest attested %s %s, expected %s", ErrMismatchSource, c.what, c.attested, c.expected))
		}
		res.record(c.check, Passed, "%s", c.attested)
		res.Pinned = append(res.Pinned, c.what)
	}
	return nil
}

// checkStatementBuilder: the statement's runDetails.builder.id names the manifest's TEE,
// and the guest release's version when trusted reference values bound one; without such
// values the statement's version is the host's word and is returned as unbound.
func checkStatementBuilder(p *provenance.Parsed, tee string, match *refMatch) ([]string, error) {
	bound := boundBuilderID(tee, match)
	name, version, _ := strings.Cut(p.BuilderID, "@")
	boundName, boundVersion, versionBound := strings.Cut(bound, "@")
	switch {
	case name != boundName:
		return nil, fail(CheckBuilderID, fmt.Errorf("%w: the statement's builder is %s, but the manifest the evidence binds asked for TEE %s (%s)", ErrMismatchBuilderID, p.BuilderID, tee, boundName))
	case versionBound && version != boundVersion:
		return nil, fail(CheckBuilderID, fmt.Errorf("%w: the statement's builder is %s, but the trusted reference values that list the measurement are of release %s", ErrMismatchBuilderID, p.BuilderID, bound))
	case !versionBound:
		return []string{"runDetails.builder.id version (no trusted reference values bound the release)"}, nil
	}
	return nil, nil
}

// boundBuilderID is the builder as the verifier can vouch for it: the TEE kind, and the
// guest release's version when trusted (signed or embedded) reference values matched.
func boundBuilderID(tee string, m *refMatch) string {
	if m != nil && m.releaseSigned && m.doc.ToolVersion != "" {
		return provenance.BuilderID(tee, m.doc.ToolVersion)
	}
	id, _, _ := strings.Cut(provenance.BuilderID(tee, "0"), "@")
	return id
}

// verifiedArtifacts are the verified files, in the result record's words (the host's
// SHA256SUMS subject as its content recomputed from that record).
func verifiedArtifacts(r *job.Result, locals []localArtifact) []job.Artifact {
	byDigest := map[string]job.Artifact{}
	if sums := provenance.ChecksumsArtifact(r.Artifacts); sums != nil {
		byDigest[sums.SHA256] = *sums
	}
	for _, a := range r.Artifacts {
		byDigest[a.SHA256] = a
	}
	var verified []job.Artifact
	for _, l := range locals {
		verified = append(verified, byDigest[l.sha256])
	}
	sort.Slice(verified, func(i, j int) bool { return verified[i].Path < verified[j].Path })
	return verified
}

// hashFile hashes a regular file. It opens without blocking (a FIFO swapped in after the
// Stat must not hang) and checks the opened file again.
func hashFile(path string) (string, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
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

// sameKey reports whether two public keys are the same key.
func sameKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// countDocs counts the documents that are there (nil entries are not a source).
func countDocs(docs []*reference.Document) int {
	n := 0
	for _, d := range docs {
		if d != nil {
			n++
		}
	}
	return n
}
