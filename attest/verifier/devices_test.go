package verifier

import (
	"bytes"
	"context"
	"testing"

	"github.com/google/go-sev-guest/abi"
	labi "github.com/google/go-sev-guest/client/linuxabi"
	sevtest "github.com/google/go-sev-guest/testing"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/attest/client"
	"github.com/cloche-dev/cloche/internal/attest/simtest"
)

// The /dev/sev-guest provider over go-sev-guest's fake device, which signs each report
// with the test-only chain: the evidence verifies, and a report for other data is refused.
func TestSEVGuestDeviceProvider(t *testing.T) {
	var rd, other [64]byte
	copy(rd[:], fakeRD)
	other[0] = 1
	var good, wrong [abi.ReportSize]byte
	copy(good[:], fakeSNPReport(t, abi.VcekReportSigner, nil))
	copy(wrong[:], good[:]) // answers `other` with a report for fakeRD
	dev, err := sevtest.TcDevice([]sevtest.TestCase{{Name: "good", Input: rd, Output: toRespArray(good)}, {Name: "wrong", Input: other, Output: toRespArray(wrong)}},
		&sevtest.DeviceOptions{Signer: testAMDSigner(t), Now: fakeNow, Product: abi.DefaultSevProduct()})
	if err != nil {
		t.Fatal(err)
	}
	p := client.NewSEVGuestProvider(dev)
	if p.TEE() != attest.TEESNP {
		t.Fatalf("TEE %q", p.TEE())
	}
	ev, err := p.GetEvidence(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := attest.LaunchDigest(ev); err != nil || !bytes.Equal(d[:], fakeHost) {
		t.Fatalf("LaunchDigest %x, %v", d, err)
	}
	s := testAMDSigner(t)
	ev.Certs = &attest.CertChain{VCEK: s.Vcek.Raw}
	if _, err := Verify(ev, fakeSNPOpts(t)); err != nil {
		t.Fatalf("device evidence does not verify: %v", err)
	}
	_, err = p.GetEvidence(context.Background(), other)
	simtest.WantErr(t, err, attest.ErrMalformed, "REPORT_DATA", "expected the requested")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.GetEvidence(ctx, rd); err == nil {
		t.Error("cancelled context: no error")
	}
}

func toRespArray(r [abi.ReportSize]byte) (out [labi.SnpReportRespReportSize]byte) {
	copy(out[:], r[:])
	return out
}
