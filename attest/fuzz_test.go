package attest

import (
	"bytes"
	"testing"

	sevtestdata "github.com/google/go-sev-guest/verify/testdata"
	tdxtestdata "github.com/google/go-tdx-guest/testing/testdata"
)

// Run with -fuzzminimizetime=2s or so: FuzzParseEvidence verifies what it accepts, so
// minimising a 3 KB interesting input at the default 60 s budget stalls the run for minutes.

// FuzzParseEvidence: whatever evidence.json holds, parsing neither panics nor accepts a shape
// that the rest of the package cannot handle, and accepted evidence re-encodes stably.
func FuzzParseEvidence(f *testing.F) {
	for _, ev := range []*Evidence{
		realMilanEvidence(),
		{TEE: TEETDX, Report: tdxtestdata.RawQuote},
		{TEE: TEESim, Report: make([]byte, snpReportSize), CertTable: []byte{1, 2, 3}, Certs: &CertChain{ARK: []byte{1}}},
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
		ev, err := ParseEvidence(b)
		if err != nil {
			return
		}
		// Accepted evidence goes through the layout parsers without panicking.
		_, _ = LaunchDigest(ev)
		_, _ = Verify(ev, VerifyOptions{})
		if ev.TEE == TEESNP {
			_ = CompleteSNPFromCertTable(ev)
		}
		enc, err := ev.Marshal()
		if err != nil {
			t.Fatalf("accepted evidence does not re-encode: %v", err)
		}
		again, err := ParseEvidence(enc)
		if err != nil {
			t.Fatalf("re-encoded evidence is rejected: %v", err)
		}
		enc2, _ := again.Marshal()
		if !bytes.Equal(enc, enc2) {
			t.Fatal("encoding is not stable")
		}
	})
}

// FuzzSimResponse: the guest's parser of host responses never panics, never allocates beyond
// its limits and only returns a report of the exact SNP size.
func FuzzSimResponse(f *testing.F) {
	f.Add(simResponse(0, simOKBody(sevtestdata.AttestationBytes, nil)))
	f.Add(simResponse(0, simOKBody(sevtestdata.AttestationBytes, []byte{1, 2, 3})))
	f.Add(simResponse(1, []byte("bad request")))
	f.Add([]byte(simRspMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		report, table, err := readSimResponse(bytes.NewReader(b))
		if err != nil {
			return
		}
		if len(report) != snpReportSize {
			t.Fatalf("accepted a %d-byte report", len(report))
		}
		if len(table) > MaxCertTableSize {
			t.Fatalf("accepted a %d-byte table", len(table))
		}
		if len(b) < simRspHdrSize+4+snpReportSize+4+len(table) {
			t.Fatal("returned more bytes than it read")
		}
	})
}

// FuzzCertTable: the host-side certificate table parser never panics and only returns
// certificates that lie inside the table.
func FuzzCertTable(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, certTableEntrySize))
	f.Fuzz(func(t *testing.T, b []byte) {
		tab, err := parseCertTable(b)
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
