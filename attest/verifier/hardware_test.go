package verifier

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	sevtest "github.com/google/go-sev-guest/testing"
	"github.com/google/go-sev-guest/verify/trust"
	tdxabi "github.com/google/go-tdx-guest/abi"
	tdxtest "github.com/google/go-tdx-guest/testing"
	tdxtestdata "github.com/google/go-tdx-guest/testing/testdata"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/attest/simtest"
)

// Fake SEV-SNP evidence from go-sev-guest's test-only AMD chain, with a VCEK and a VLEK
// that carry a real-looking TCB and chip id, so that every validate check has something to
// compare.

var (
	fakeNow  = time.Date(2025, time.March, 1, 12, 0, 0, 0, time.UTC)
	fakeTCB  = kds.TCBParts{BlSpl: 4, TeeSpl: 1, SnpSpl: 22, UcodeSpl: 213}
	fakeHWID = bytes.Repeat([]byte{0x5a}, abi.ChipIDSize)
	fakeMeas = bytes.Repeat([]byte{0x3c}, 48)
	fakeHost = bytes.Repeat([]byte{0x4d}, 32)
	fakeRD   = bytes.Repeat([]byte{0x6e}, 64)

	fakeSignerOnce sync.Once
	fakeSigner     *sevtest.AmdSigner
	fakeSignerErr  error
)

func testAMDSigner(t testing.TB) *sevtest.AmdSigner {
	t.Helper()
	fakeSignerOnce.Do(func() {
		created := fakeNow.Add(-24 * time.Hour)
		b := &sevtest.AmdSignerBuilder{
			Keys:             sevtest.DefaultAmdKeys(),
			ProductName:      "Milan-B1",
			CSPID:            "cloche-test",
			ArkCreationTime:  created,
			AskCreationTime:  created,
			AsvkCreationTime: created,
			VcekCreationTime: created,
			VlekCreationTime: created,
			VcekCustom:       sevtest.CertOverride{Extensions: sevtest.CustomExtensions(fakeTCB, fakeHWID, "", "Milan-B1")},
			VlekCustom:       sevtest.CertOverride{Extensions: sevtest.CustomExtensions(fakeTCB, nil, "cloche-test", "Milan-B1")},
		}
		fakeSigner, fakeSignerErr = b.TestOnlyCertChain()
	})
	if fakeSignerErr != nil {
		t.Fatal(fakeSignerErr)
	}
	return fakeSigner
}

// fakeSNPReport builds a signed, valid report; edit runs before signing.
func fakeSNPReport(t testing.TB, key abi.ReportSigner, edit func(r []byte)) []byte {
	t.Helper()
	arr := sevtest.CreateRawReport(&sevtest.TestReportOptions{ReportData: fakeRD, Version: 3, FMS: 0x00a00f10, SignerInfo: abi.SignerInfo{SigningKey: key}})
	r := bytes.Clone(arr[:abi.ReportSize])
	binary.LittleEndian.PutUint64(r[0x08:], abi.SnpPolicyToBytes(abi.SnpPolicy{SMT: true}))
	tcb, err := kds.ComposeTCBParts(fakeTCB)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int{0x038, 0x180, 0x1E0, 0x1F0} { // CURRENT, REPORTED, COMMITTED, LAUNCH TCB
		binary.LittleEndian.PutUint64(r[off:], uint64(tcb))
	}
	copy(r[0x090:], fakeMeas)
	copy(r[0x0C0:], fakeHost)
	if key == abi.VcekReportSigner {
		copy(r[0x1A0:], fakeHWID)
	}
	if edit != nil {
		edit(r)
	}
	signSNP(t, r)
	return r
}

func signSNP(t testing.TB, r []byte) {
	t.Helper()
	rr, ss, err := testAMDSigner(t).Sign(abi.SignedComponent(r))
	if err != nil {
		t.Fatal(err)
	}
	if err := abi.SetSignature(rr, ss, r); err != nil {
		t.Fatal(err)
	}
}

func fakeSNPEvidence(t testing.TB, edit func(r []byte)) *attest.Evidence {
	s := testAMDSigner(t)
	return &attest.Evidence{TEE: attest.TEESNP, Report: fakeSNPReport(t, abi.VcekReportSigner, edit), Certs: &attest.CertChain{VCEK: s.Vcek.Raw, ASK: s.Ask.Raw, ARK: s.Ark.Raw}}
}

// fakeSNPOpts trusts the test-only ARK in place of AMD's and expects the fake values.
func fakeSNPOpts(t testing.TB) Options {
	s := testAMDSigner(t)
	return Options{
		Now:                  fakeNow,
		ExpectedMeasurements: [][]byte{fakeMeas},
		ExpectedHostData:     fakeHost,
		ExpectedReportData:   fakeRD,
		fakeAMDRoots: func() map[string][]*trust.AMDRootCerts {
			r := trust.AMDRootCertsProduct("Milan")
			r.ProductCerts = &trust.ProductCerts{Ark: s.Ark, Ask: s.Ask, Asvk: s.Asvk}
			return map[string][]*trust.AMDRootCerts{"Milan": {r}}
		},
	}
}

// amdCRL is a CRL signed by the test-only ARK key (or by key), revoking serials.
func amdCRL(t testing.TB, key *rsa.PrivateKey, thisUpdate, nextUpdate time.Time, serials ...*big.Int) *x509.RevocationList {
	t.Helper()
	s := testAMDSigner(t)
	if key == nil {
		key = s.Keys.Ark
	}
	tmpl := &x509.RevocationList{Number: big.NewInt(7), ThisUpdate: thisUpdate, NextUpdate: nextUpdate}
	for _, sn := range serials {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: sn, RevocationTime: thisUpdate})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, s.Ark, key)
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	return crl
}

