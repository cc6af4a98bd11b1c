package verifier

import (
	"bytes"
	"crypto/x509"
	"testing"

	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	sevvalidate "github.com/google/go-sev-guest/validate"
	sevverify "github.com/google/go-sev-guest/verify"
	sevtestdata "github.com/google/go-sev-guest/verify/testdata"
	tdxabi "github.com/google/go-tdx-guest/abi"
	tdxtestdata "github.com/google/go-tdx-guest/testing/testdata"
	tdxvalidate "github.com/google/go-tdx-guest/validate"
	tdxverify "github.com/google/go-tdx-guest/verify"
)

// Offline verification of one piece of real vendor evidence, cloche's Verify against the
// libraries' own verify+validate calls on the same input in the same run. cloche parses
// the raw bytes itself first and adds its checks; the difference is its overhead.
//
//	go test ./attest/ -run '^$' -bench 'BenchmarkVerify(SNP|TDX)' -benchmem

func BenchmarkVerifySNP(b *testing.B) {
	b.Run("cloche", func(b *testing.B) {
		// The sample's TCB is below today's embedded minimum; the checks still all run.
		opts := Options{Now: realMilanNow, Policy: Policy{AllowDebug: true, NoDefaultMinimumTCB: true}}
		for i := 0; i < b.N; i++ {
			if _, err := Verify(realMilanEvidence(), opts); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("go-sev-guest", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			report, err := abi.ReportToProto(bytes.Clone(sevtestdata.AttestationBytes))
			if err != nil {
				b.Fatal(err)
			}
			att := &spb.Attestation{Report: report, CertificateChain: &spb.CertificateChain{VcekCert: sevtestdata.VcekBytes}}
			if err := sevverify.SnpAttestation(att, &sevverify.Options{DisableCertFetching: true, Now: realMilanNow}); err != nil {
				b.Fatal(err)
			}
			zero := 0
			if err := sevvalidate.SnpAttestation(att, &sevvalidate.Options{GuestPolicy: abi.SnpPolicy{SMT: true, Debug: true}, VMPL: &zero}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkVerifyTDX(b *testing.B) {
	b.Run("cloche", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := Verify(realTDXEvidence(), tdxOpts()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("go-tdx-guest", func(b *testing.B) {
		root, err := intelSGXRoot()
		if err != nil {
			b.Fatal(err)
		}
		for i := 0; i < b.N; i++ {
			quote, err := tdxabi.QuoteToProto(bytes.Clone(tdxtestdata.RawQuote))
			if err != nil {
				b.Fatal(err)
			}
			// TrustedRoots set as cloche does, so the library logs nothing on stdout.
			roots := x509.NewCertPool()
			roots.AddCert(root)
			now := tdxNow
			if err := tdxverify.TdxQuote(quote, &tdxverify.Options{Now: &tdxverify.TimeSet{PckCertChain: now, TcbInfo: now, QeIdentity: now, PckCrl: now, RootCaCrl: now}, TrustedRoots: roots}); err != nil {
				b.Fatal(err)
			}
			if err := tdxvalidate.TdxQuote(quote, &tdxvalidate.Options{TdQuoteBodyOptions: tdxvalidate.TdQuoteBodyOptions{EnableTdDebugCheck: true}}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
