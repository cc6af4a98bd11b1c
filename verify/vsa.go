package verify

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	vsa "github.com/in-toto/attestation/go/predicates/vsa/v1"
	intoto "github.com/in-toto/attestation/go/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/fileio"
)

// VSAPredicateType is SLSA's Verification Summary Attestation, version 1.
const VSAPredicateType = "https://slsa.dev/verification_summary/v1"

// VSAPolicyURI names the kind of policy a cloche VSA digests (VSAPolicy).
const VSAPolicyURI = "https://cloche.dev/verify-policy/v1"

// SLSA build levels a VSA can vouch for. A hardware TEE with a checked launch measurement
// is Build L3: the build ran isolated from the host, and the provenance is unforgeable by
// it (the hardware report binds it). The simulated TEE, or an unchecked measurement,
// leaves only the host's word: provenance exists, Build L1.
const (
	SLSABuildLevel1 = "SLSA_BUILD_LEVEL_1"
	SLSABuildLevel3 = "SLSA_BUILD_LEVEL_3"
)

// VerifierID is the VSA verifier id of this cloche version.
func VerifierID(version string) string {
	return "https://cloche.dev/verifier@v" + strings.TrimPrefix(version, "v")
}

// VSAOptions say who verified and what was verified.
type VSAOptions struct {
	// VerifierID is the verifier's URI (e.g. https://cloche.dev/verifier@v0.2.0).
	VerifierID string
	// ResourceURI names the resource the artifacts are (e.g. a release or a package URI).
	ResourceURI string
	// Time is when the verification happened (default: now).
	Time time.Time
}

// VSAPolicy is the verification policy a VSA's policy.digest is the SHA-256 of (its
// canonical JSON): what the verifier trusted and required, so a consumer can pin the
// policy, not only the verifier. Result.Policy carries it.
type VSAPolicy struct {
	// Trust is what verified the signature: the SHA-256 of the public key (DER SPKI), or
	// the keyless identity required of the certificate.
	PublicKeySHA256 string    `json:"publicKeySha256,omitempty"`
	Identity        *Identity `json:"identity,omitempty"`
	// AllowSimulated and SimRoots (SHA-256 of each root's DER) trust the simulated TEE.
	AllowSimulated bool     `json:"allowSimulated"`
	SimRoots       []string `json:"simRoots,omitempty"`
	// MeasurementSource is what the launch measurement had to match (the reference value
	// that matched, or "pinned"); empty with InsecureSkipMeasurement.
	MeasurementSource       string `json:"measurementSource,omitempty"`
	InsecureSkipMeasurement bool   `json:"insecureSkipMeasurement"`
	UnsafeAllowAnyRTMR0     bool   `json:"unsafeAllowAnyRtmr0,omitempty"`
	ExpectedBuilderID       string `json:"expectedBuilderId,omitempty"`
	ExpectedSourceTree      string `json:"expectedSourceTree,omitempty"`
	ExpectedSourceCommit    string `json:"expectedSourceCommit,omitempty"`
	ExpectedSourceTag       string `json:"expectedSourceTag,omitempty"`
	Pins                    Pins   `json:"pins"`
	UnsafeAllowAnySource    bool   `json:"unsafeAllowAnySource"`
	UnsafeAllowAnyToolchain bool   `json:"unsafeAllowAnyToolchain"`
	// Checks are the checks that passed, in order (CheckNames).
	Checks []string `json:"checks"`
}

// NewVSA returns the in-toto statement (JSON, one line) of a Verification Summary
// Attestation for a passed verification: its subjects are the verified artifacts, its
// input attestation the provenance bundle, its policy the digest of VSAPolicy. A failed
// verification gets none: consumers act on PASSED only, and a FAILED summary would be one
// more document to get wrong.
func NewVSA(o Options, res *Result, v VSAOptions) ([]byte, error) {
	if res == nil || !res.Passed {
		return nil, errors.New("a verification summary is only made for a passed verification")
	}
	if err := checkVSAOptions(v); err != nil {
		return nil, err
	}
	policy, err := vsaPolicy(o, res)
	if err != nil {
		return nil, err
	}
	policyJSON, err := json.Marshal(policy)
	if err != nil {
		return nil, err
	}
	bundleDigest, _, err := fileio.SHA256(o.BundlePath)
	if err != nil {
		return nil, fmt.Errorf("verification summary: %w", err)
	}
	if v.Time.IsZero() {
		v.Time = time.Now()
	}
	pred := &vsa.VerificationSummary{
		Verifier:     &vsa.VerificationSummary_Verifier{Id: v.VerifierID},
		TimeVerified: timestamppb.New(v.Time.UTC().Truncate(time.Second)),
		ResourceUri:  v.ResourceURI,
		Policy: &vsa.VerificationSummary_Policy{Uri: VSAPolicyURI,
			Digest: map[string]string{"sha256": sha256Hex(policyJSON)}},
		InputAttestations: []*vsa.VerificationSummary_InputAttestation{{
			Uri: filepath.Base(o.BundlePath), Digest: map[string]string{"sha256": bundleDigest}}},
		VerificationResult: "PASSED",
		VerifiedLevels:     []string{buildLevel(res)},
		SlsaVersion:        "1.0",
	}
	return vsaStatement(res, pred)
}