// Real TDX evidence: go-tdx-guest's production Sapphire Rapids v4 quote, whose PCK chain
// is valid at tdxNow, and its v5 sample at tdxV5Now.
var (
	tdxNow   = time.Date(2023, time.July, 1, 1, 0, 0, 0, time.UTC)
	tdxV5Now = time.Date(2026, time.February, 3, 1, 0, 0, 0, time.UTC)
)

func realTDXEvidence() *attest.Evidence {
	return &attest.Evidence{TEE: attest.TEETDX, Report: bytes.Clone(tdxtestdata.RawQuote)}
}

func realTDXQuote(t testing.TB) *attest.TDXQuote {
	t.Helper()
	q, err := attest.ParseTDXQuote(tdxtestdata.RawQuote)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// sampleTDXCollateral turns go-tdx-guest's sample PCS responses into a collateral file.
func sampleTDXCollateral(t testing.TB) *TDXCollateral {
	t.Helper()
	chain := func(h map[string][]string, name string) string {
		s, err := url.QueryUnescape(h[name][0])
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	r := tdxtest.TestGetter.Responses
	tcb := r["https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=50806f000000"]
	qe := r["https://api.trustedservices.intel.com/tdx/certification/v4/qe/identity"]
	pck := r["https://api.trustedservices.intel.com/sgx/certification/v4/pckcrl?ca=platform&encoding=der"]
	c := &TDXCollateral{
		TCBInfo:    CollateralItem{IssuerChain: chain(tcb.Header, "Tcb-Info-Issuer-Chain"), Body: tcb.Body},
		QEIdentity: CollateralItem{IssuerChain: chain(qe.Header, "Sgx-Enclave-Identity-Issuer-Chain"), Body: qe.Body},
		PCKCRL:     &CollateralItem{IssuerChain: chain(pck.Header, "Sgx-Pck-Crl-Issuer-Chain"), Body: pck.Body},
		RootCACRL:  tdxtestdata.RootCrlBody,
	}
	// Round-trip through the file format, as --tdx-collateral reads it.
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	c, err = ParseTDXCollateral(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tdxOpts verifies Intel's sample quotes, which come without an event log: they cannot
// pass the RTMR0 replay (TestTDXEventLog covers it on forged quotes), so the tests of the
// other checks skip it.
func tdxOpts() Options { return Options{Now: tdxNow, InsecureSkipEventLog: true} }

// withEdit returns a copy of the real quote with edit applied to its bytes.
func tdxEdited(edit func(q []byte)) *attest.Evidence {
	ev := realTDXEvidence()
	edit(ev.Report)
	return ev
}

// tdxBodyOff converts a v4 body offset to an absolute one.
func tdxBodyOff(off int) int { return tdxHeaderSize + off }

func TestVerifyFakeSNPPasses(t *testing.T) {
	claims, err := Verify(fakeSNPEvidence(t, nil), fakeSNPOpts(t))
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if !bytes.Equal(claims.Measurement, fakeMeas) || !bytes.Equal(claims.ChipID, fakeHWID) || claims.Simulated {
		t.Errorf("claims %+v", claims)
	}
	if len(claims.Warnings) != 1 || !strings.Contains(claims.Warnings[0], "revocation not checked") {
		t.Errorf("warnings %q, want the skipped revocation named", claims.Warnings)
	}

	// A current CRL from the ARK that revokes something else: passes, no warning.
	opts := fakeSNPOpts(t)
	opts.Policy.AMDCRL = amdCRL(t, nil, fakeNow.Add(-time.Hour), fakeNow.Add(time.Hour), big.NewInt(424242))
	opts.Policy.MinimumTCB = &SNPTCB{Bootloader: fakeTCB.BlSpl, TEE: fakeTCB.TeeSpl, SNP: fakeTCB.SnpSpl, Microcode: fakeTCB.UcodeSpl}
	pol := abi.SnpPolicyToBytes(abi.SnpPolicy{SMT: true})
	opts.Policy.SNPGuestPolicy = &pol
	claims, err = Verify(fakeSNPEvidence(t, nil), opts)
	if err != nil {
		t.Fatalf("Verify with CRL, exact TCB minimum and policy: %v", err)
	}
	if len(claims.Warnings) != 0 {
		t.Errorf("warnings %q with a CRL given", claims.Warnings)
	}

	// A VLEK-signed report verifies through the ASVK.
	s := testAMDSigner(t)
	ev := &attest.Evidence{TEE: attest.TEESNP, Report: fakeSNPReport(t, abi.VlekReportSigner, nil), Certs: &attest.CertChain{VLEK: s.Vlek.Raw}}
	if _, err := Verify(ev, fakeSNPOpts(t)); err != nil {
		t.Fatalf("Verify VLEK: %v", err)
	}
}

// Acceptance: real vendor evidence verifies offline, with no network.
func TestVerifyRealVendorEvidence(t *testing.T) {
	ev := realMilanEvidence()
	// The sample's firmware (2022) is below the embedded Milan minimum: refused by default.
	_, err := Verify(ev, Options{Now: realMilanNow, Policy: Policy{AllowDebug: true}})
	simtest.WantErr(t, err, attest.ErrTCB, "REPORTED_TCB bootloader SPL is 2, minimum 3")
	opts := Options{Now: realMilanNow, Policy: Policy{AllowDebug: true, NoDefaultMinimumTCB: true}}
	claims, err := Verify(ev, opts)
	if err != nil {
		t.Fatalf("real Milan report with --allow-debug: %v", err)
	}
	if claims.ProductLine != ProductMilan {
		t.Errorf("product line %q, want Milan", claims.ProductLine)
	}
	if hex.EncodeToString(claims.Measurement)[:16] != "b07af9620f3b839b" {
		t.Errorf("Milan measurement %x", claims.Measurement)
	}

	// Without its event log the quote's RTMR0 says nothing anyone can check: refused.
	_, err = Verify(realTDXEvidence(), Options{Now: tdxNow})
	simtest.WantErr(t, err, attest.ErrEventLog, "carries no event log")
	claims, err = Verify(realTDXEvidence(), tdxOpts())
	if err != nil {
		t.Fatalf("real TDX v4 quote: %v", err)
	}
	q := realTDXQuote(t)
	if !bytes.Equal(claims.Measurement, q.MrTd) || hex.EncodeToString(claims.MrTd)[:8] != "6363b804" || !bytes.Equal(claims.Rtmrs[2], q.Rtmrs[2]) {
		t.Errorf("TDX claims measurement %x MRTD %x", claims.Measurement, claims.MrTd)
	}
	if got := strings.Join(claims.Warnings, "\n"); !strings.Contains(got, "39 unsigned bytes") || !strings.Contains(got, "TDX collateral not given") || !strings.Contains(got, "event log was NOT replayed") {
		t.Errorf("warnings %q", claims.Warnings)
	}
	// The exact expectations from the quote itself pass, in both reference value forms.
	opts = tdxOpts()
	opts.ExpectedMeasurements = [][]byte{q.LaunchRegisters()}
	opts.ExpectedReportData = q.ReportData
	opts.ExpectedHostData = make([]byte, 32)
	opts.Policy.TDX = TDXPolicy{MrOwner: make([]byte, 48), MrOwnerConfig: make([]byte, 48), Xfam: &q.Xfam, MinimumTeeTcbSvn: q.TeeTcbSvn}
	claims, err = Verify(realTDXEvidence(), opts)
	if err != nil {
		t.Fatalf("real TDX quote against its own values: %v", err)
	}
	if w := strings.Join(claims.Warnings, "\n"); strings.Contains(w, "only MRTD") {
		t.Errorf("warned about RTMRs with the 192-byte form: %q", w)
	}
	// MRTD alone is compared but leaves the kernel open: a warning names the RTMRs.
	opts.ExpectedMeasurements = [][]byte{q.MrTd}
	claims, err = Verify(realTDXEvidence(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if w := strings.Join(claims.Warnings, "\n"); !strings.Contains(w, "RTMR0, RTMR1, RTMR2 not checked") {
		t.Errorf("no RTMR warning: %q", w)
	}
	opts.Policy.TDX.RTMR = [3][]byte{q.Rtmrs[0], q.Rtmrs[1], q.Rtmrs[2]}
	claims, err = Verify(realTDXEvidence(), opts)
	if err != nil || strings.Contains(strings.Join(claims.Warnings, "\n"), "only MRTD") {
		t.Fatalf("MRTD + RTMRs: %v, %q", err, claims.Warnings)
	}

	v5 := &attest.Evidence{TEE: attest.TEETDX, Report: bytes.Clone(tdxtestdata.RawQuoteV5)}
	if _, err := Verify(v5, Options{Now: tdxV5Now, InsecureSkipEventLog: true}); err != nil {
		t.Fatalf("real TDX v5 quote: %v", err)
	}
}

func TestIntelRootIsIntels(t *testing.T) {
	root, err := intelSGXRoot()
	if err != nil {
		t.Fatal(err)
	}
	// The SHA-256 fingerprint Intel publishes for its SGX root CA.
	sum := sha256Hex(root.Raw)
	if sum != "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3" {
		t.Fatalf("embedded Intel root fingerprint %s", sum)
	}
}

type rejectCase struct {
	name     string
	ev       func(t *testing.T) *attest.Evidence
	opts     func(t *testing.T) Options
	sentinel error
	want     []string // substrings of the message
}

// TestVerifyRejects is the table of ways hardware evidence must fail, each with its own
// message. SNP cases use go-sev-guest's test-only chain (and the real Milan report where
// noted); TDX cases use the real production quote, hand-mutated.
func TestVerifyRejects(t *testing.T) {
	snp := func(edit func(r []byte)) func(t *testing.T) *attest.Evidence {
		return func(t *testing.T) *attest.Evidence { return fakeSNPEvidence(t, edit) }
	}
	snpOpts := func(edit func(o *Options)) func(t *testing.T) Options {
		return func(t *testing.T) Options {
			o := fakeSNPOpts(t)
			if edit != nil {
				edit(&o)
			}
			return o
		}
	}
	tdx := func(edit func(q []byte)) func(t *testing.T) *attest.Evidence {
		return func(t *testing.T) *attest.Evidence { return tdxEdited(edit) }
	}
	tdxO := func(edit func(o *Options)) func(t *testing.T) Options {
		return func(t *testing.T) Options {
			o := tdxOpts()
			if edit != nil {
				edit(&o)
			}
			return o
		}
	}
	minTCB := func(c int) func(o *Options) {
		return func(o *Options) {
			m := SNPTCB{Bootloader: fakeTCB.BlSpl, TEE: fakeTCB.TeeSpl, SNP: fakeTCB.SnpSpl, Microcode: fakeTCB.UcodeSpl}
			switch c {
			case 0:
				m.Bootloader += 2
			case 1:
				m.TEE++
			case 2:
				m.SNP += 5
			case 3:
				m.Microcode += 3
			}
			o.Policy.MinimumTCB = &m
		}
	}
	q := realTDXQuote(t)
	regs := func(i int) []byte {
		r := q.LaunchRegisters()
		r[48*i] ^= 0xff
		return r
	}
	askSerial := func() *big.Int { return testAMDSigner(t).Ask.SerialNumber }
	otherKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}

	cases := []rejectCase{
		// --- SEV-SNP ---
		{"snp signature byte", func(t *testing.T) *attest.Evidence {
			ev := fakeSNPEvidence(t, nil)
			ev.Report[0x2A0+3] ^= 0x10
			return ev
		}, snpOpts(nil), attest.ErrSignature, []string{"signature"}},
		{"snp signature reserved bytes non-zero", func(t *testing.T) *attest.Evidence {
			ev := fakeSNPEvidence(t, nil)
			ev.Report[0x2A0+200] = 1
			return ev
		}, snpOpts(nil), attest.ErrMalformed, []string{"snp report"}},
		{"snp wrong root (AMD's real roots for a test-only chain)", snp(nil), snpOpts(func(o *Options) { o.fakeAMDRoots = nil }), attest.ErrCertChain, []string{"AMD's embedded roots"}},
		{"snp debug policy", snp(func(r []byte) {
			binary.LittleEndian.PutUint64(r[0x08:], abi.SnpPolicyToBytes(abi.SnpPolicy{SMT: true, Debug: true, SingleSocket: true}))
		}), snpOpts(nil), attest.ErrPolicy, []string{"(POLICY 0x1b0000) has DEBUG set"}},
		{"snp migration agent", snp(func(r []byte) {
			binary.LittleEndian.PutUint64(r[0x08:], abi.SnpPolicyToBytes(abi.SnpPolicy{SMT: true, MigrateMA: true}))
		}), snpOpts(nil), attest.ErrPolicy, []string{"migration agent"}},
		{"snp policy not the exact expected", snp(nil), snpOpts(func(o *Options) {
			p := abi.SnpPolicyToBytes(abi.SnpPolicy{SMT: true, SingleSocket: true})
			o.Policy.SNPGuestPolicy = &p
		}), attest.ErrPolicy, []string{"POLICY is 0x30000, expected exactly 0x130000"}},
		{"snp VMPL 1", snp(func(r []byte) { binary.LittleEndian.PutUint32(r[0x30:], 1) }), snpOpts(nil), attest.ErrPolicy, []string{"VMPL 1"}},
		{"snp signature algorithm", snp(func(r []byte) { binary.LittleEndian.PutUint32(r[0x34:], 2) }), snpOpts(nil), attest.ErrSignature, []string{"SIGNATURE_ALGO is 2"}},
		{"snp TCB bootloader short", snp(nil), snpOpts(minTCB(0)), attest.ErrTCB, []string{"bootloader SPL is 4, minimum 6 (short by 2)"}},
		{"snp TCB tee short", snp(nil), snpOpts(minTCB(1)), attest.ErrTCB, []string{"tee SPL is 1, minimum 2 (short by 1)"}},
		{"snp TCB snp short", snp(nil), snpOpts(minTCB(2)), attest.ErrTCB, []string{"snp SPL is 22, minimum 27 (short by 5)"}},
		{"snp TCB microcode short", snp(nil), snpOpts(minTCB(3)), attest.ErrTCB, []string{"microcode SPL is 213, minimum 216 (short by 3)"}},
		{"snp REPORTED_TCB differs from the VCEK", snp(func(r []byte) { r[0x180+6]++ }), snpOpts(nil), attest.ErrPolicy, []string{"REPORTED_TCB"}},
		{"snp CHIP_ID differs from the VCEK", snp(func(r []byte) { r[0x1A0] ^= 0xff }), snpOpts(nil), attest.ErrChipID, []string{"CHIP_ID", "VCEK certificate is chip"}},
		{"snp measurement not in reference values", snp(nil), snpOpts(func(o *Options) {
			o.ExpectedMeasurements = [][]byte{bytes.Repeat([]byte{1}, 48), bytes.Repeat([]byte{2}, 48)}
		}), attest.ErrMeasurement, []string{"MEASUREMENT is 3c3c", "expected one of [0101"}},
		{"snp HOST_DATA mismatch", snp(nil), snpOpts(func(o *Options) { o.ExpectedHostData = bytes.Repeat([]byte{9}, 32) }), attest.ErrHostData, []string{"HOST_DATA is 4d4d"}},
		{"snp REPORT_DATA mismatch", snp(nil), snpOpts(func(o *Options) { o.ExpectedReportData = bytes.Repeat([]byte{8}, 64) }), attest.ErrReportData, []string{"REPORT_DATA is 6e6e"}},
		{"snp truncated report", func(t *testing.T) *attest.Evidence {
			ev := fakeSNPEvidence(t, nil)
			ev.Report = ev.Report[:1000]
			return ev
		}, snpOpts(nil), attest.ErrMalformed, []string{"1000 bytes, expected 1184"}},
		{"snp oversized report", func(t *testing.T) *attest.Evidence {
			ev := fakeSNPEvidence(t, nil)
			ev.Report = append(ev.Report, make([]byte, 4096)...)
			return ev
		}, snpOpts(nil), attest.ErrMalformed, []string{"5280 bytes"}},
		{"snp unknown version", snp(func(r []byte) { binary.LittleEndian.PutUint32(r, 9) }), snpOpts(nil), attest.ErrMalformed, []string{"version"}},
		{"snp VLEK-signed without a VLEK", func(t *testing.T) *attest.Evidence {
			s := testAMDSigner(t)
			return &attest.Evidence{TEE: attest.TEESNP, Report: fakeSNPReport(t, abi.VlekReportSigner, nil), Certs: &attest.CertChain{VCEK: s.Vcek.Raw}}
		}, snpOpts(nil), attest.ErrCertChain, []string{"VLEK"}},
		{"snp VCEK expired", snp(nil), snpOpts(func(o *Options) { o.Now = fakeNow.AddDate(9, 0, 0) }), attest.ErrCertChain, []string{"expired"}},
		{"snp ASK revoked by the AMD CRL", snp(nil), snpOpts(func(o *Options) {
			o.Policy.AMDCRL = amdCRL(t, nil, fakeNow.Add(-time.Hour), fakeNow.Add(time.Hour), askSerial())
		}), attest.ErrRevoked, []string{"ASK was revoked"}},
		{"snp AMD CRL not signed by the ARK", snp(nil), snpOpts(func(o *Options) {
			o.Policy.AMDCRL = amdCRL(t, otherKey, fakeNow.Add(-time.Hour), fakeNow.Add(time.Hour))
		}), attest.ErrRevoked, []string{"CRL is not signed by ARK"}},
		{"snp AMD CRL stale", snp(nil), snpOpts(func(o *Options) {
			o.Policy.AMDCRL = amdCRL(t, nil, fakeNow.Add(-48*time.Hour), fakeNow.Add(-24*time.Hour))
		}), attest.ErrRevoked, []string{"expired at"}},
		{"snp real Milan report is a debug guest", func(t *testing.T) *attest.Evidence { return realMilanEvidence() },
			func(t *testing.T) Options { return Options{Now: realMilanNow} }, attest.ErrPolicy, []string{"POLICY 0xb0000) has DEBUG set"}},
		{"snp TDX policy for SNP evidence", snp(nil), snpOpts(func(o *Options) { o.Policy.TDX.MinimumTeeTcbSvn = make([]byte, 16) }), attest.ErrUnsupported, []string{"TDX policy"}},

		// --- TDX, through Verify on the real quote ---
		{"tdx body byte flipped", tdx(func(b []byte) { b[tdxBodyOff(tdxBodyOffMrTd)] ^= 1 }), tdxO(nil), attest.ErrSignature, []string{"unable to verify message digest"}},
		{"tdx QE report signature byte", tdx(func(b []byte) {
			// The QE report signature follows the ECDSA signature, key, cert data header and QE report.
			b[tdxHeaderSize+tdxBodySizeV10+4+64+64+6+384+5] ^= 1
		}), tdxO(nil), attest.ErrSignature, []string{"QE report signature"}},
		{"tdx PCK chain not yet valid", tdx(func([]byte) {}), tdxO(func(o *Options) { o.Now = time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC) }), attest.ErrCertChain, []string{"not yet valid"}},
		{"tdx PCK chain expired", tdx(func([]byte) {}), tdxO(func(o *Options) { o.Now = time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC) }), attest.ErrCertChain, []string{"expired", "Intel's SGX root CA"}},
		{"tdx PCK certificate corrupted", tdx(func(b []byte) {
			i := bytes.Index(b, []byte("-----BEGIN CERTIFICATE-----\n")) + 100
			b[i] ^= 0x01
		}), tdxO(nil), attest.ErrCertChain, []string{"PCK"}},
		{"tdx truncated quote", func(t *testing.T) *attest.Evidence {
			return &attest.Evidence{TEE: attest.TEETDX, Report: bytes.Clone(tdxtestdata.RawQuote[:3000])}
		}, tdxO(nil), attest.ErrMalformed, []string{"shorter than the"}},
		{"tdx oversized quote", func(t *testing.T) *attest.Evidence {
			return &attest.Evidence{TEE: attest.TEETDX, Report: append(bytes.Clone(tdxtestdata.RawQuote), make([]byte, attest.MaxQuoteSize)...)}
		}, tdxO(nil), attest.ErrMalformed, []string{"expected 1020..65536"}},
		{"tdx QE auth data size past the end", tdx(func(b []byte) {
			binary.LittleEndian.PutUint16(b[tdxHeaderSize+tdxBodySizeV10+4+tdxSDQEAuthSize:], 0xffff)
		}), tdxO(nil), attest.ErrMalformed, []string{"QE auth data size 65535 runs past"}},
		{"tdx PCK chain size wrong", tdx(func(b []byte) {
			sd := tdxHeaderSize + tdxBodySizeV10 + 4
			auth := int(binary.LittleEndian.Uint16(b[sd+tdxSDQEAuthSize:]))
			binary.LittleEndian.PutUint32(b[sd+tdxSDQEAuthData+auth+2:], 100)
		}), tdxO(nil), attest.ErrMalformed, []string{"PCK chain size is 100"}},
		{"tdx unknown version", tdx(func(b []byte) { binary.LittleEndian.PutUint16(b, 3) }), tdxO(nil), attest.ErrMalformed, []string{"version is 3"}},
		{"tdx TEE type SGX", tdx(func(b []byte) { binary.LittleEndian.PutUint32(b[4:], 0) }), tdxO(nil), attest.ErrMalformed, []string{"TEE type is 0x0"}},
		{"tdx attestation key type", tdx(func(b []byte) { binary.LittleEndian.PutUint16(b[2:], 3) }), tdxO(nil), attest.ErrMalformed, []string{"attestation key type is 3"}},
		{"tdx measurement not in reference values", tdx(func([]byte) {}), tdxO(func(o *Options) {
			o.ExpectedMeasurements = [][]byte{bytes.Repeat([]byte{7}, 48)}
		}), attest.ErrMeasurement, []string{"MRTD 0707"}},
		{"tdx RTMR1 not the expected", tdx(func([]byte) {}), tdxO(func(o *Options) {
			o.Policy.TDX.RTMR[1] = bytes.Repeat([]byte{0x11}, 48)
		}), attest.ErrMeasurement, []string{"RTMR1 is 2c700b8b", "expected 1111"}},
		{"tdx MRTD mismatch", tdx(func([]byte) {}), tdxO(func(o *Options) { o.ExpectedMeasurements = [][]byte{regs(0)} }), attest.ErrMeasurement, []string{"differs in MRTD (expected 9c63"}},
		{"tdx RTMR1 mismatch", tdx(func([]byte) {}), tdxO(func(o *Options) { o.ExpectedMeasurements = [][]byte{regs(2)} }), attest.ErrMeasurement, []string{"differs in RTMR1 (expected d370"}},
		{"tdx RTMR2 mismatch", tdx(func([]byte) {}), tdxO(func(o *Options) { o.ExpectedMeasurements = [][]byte{regs(3)} }), attest.ErrMeasurement, []string{"differs in RTMR2 (expected 7952"}},
		{"tdx MRCONFIGID mismatch", tdx(func([]byte) {}), tdxO(func(o *Options) { o.ExpectedHostData = bytes.Repeat([]byte{0xaa}, 32) }), attest.ErrHostData, []string{"MRCONFIGID[0:32] is 0000"}},
		{"tdx REPORT_DATA mismatch", tdx(func([]byte) {}), tdxO(func(o *Options) { o.ExpectedReportData = bytes.Repeat([]byte{0xbb}, 64) }), attest.ErrReportData, []string{"REPORT_DATA is 6c62dec1"}},
		{"tdx TEE_TCB_SVN below minimum", tdx(func([]byte) {}), tdxO(func(o *Options) {
			m := bytes.Clone(q.TeeTcbSvn)
			m[0] += 2
			o.Policy.TDX.MinimumTeeTcbSvn = m
		}), attest.ErrTCB, []string{"TEE_TCB_SVN[0] (TDX module SVN) is 3, minimum 5 (short by 2)"}},
		{"tdx MROWNER not as expected", tdx(func([]byte) {}), tdxO(func(o *Options) { o.Policy.TDX.MrOwner = bytes.Repeat([]byte{1}, 48) }), attest.ErrPolicy, []string{"MROWNER is 0000"}},
		{"tdx MROWNERCONFIG not as expected", tdx(func([]byte) {}), tdxO(func(o *Options) { o.Policy.TDX.MrOwnerConfig = bytes.Repeat([]byte{2}, 48) }), attest.ErrPolicy, []string{"MROWNERCONFIG is 0000"}},
		{"tdx XFAM not as expected", tdx(func([]byte) {}), tdxO(func(o *Options) { x := uint64(0xe7); o.Policy.TDX.Xfam = &x }), attest.ErrPolicy, []string{"XFAM is 0x0000000000061ae7, expected 0x00000000000000e7"}},
		{"tdx SEAMATTRIBUTES not as expected", tdx(func([]byte) {}), tdxO(func(o *Options) { x := uint64(1); o.Policy.TDX.SeamAttributes = &x }), attest.ErrPolicy, []string{"SEAMATTRIBUTES is 0x0000000000000000, expected 0x0000000000000001"}},
		{"tdx MRSIGNERSEAM not as expected", tdx(func([]byte) {}), tdxO(func(o *Options) { o.Policy.TDX.MrSignerSeam = bytes.Repeat([]byte{3}, 48) }), attest.ErrPolicy, []string{"MRSIGNERSEAM is 0000"}},
		{"tdx collateral TCB status", tdx(func([]byte) {}), tdxO(func(o *Options) { o.Policy.TDXCollateral = sampleTDXCollateral(t) }), attest.ErrCollateral, []string{"no matching TCB level found"}},
		{"tdx collateral tampered", tdx(func([]byte) {}), tdxO(func(o *Options) {
			c := sampleTDXCollateral(t)
			c.TCBInfo.Body = bytes.Replace(c.TCBInfo.Body, []byte(`"tcbEvaluationDataNumber":`), []byte(`"tcbEvaluationDataNumber": `), 1)
			o.Policy.TDXCollateral = c
		}), attest.ErrCollateral, []string{"given Intel collateral", "tcbInfo response verification failed"}},
		{"tdx collateral expired", tdx(func([]byte) {}), tdxO(func(o *Options) {
			o.Policy.TDXCollateral = sampleTDXCollateral(t)
			o.Now = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
		}), attest.ErrCollateral, []string{"tcbInfo has expired"}},
		{"tdx AMD CRL for TDX evidence", tdx(func([]byte) {}), tdxO(func(o *Options) {
			o.Policy.AMDCRL = amdCRL(t, nil, fakeNow, fakeNow.Add(time.Hour))
		}), attest.ErrUnsupported, []string{"SNP policy"}},
	}
	if len(cases) < 30 {
		t.Fatalf("only %d rejection cases", len(cases))
	}
	seen := map[string]string{}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Verify(c.ev(t), c.opts(t))
			simtest.WantErr(t, err, c.sentinel, c.want...)
			if err == nil {
				return
			}
			if other, dup := seen[err.Error()]; dup {
				t.Errorf("same message as case %q: %v", other, err)
			}
			seen[err.Error()] = c.name
		})
	}
}

