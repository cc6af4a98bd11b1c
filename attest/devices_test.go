package attest

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-sev-guest/abi"
	labi "github.com/google/go-sev-guest/client/linuxabi"
	sevtest "github.com/google/go-sev-guest/testing"
	tdxtest "github.com/google/go-tdx-guest/testing"
	tdxtestdata "github.com/google/go-tdx-guest/testing/testdata"
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
	p := NewSEVGuestProvider(dev)
	if p.TEE() != TEESNP {
		t.Fatalf("TEE %q", p.TEE())
	}
	ev, err := p.GetEvidence(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := LaunchDigest(ev); err != nil || !bytes.Equal(d[:], fakeHost) {
		t.Fatalf("LaunchDigest %x, %v", d, err)
	}
	s := testAMDSigner(t)
	ev.Certs = &CertChain{VCEK: s.Vcek.Raw}
	if _, err := Verify(ev, fakeSNPOpts(t)); err != nil {
		t.Fatalf("device evidence does not verify: %v", err)
	}
	_, err = p.GetEvidence(context.Background(), other)
	wantErr(t, err, ErrMalformed, "REPORT_DATA", "expected the requested")

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

// The /dev/tdx_guest provider over go-tdx-guest's fake device, which returns the real
// production quote.
func TestTDXGuestDeviceProvider(t *testing.T) {
	q := realTDXQuote(t)
	var rd, other [64]byte
	copy(rd[:], q.ReportData)
	other[0] = 1
	var report, report2 [1024]byte
	copy(report[:], tdxtestdata.RawReport)
	copy(report2[:], tdxtestdata.RawReport)
	report2[0] ^= 1
	dev, err := tdxtest.TcDevice([]tdxtest.TestCase{
		{Name: "good", Input: rd, Report: report, Quote: tdxtestdata.RawQuote},
		{Name: "wrong", Input: other, Report: report2, Quote: tdxtestdata.RawQuote},
	})
	if err != nil {
		t.Fatal(err)
	}
	p := NewTDXGuestProvider(dev)
	ev, err := p.GetEvidence(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if ev.TEE != TEETDX || !bytes.Equal(ev.Report, tdxtestdata.RawQuote) {
		t.Fatalf("evidence TEE %q, %d bytes", ev.TEE, len(ev.Report))
	}
	if _, err := Verify(ev, tdxOpts()); err != nil {
		t.Fatalf("device evidence does not verify: %v", err)
	}
	_, err = p.GetEvidence(context.Background(), other)
	wantErr(t, err, ErrMalformed, "REPORT_DATA")
}

// Without the devices, OpenGuestDeviceProvider says what it looked for; a regular file in
// their place is not a device the ioctls accept.
func TestOpenGuestDeviceProviderMissing(t *testing.T) {
	dir := t.TempDir()
	_, _, err := OpenGuestDeviceProvider(dir)
	wantErr(t, err, ErrNoGuestDevice, filepath.Join(dir, SEVGuestDevice), filepath.Join(dir, TDXGuestDevice))

	if err := os.WriteFile(filepath.Join(dir, SEVGuestDevice), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	p, c, err := OpenGuestDeviceProvider(dir)
	if err != nil {
		t.Fatalf("opening a stand-in file: %v", err)
	}
	defer c.Close()
	if p.TEE() != TEESNP {
		t.Fatalf("TEE %q", p.TEE())
	}
	if _, err := p.GetEvidence(context.Background(), [64]byte{}); err == nil {
		t.Fatal("a report from a regular file")
	}
}
