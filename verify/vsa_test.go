package verify

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vsa "github.com/in-toto/attestation/go/predicates/vsa/v1"
	intoto "github.com/in-toto/attestation/go/v1"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/verify/verifytest"
)

var vsaOpts = VSAOptions{VerifierID: "https://cloche.dev/verifier@v0.1.0", ResourceURI: "git+https://github.com/example/hello@refs/tags/v1",
	Time: time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)}

// parseVSA reads a VSA statement strictly with the in-toto bindings.
func parseVSA(t *testing.T, b []byte) (*intoto.Statement, *vsa.VerificationSummary) {
	t.Helper()
	st := &intoto.Statement{}
	if err := protojson.Unmarshal(b, st); err != nil {
		t.Fatalf("statement: %v", err)
	}
	if err := st.Validate(); err != nil {
		t.Fatalf("statement: %v", err)
	}
	pj, err := protojson.Marshal(st.GetPredicate())
	if err != nil {
		t.Fatal(err)
	}
	pred := &vsa.VerificationSummary{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(pj, pred); err != nil {
		t.Fatalf("predicate is not a VSA v1: %v", err)
	}
	return st, pred
}

func TestVSAOfAPassedVerification(t *testing.T) {
	k := testKit(t)
	f, err := k.Build(t.TempDir(), verifytest.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	o := kitOptions(k, f)
	res, err := Verify(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewVSA(o, res, vsaOpts)
	if err != nil {
		t.Fatal(err)
	}
	st, pred := parseVSA(t, b)
	if st.GetPredicateType() != VSAPredicateType || len(st.GetSubject()) != 1 || st.GetSubject()[0].GetName() != "hello" ||
		st.GetSubject()[0].GetDigest()["sha256"] != res.Artifacts[0].SHA256 {
		t.Errorf("statement: type %s, subjects %v", st.GetPredicateType(), st.GetSubject())
	}
	bundle, _ := os.ReadFile(f.BundlePath)
	policy, _ := json.Marshal(res.Policy)
	switch {
	case pred.GetVerificationResult() != "PASSED", pred.GetSlsaVersion() != "1.0":
		t.Errorf("result %q, slsa %q", pred.GetVerificationResult(), pred.GetSlsaVersion())
	case pred.GetVerifier().GetId() != vsaOpts.VerifierID, pred.GetResourceUri() != vsaOpts.ResourceURI,
		!pred.GetTimeVerified().AsTime().Equal(vsaOpts.Time):
		t.Errorf("verifier %q, resource %q, time %v", pred.GetVerifier().GetId(), pred.GetResourceUri(), pred.GetTimeVerified().AsTime())
	case len(pred.GetVerifiedLevels()) != 1 || pred.GetVerifiedLevels()[0] != SLSABuildLevel1:
		t.Errorf("a simulated build vouched for %v, want only %s", pred.GetVerifiedLevels(), SLSABuildLevel1)
	case len(pred.GetInputAttestations()) != 1 || pred.GetInputAttestations()[0].GetDigest()["sha256"] != sha256Hex(bundle) ||
		pred.GetInputAttestations()[0].GetUri() != filepath.Base(f.BundlePath):
		t.Errorf("input attestations %v", pred.GetInputAttestations())
	case pred.GetPolicy().GetUri() != VSAPolicyURI || pred.GetPolicy().GetDigest()["sha256"] != sha256Hex(policy):
		t.Errorf("policy %v, want the digest of %s", pred.GetPolicy(), policy)
	case res.Policy.PublicKeySHA256 == "" || !res.Policy.AllowSimulated || len(res.Policy.SimRoots) != 1 ||
		!strings.Contains(res.Policy.MeasurementSource, "reference values") || len(res.Policy.Checks) < 10:
		t.Errorf("policy does not say what was trusted: %s", policy)
	}

	// A stricter policy is a different policy digest.
	o.Pins.Command = res.Command
	res2, err := Verify(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	b2, err := NewVSA(o, res2, vsaOpts)
	if err != nil {
		t.Fatal(err)
	}
	if _, pred2 := parseVSA(t, b2); pred2.GetPolicy().GetDigest()["sha256"] == pred.GetPolicy().GetDigest()["sha256"] {
		t.Error("pinning the command left the policy digest unchanged")
	}
}

func TestVSARefused(t *testing.T) {
	k := testKit(t)
	f, err := k.Build(t.TempDir(), verifytest.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	o := kitOptions(k, f)
	o.ExpectedSourceTree = strings.Repeat("0", 40)
	res, err := Verify(context.Background(), o)
	if err == nil {
		t.Fatal("verification with a wrong tree passed")
	}
	if _, err := NewVSA(o, res, vsaOpts); err == nil || !strings.Contains(err.Error(), "passed") {
		t.Errorf("a failed verification got a summary: %v", err)
	}
	o.ExpectedSourceTree = verifytest.SourceTree
	res, err = Verify(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []VSAOptions{{ResourceURI: vsaOpts.ResourceURI}, {VerifierID: vsaOpts.VerifierID}, {VerifierID: "cloche", ResourceURI: vsaOpts.ResourceURI}} {
		if _, err := NewVSA(o, res, v); err == nil || !strings.Contains(err.Error(), "VSAOptions.") {
			t.Errorf("%+v: %v, want an error naming the field", v, err)
		}
	}
}

// Only a hardware TEE with a checked measurement and checked revocation data is Build L3.
func TestVSABuildLevel(t *testing.T) {
	crl := CheckOutcome{Name: CheckRevocation, Outcome: Passed}
	collateral := CheckOutcome{Name: CheckCollateral, Outcome: Passed}
	rtmr0 := CheckOutcome{Name: CheckRTMR0, Outcome: Passed}
	for _, c := range []struct {
		res  Result
		want string
	}{
		{Result{TEE: attest.TEESNP, MeasurementChecked: true, Checks: []CheckOutcome{crl}}, SLSABuildLevel3},
		{Result{TEE: attest.TEESNP, MeasurementChecked: true}, SLSABuildLevel1},
		{Result{TEE: attest.TEESNP, MeasurementChecked: true, Checks: []CheckOutcome{{Name: CheckRevocation, Outcome: Warning}}}, SLSABuildLevel1},
		{Result{TEE: attest.TEETDX, MeasurementChecked: true, Checks: []CheckOutcome{rtmr0, collateral}}, SLSABuildLevel3},
		{Result{TEE: attest.TEETDX, MeasurementChecked: true, Checks: []CheckOutcome{rtmr0}}, SLSABuildLevel1},
		{Result{TEE: attest.TEETDX, MeasurementChecked: true, Checks: []CheckOutcome{rtmr0, {Name: CheckCollateral, Outcome: Warning}}}, SLSABuildLevel1},
		{Result{TEE: attest.TEETDX, MeasurementChecked: true, Checks: []CheckOutcome{{Name: CheckRTMR0, Outcome: Warning}, collateral}}, SLSABuildLevel1},
		{Result{TEE: attest.TEETDX, MeasurementChecked: true}, SLSABuildLevel1},
		{Result{TEE: attest.TEESNP}, SLSABuildLevel1},
		{Result{TEE: attest.TEESim, Simulated: true, MeasurementChecked: true}, SLSABuildLevel1},
		{Result{TEE: "", MeasurementChecked: true}, SLSABuildLevel1},
	} {
		if got := buildLevel(&c.res); got != c.want {
			t.Errorf("%+v: %s, want %s", c.res, got, c.want)
		}
	}
}