// TDX value checks on hand-mutated real quotes. A mutation breaks the quote's signature, so
// these run the checks that follow the signature (checkTDXValues) on the parsed quote, as
// Verify does once the signature holds.
func TestTDXValueChecksOnMutatedQuotes(t *testing.T) {
	cases := []struct {
		name     string
		edit     func(b []byte)
		opts     Options
		sentinel error
		want     string
	}{
		{"debug TD", func(b []byte) { b[tdxBodyOff(tdxBodyOffTdAttr)] |= 1 }, Options{}, attest.ErrPolicy, "TDATTRIBUTES 0x0000000040000001 has DEBUG set"},
		{"unknown TD attribute", func(b []byte) { b[tdxBodyOff(tdxBodyOffTdAttr)+1] |= 1 }, Options{}, attest.ErrPolicy, "has bits 0x100 set"},
		{"XFAM fixed bits", func(b []byte) { b[tdxBodyOff(tdxBodyOffXfam)] &^= 1 }, Options{}, attest.ErrPolicy, "violates the fixed bits"},
		{"debug TDX module", func(b []byte) { b[tdxBodyOff(tdxBodyOffSeamAttr)] = 1 }, Options{}, attest.ErrPolicy, "non-zero marks a debug TDX module"},
		{"non-Intel TDX module signer", func(b []byte) { b[tdxBodyOff(tdxBodyOffMrSignerSeam)] = 1 }, Options{}, attest.ErrPolicy, "MRSIGNERSEAM is 01"},
		{"MRCONFIGID padding non-zero", func(b []byte) {
			copy(b[tdxBodyOff(tdxBodyOffMrConfig):], bytes.Repeat([]byte{0xcd}, 32))
			b[tdxBodyOff(tdxBodyOffMrConfig)+40] = 1
		}, Options{ExpectedHostData: bytes.Repeat([]byte{0xcd}, 32)}, attest.ErrHostData, "MRCONFIGID padding [32:48] is 0000000000000000010000"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := bytes.Clone(tdxtestdata.RawQuote)
			c.edit(b)
			q, err := attest.ParseTDXQuote(b)
			if err != nil {
				t.Fatal(err)
			}
			quote, err := tdxabi.QuoteToProto(b[:q.Len])
			if err != nil {
				t.Fatal(err)
			}
			simtest.WantErr(t, checkTDXValues(q, quote, c.opts), c.sentinel, c.want)
			// The same mutation through Verify fails earlier, at the signature.
			_, err = Verify(&attest.Evidence{TEE: attest.TEETDX, Report: b}, Options{Now: tdxNow})
			simtest.WantErr(t, err, attest.ErrSignature)
		})
	}
	// The debug check passes when debug is allowed (test samples), on both checkers.
	b := bytes.Clone(tdxtestdata.RawQuote)
	b[tdxBodyOff(tdxBodyOffTdAttr)] |= 1
	q, _ := attest.ParseTDXQuote(b)
	quote, _ := tdxabi.QuoteToProto(b[:q.Len])
	if err := checkTDXValues(q, quote, Options{Policy: Policy{AllowDebug: true}}); err != nil {
		t.Fatalf("debug TD with AllowDebug: %v", err)
	}
	// And go-tdx-guest's own validation, which cloche enables, catches DEBUG too.
	q.TdAttributes &^= tdAttrDebug
	if err := checkTDXPolicy(q, quote, Policy{}); err == nil || !strings.Contains(err.Error(), "DEBUG bit is set") {
		t.Fatalf("go-tdx-guest validate did not catch DEBUG: %v", err)
	}
}