func checkVSAOptions(v VSAOptions) error {
	for _, f := range []struct{ name, value string }{{"VerifierID", v.VerifierID}, {"ResourceURI", v.ResourceURI}} {
		u, err := url.Parse(f.value)
		if f.value == "" || err != nil || u.Scheme == "" {
			return fmt.Errorf("VSAOptions.%s %q: expected an absolute URI", f.name, f.value)
		}
	}
	return nil
}

// buildLevel is the SLSA build level a passed verification vouches for.
func buildLevel(res *Result) string {
	if res.Simulated || !res.MeasurementChecked || (res.TEE != attest.TEESNP && res.TEE != attest.TEETDX) {
		return SLSABuildLevel1
	}
	if res.TEE == attest.TEETDX && !passed(res, CheckRTMR0) {
		// The host's ACPI tables run in the guest kernel unchecked.
		return SLSABuildLevel1
	}
	// Without revocation data a revoked (leaked) chip or firmware key signs as well as a
	// good one.
	if res.TEE == attest.TEESNP && !passed(res, CheckRevocation) || res.TEE == attest.TEETDX && !passed(res, CheckCollateral) {
		return SLSABuildLevel1
	}
	return SLSABuildLevel3
}

// passed says whether the named check ran and passed.
func passed(res *Result, check string) bool {
	for _, c := range res.Checks {
		if c.Name == check {
			return c.Outcome == Passed
		}
	}
	return false
}

// vsaPolicy describes the policy o applied, as res records it.
func vsaPolicy(o Options, res *Result) (*VSAPolicy, error) {
	p := &VSAPolicy{Identity: o.Identity, AllowSimulated: o.AllowSimulated, InsecureSkipMeasurement: o.InsecureSkipMeasurement,
		UnsafeAllowAnyRTMR0: o.UnsafeAllowAnyRTMR0,
		ExpectedBuilderID:   o.ExpectedBuilderID, ExpectedSourceTree: o.ExpectedSourceTree,
		ExpectedSourceCommit: o.ExpectedSourceCommit, ExpectedSourceTag: o.ExpectedSourceTag, Pins: o.Pins,
		UnsafeAllowAnySource: o.UnsafeAllowAnySource, UnsafeAllowAnyToolchain: o.UnsafeAllowAnyToolchain}
	if o.PublicKey != nil {
		der, err := x509.MarshalPKIXPublicKey(o.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("verification summary: public key: %w", err)
		}
		p.PublicKeySHA256 = sha256Hex(der)
	}
	for _, c := range o.SimRoots {
		p.SimRoots = append(p.SimRoots, sha256Hex(c.Raw))
	}
	if res.MeasurementChecked {
		p.MeasurementSource = res.ReferenceMatch
		if p.MeasurementSource == "" {
			p.MeasurementSource = "pinned"
		}
	}
	for _, c := range res.Checks {
		if c.Outcome == Passed {
			p.Checks = append(p.Checks, c.Name)
		}
	}
	res.Policy = p
	return p, nil
}

// vsaStatement wraps pred in an in-toto statement about res's artifacts.
func vsaStatement(res *Result, pred *vsa.VerificationSummary) ([]byte, error) {
	predJSON, err := protojson.Marshal(pred)
	if err != nil {
		return nil, fmt.Errorf("encoding the verification summary: %w", err)
	}
	predStruct := &structpb.Struct{}
	if err := protojson.Unmarshal(predJSON, predStruct); err != nil {
		return nil, fmt.Errorf("converting the verification summary: %w", err)
	}
	st := &intoto.Statement{Type: intoto.StatementTypeUri, PredicateType: VSAPredicateType, Predicate: predStruct}
	for _, a := range res.Artifacts {
		st.Subject = append(st.Subject, &intoto.ResourceDescriptor{Name: a.Path, Digest: map[string]string{"sha256": a.SHA256}})
	}
	if err := st.Validate(); err != nil {
		return nil, fmt.Errorf("building the verification summary statement: %w", err)
	}
	out, err := protojson.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("encoding the verification summary statement: %w", err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, out); err != nil {
		return nil, err
	}
	return compact.Bytes(), nil
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
