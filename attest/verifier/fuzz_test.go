package verifier

import (
	"bytes"
	"testing"

	sevtestdata "github.com/google/go-sev-guest/verify/testdata"
	tdxtestdata "github.com/google/go-tdx-guest/testing/testdata"

	"github.com/cloche-dev/cloche/attest"
)

// Run with -fuzzminimizetime=2s or so: FuzzParseEvidence verifies what it accepts, so
// minimising a 3 KB interesting input at the default 60 s budget stalls the run for minutes.

// FuzzParseEvidence: whatever evidence.json holds, parsing neither panics nor accepts a shape
// that the rest of the package cannot handle, and accepted evidence re-encodes stably.
func FuzzParseEvidence(f *testing.F) {
	for _, ev := range []*attest.Evidence{
		realMilanEvidence(),
		{TEE: attest.TEETDX, Report: tdxtestdata.RawQuote},
		{TEE: attest.TEESim, Report: make([]byte, attest.SNPReportSize), CertTable: []byte{1, 2, 3}, Certs: &attest.CertChain{ARK: []byte{1}}},
	} {
		b, err := ev.Marshal()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"tee":"sim","report":"","extra":1}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := attest.ParseEvidence(b)
		if err != nil {
			return
		}
		// Accepted evidence goes through the layout parsers without panicking.
		_, _ = attest.LaunchDigest(ev)
		_, _ = Verify(ev, Options{})
		if ev.TEE == attest.TEESNP {
			_ = attest.CompleteSNPFromCertTable(ev)
		}
		enc, err := ev.Marshal()
		if err != nil {
			t.Fatalf("accepted evidence does not re-encode: %v", err)
		}
		again, err := attest.ParseEvidence(enc)
		if err != nil {
			t.Fatalf("re-encoded evidence is rejected: %v", err)
		}
		enc2, _ := again.Marshal()
		if !bytes.Equal(enc, enc2) {
			t.Fatal("encoding is not stable")
		}
	})
}

// FuzzCertTable: the host-side certificate table parser never panics and only returns
// certificates that lie inside the table.
func FuzzCertTable(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, certTableEntrySize))
	f.Fuzz(func(t *testing.T, b []byte) {
		tab, err := attest.ParseCertTable(b)
		if err != nil {
			return
		}
		total := 0
		for _, c := range tab {
			total += len(c)
		}
		if total > len(b) {
			t.Fatalf("certificates total %d bytes, more than the %d-byte table", total, len(b))
		}
	})
}

// FuzzTDXQuote: cloche's TDX layout parser never panics, never reads past the blob, and
// whatever it accepts goes through go-tdx-guest's parser and the whole verifier without a
// panic.
func FuzzTDXQuote(f *testing.F) {
	f.Add(tdxtestdata.RawQuote)
	f.Add(tdxtestdata.RawQuoteV5)
	f.Add(tdxtestdata.RawQuote[:tdxMinQuoteSize])
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := attest.ParseTDXQuote(b)
		if err != nil {
			return
		}
		if q.Len > len(b) || q.Len+q.Trailing != len(b) {
			t.Fatalf("quote length %d + trailing %d for %d bytes", q.Len, q.Trailing, len(b))
		}
		if len(q.MrTd) != 48 || len(q.ReportData) != 64 || len(q.MrConfigID) != 48 {
			t.Fatal("field sizes wrong")
		}
		ev := &attest.Evidence{TEE: attest.TEETDX, Report: b}
		_, _ = attest.LaunchDigest(ev)
		_, _ = Describe(ev)
		_, _ = Verify(ev, Options{Now: tdxNow})
	})
}

// FuzzEvidenceFile: `cloche evidence` input of any kind never panics the reader, the
// describer or the verifier.
func FuzzEvidenceFile(f *testing.F) {
	f.Add(sevtestdata.AttestationBytes)
	f.Add(tdxtestdata.RawQuote)
	js, _ := realMilanEvidence().Marshal()
	f.Add(js)
	f.Add(append(bytes.Clone(sevtestdata.AttestationBytes), make([]byte, certTableEntrySize)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := attest.ParseEvidenceFile(b, "")
		if err != nil {
			return
		}
		if err := ev.CheckShape(); err != nil {
			t.Fatalf("accepted evidence fails its shape check: %v", err)
		}
		_, _ = Describe(ev)
		_, _ = Verify(ev, Options{Now: realMilanNow, Policy: Policy{AllowDebug: true}})
	})
}

// FuzzTDXCollateral: the collateral file parser never panics, and what it accepts the
// offline getter serves without a panic.
func FuzzTDXCollateral(f *testing.F) {
	f.Add([]byte(`{"tcbInfo":{"issuerChain":"-----BEGIN CERTIFICATE-----","body":"e30="},"qeIdentity":{"issuerChain":"-----BEGIN CERTIFICATE-----","body":"e30="}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseTDXCollateral(b)
		if err != nil {
			return
		}
		g := offlineTDXGetter{c}
		_, _, _ = g.Get("https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=00")
		_, _ = Verify(&attest.Evidence{TEE: attest.TEETDX, Report: bytes.Clone(tdxtestdata.RawQuote)}, Options{Now: tdxNow, Policy: Policy{TDXCollateral: c}})
	})
}

// FuzzSNPTCB: the --min-tcb parser never panics and what it accepts prints back the same.
func FuzzSNPTCB(f *testing.F) {
	f.Add("bootloader=1,tee=2,snp=3,microcode=4")
	f.Add("tee=0x10")
	f.Fuzz(func(t *testing.T, s string) {
		tcb, err := ParseSNPTCB(s)
		if err != nil {
			return
		}
		again, err := ParseSNPTCB(tcb.String())
		if err != nil || again != tcb {
			t.Fatalf("%q -> %v -> %v, %v", s, tcb, again, err)
		}
	})
}