func TestParseSNPTCB(t *testing.T) {
	got, err := ParseSNPTCB("bootloader=3, tee=0,snp=8,microcode=0xd1")
	if err != nil || got != (SNPTCB{3, 0, 8, 209}) {
		t.Fatalf("got %+v, %v", got, err)
	}
	if got.String() != "bootloader=3,tee=0,snp=8,microcode=209" {
		t.Errorf("String %q", got.String())
	}
	for _, bad := range []string{"", "bootloader", "fmc=1", "tee=256", "tee=-1", "snp=1,snp=2", "tee=x"} {
		if _, err := ParseSNPTCB(bad); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

func TestParseEvidenceFileAndCertificates(t *testing.T) {
	// Raw TDX quote, raw SNP report, SNP report followed by its certificate table, JSON.
	ev, err := attest.ParseEvidenceFile(tdxtestdata.RawQuote, "")
	if err != nil || ev.TEE != attest.TEETDX {
		t.Fatalf("raw quote: %v", err)
	}
	ev, err = attest.ParseEvidenceFile(realMilanEvidence().Report, "")
	if err != nil || ev.TEE != attest.TEESNP || ev.CertTable != nil {
		t.Fatalf("raw report: %v", err)
	}
	table, err := testAMDSigner(t).CertTableBytes()
	if err != nil {
		t.Fatal(err)
	}
	withTable := append(fakeSNPReport(t, abi.VcekReportSigner, nil), table...)
	ev, err = attest.ParseEvidenceFile(withTable, attest.TEESNP)
	if err != nil || !bytes.Equal(ev.CertTable, table) {
		t.Fatalf("report || table: %v", err)
	}
	if _, err := Verify(ev, fakeSNPOpts(t)); err != nil {
		t.Fatalf("report || table verifies: %v", err)
	}
	js, _ := fakeSNPEvidence(t, nil).Marshal()
	if ev, err = attest.ParseEvidenceFile(js, ""); err != nil || ev.TEE != attest.TEESNP {
		t.Fatalf("json: %v", err)
	}
	if _, err := attest.ParseEvidenceFile(js, attest.TEETDX); err == nil {
		t.Error("json snp evidence accepted as tdx")
	}
	for name, b := range map[string][]byte{"garbage": []byte("hello"), "zeros": make([]byte, 2000)} {
		if _, err := attest.ParseEvidenceFile(b, ""); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	if _, err := attest.ParseEvidenceFile(realMilanEvidence().Report, attest.TEESim); err == nil {
		t.Error("raw bytes accepted as sim")
	}

	// Certificates go where their names say; the evidence then verifies.
	s := testAMDSigner(t)
	ev = &attest.Evidence{TEE: attest.TEESNP, Report: fakeSNPReport(t, abi.VcekReportSigner, nil)}
	if err := attest.AttachCertificates(ev, []*x509.Certificate{s.Ark, s.Ask, s.Vcek}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ev.Certs.ARK, s.Ark.Raw) || !bytes.Equal(ev.Certs.ASK, s.Ask.Raw) || !bytes.Equal(ev.Certs.VCEK, s.Vcek.Raw) {
		t.Fatal("certificates attached to the wrong places")
	}
	if _, err := Verify(ev, fakeSNPOpts(t)); err != nil {
		t.Fatal(err)
	}
	if err := attest.AttachCertificates(realTDXEvidence(), []*x509.Certificate{s.Ark}); err == nil {
		t.Error("certificates attached to a TDX quote")
	}
}

func TestDescribe(t *testing.T) {
	fields, err := Describe(realTDXEvidence())
	if err != nil {
		t.Fatal(err)
	}
	text := FormatFields(fields)
	for _, want := range []string{"VERSION: 4\n", "TEE_TYPE: 0x81\n", "TDATTRIBUTES: 0x0000000040000000 (PKS)\n", "MRTD: 6363b804", "RTMR3: 0000", "TRAILING_BYTES: 39"} {
		if !strings.Contains(text, want) {
			t.Errorf("TDX description lacks %q:\n%s", want, text)
		}
	}
	fields, err = Describe(realMilanEvidence())
	if err != nil {
		t.Fatal(err)
	}
	text = FormatFields(fields)
	for _, want := range []string{"POLICY: 0xb0000 (ABI 0.0, SMT, DEBUG)\n", "MEASUREMENT: b07af962", "CERT_VCEK: CN=\"SEV-VCEK\"", "REPORTED_TCB: 0x"} {
		if !strings.Contains(text, want) {
			t.Errorf("SNP description lacks %q:\n%s", want, text)
		}
	}
	v5, err := Describe(&attest.Evidence{TEE: attest.TEETDX, Report: tdxtestdata.RawQuoteV5})
	if err != nil || !strings.Contains(FormatFields(v5), "BODY_TYPE: ") {
		t.Fatalf("v5: %v", err)
	}
	if _, err := Describe(&attest.Evidence{TEE: attest.TEETDX, Report: tdxtestdata.RawQuote[:2000]}); err == nil {
		t.Error("truncated quote described")
	}
}

func TestTDXCollateralFile(t *testing.T) {
	c := sampleTDXCollateral(t)
	if !c.HasCRLs() {
		t.Fatal("sample collateral has no CRLs")
	}
	b, _ := json.Marshal(c)
	for name, mutate := range map[string]func(m map[string]any){
		"unknown field": func(m map[string]any) { m["extra"] = 1 },
		"no tcbInfo":    func(m map[string]any) { delete(m, "tcbInfo") },
		"one CRL only":  func(m map[string]any) { delete(m, "rootCaCrl") },
	} {
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		mutate(m)
		bad, _ := json.Marshal(m)
		if _, err := ParseTDXCollateral(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// The offline getter serves exactly the collateral and refuses anything else.
	g := offlineTDXGetter{c}
	if _, _, err := g.Get("https://example.invalid/anything"); err == nil {
		t.Error("offline getter answered an unknown URL")
	}
	if _, err := (offlineSEVGetter{}).Get("https://example.invalid/crl"); err == nil {
		t.Error("offline SEV getter answered")
	}
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func TestLoadCRL(t *testing.T) {
	crl := amdCRL(t, nil, fakeNow, fakeNow.Add(time.Hour), big.NewInt(5))
	dir := t.TempDir()
	der := dir + "/crl.der"
	pemPath := dir + "/crl.pem"
	if err := os.WriteFile(der, crl.Raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pemPath, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: crl.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{der, pemPath} {
		got, err := LoadCRL(p)
		if err != nil || len(got.RevokedCertificateEntries) != 1 {
			t.Fatalf("%s: %v", p, err)
		}
	}
	if _, err := ParseCRL(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: crl.Raw})); err == nil {
		t.Error("a CERTIFICATE block read as a CRL")
	}
	if _, err := ParseCRL([]byte("garbage")); err == nil {
		t.Error("garbage read as a CRL")
	}
	// A CRL issued after the verification time is refused as well as a stale one.
	err := crlCurrent("the AMD CRL", crl, fakeNow.Add(-time.Minute))
	simtest.WantErr(t, err, attest.ErrRevoked, "issued at")
}

// A TDX 1.5 quote naming a service TD (MRSERVICETD non-zero) is refused: that TD can read or
// migrate the build's state.
func TestTDXServiceTDRefused(t *testing.T) {
	q, err := attest.ParseTDXQuote(bytes.Clone(tdxtestdata.RawQuoteV5))
	if err != nil {
		t.Fatal(err)
	}
	if err := checkTDXPolicy(q, nil, Policy{}); err != nil {
		t.Fatalf("the sample (MRSERVICETD zero): %v", err)
	}
	q.MrServiceTd = bytes.Repeat([]byte{0x5a}, 48)
	if err := checkTDXPolicy(q, nil, Policy{}); !errors.Is(err, attest.ErrPolicy) || !strings.Contains(err.Error(), "MRSERVICETD") {
		t.Fatalf("a bound service TD: %v, want ErrPolicy naming MRSERVICETD", err)
	}
}
