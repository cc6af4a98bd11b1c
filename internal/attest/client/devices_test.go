package client

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	tdxclient "github.com/google/go-tdx-guest/client"
	tdxtest "github.com/google/go-tdx-guest/testing"
	tdxtestdata "github.com/google/go-tdx-guest/testing/testdata"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/attest/simtest"
)

// The TDREPORT through go-tdx-guest's fake device: its REPORTDATA must answer the request,
// and its MRCONFIGID is the launch digest. (go-tdx-guest's report.dat sample is not a
// TDREPORT_STRUCT, so the report is laid out here from the TDX module ABI.)
func TestReadTDReport(t *testing.T) {
	var rd, other [64]byte
	copy(rd[:], "request")
	other[0] = 1
	want := [32]byte{0xc1, 0x0c}
	report := tdReportFor(rd, want)
	wrong := report
	wrong[tdReportOffData] ^= 1 // a TDREPORT for other REPORTDATA than requested
	dev, err := tdxtest.TcDevice([]tdxtest.TestCase{
		{Name: "good", Input: rd, Report: report, Quote: tdxtestdata.RawQuote},
		{Name: "wrong", Input: other, Report: wrong, Quote: tdxtestdata.RawQuote},
	})
	if err != nil {
		t.Fatal(err)
	}
	r, err := ReadTDReport(dev, rd)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r, report[:]) {
		t.Fatal("TDREPORT differs from the device's")
	}
	if d, err := attest.TDReportLaunchDigest(r); err != nil || d != want {
		t.Fatalf("launch digest %x, %v; want MRCONFIGID[0:32] %x", d, err, want)
	}
	_, err = ReadTDReport(dev, other)
	simtest.WantErr(t, err, attest.ErrMalformed, "REPORTDATA")
}

// tdReportFor lays out a TDX 1.5 TDREPORT_STRUCT with reportData and MRCONFIGID digest‖0.
func tdReportFor(reportData [64]byte, digest [32]byte) [1024]byte {
	var r [1024]byte
	r[0], r[2] = tdReportTypeTDX, 1
	copy(r[tdReportOffData:], reportData[:])
	copy(r[tdReportOffMrConfig:], digest[:])
	return r
}

// The TDREPORT parser refuses what is not a TDX TDREPORT or breaks the MRCONFIGID rule.
func TestTDReportLaunchDigest(t *testing.T) {
	good := make([]byte, tdReportSize)
	good[0] = tdReportTypeTDX
	want := [32]byte{1, 2, 3}
	copy(good[tdReportOffMrConfig:], want[:])
	if d, err := attest.TDReportLaunchDigest(good); err != nil || d != want {
		t.Fatalf("%x, %v", d, err)
	}
	for name, mutate := range map[string]func([]byte) []byte{
		"short":         func(b []byte) []byte { return b[:1023] },
		"SGX report":    func(b []byte) []byte { b[0] = 0x00; return b },
		"version 2":     func(b []byte) []byte { b[2] = 2; return b },
		"padding not 0": func(b []byte) []byte { b[tdReportOffMrConfig+40] = 1; return b },
	} {
		b := mutate(bytes.Clone(good))
		if _, err := attest.TDReportLaunchDigest(b); !errors.Is(err, attest.ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}

// GuestLaunchDigest takes a TDX provider's digest from the TDREPORT, not from the quote
// the host relayed: a quote naming another MRCONFIGID does not change it.
func TestGuestLaunchDigestPrefersTheTDReport(t *testing.T) {
	var probe [64]byte
	copy(probe[:], "cloche launch digest probe")
	want := [32]byte{0xaa, 0xbb}
	report := tdReportFor(probe, want)
	dev, err := tdxtest.TcDevice([]tdxtest.TestCase{{Name: "probe", Input: probe, Report: report, Quote: tdxtestdata.RawQuote}})
	if err != nil {
		t.Fatal(err)
	}
	p := &tdxReportDigester{Provider: lyingQuoteProvider{}, open: func() (tdxclient.Device, error) { return dev, nil }}
	got, err := attest.GuestLaunchDigest(context.Background(), p, probe)
	if err != nil || got != want {
		t.Fatalf("GuestLaunchDigest = %x, %v; want the TDREPORT's %x", got, err, want)
	}
	// Without the TDREPORT reader, the quote's value would have been taken.
	q, _ := attest.GuestLaunchDigest(context.Background(), lyingQuoteProvider{}, [64]byte{})
	if q == want {
		t.Fatal("the lying quote names the same digest; the test proves nothing")
	}
}

// lyingQuoteProvider is a host's QGS handing the guest Intel's sample quote whatever it
// asked for.
type lyingQuoteProvider struct{}

func (lyingQuoteProvider) TEE() attest.TEE { return attest.TEETDX }
func (lyingQuoteProvider) GetEvidence(context.Context, [64]byte) (*attest.Evidence, error) {
	return &attest.Evidence{TEE: attest.TEETDX, Report: bytes.Clone(tdxtestdata.RawQuote)}, nil
}

// Without the devices, OpenGuestDeviceProvider says what it looked for; a regular file in
// their place is not a device the ioctls accept.
func TestOpenGuestDeviceProviderMissing(t *testing.T) {
	dir := t.TempDir()
	_, _, err := OpenGuestDeviceProvider(dir)
	simtest.WantErr(t, err, ErrNoGuestDevice, filepath.Join(dir, SEVGuestDevice), filepath.Join(dir, TDXGuestDevice))

	// A TDX guest without configfs-tsm is told why there is no fallback.
	tdxDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(tdxDir, TDXGuestDevice), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = OpenGuestDeviceProvider(tdxDir)
	simtest.WantErr(t, err, ErrNoGuestDevice, "TDX quotes need configfs-tsm", "TDX_CMD_GET_QUOTE ioctl is not in upstream Linux")

	if err := os.WriteFile(filepath.Join(dir, SEVGuestDevice), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	p, c, err := OpenGuestDeviceProvider(dir)
	if err != nil {
		t.Fatalf("opening a stand-in file: %v", err)
	}
	defer c.Close()
	if p.TEE() != attest.TEESNP {
		t.Fatalf("TEE %q", p.TEE())
	}
	if _, err := p.GetEvidence(context.Background(), [64]byte{}); err == nil {
		t.Fatal("a report from a regular file")
	}
}
