package attest

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"
)

// VerifyOptions says what Verify trusts and expects.
type VerifyOptions struct {
	// AllowSimulated admits simulated evidence; it is rejected unless this is true AND
	// SimRoots is non-empty.
	AllowSimulated bool
	// SimRoots are the trusted sim ARKs (the verifier's --trusted-sim-root).
	SimRoots []*x509.Certificate
	// Now is the time at which certificates must be valid; zero means time.Now().
	Now time.Time
	// ExpectedMeasurements lists the accepted MEASUREMENT values (48 bytes each); nil or
	// empty means not checked (the value is still reported in Claims).
	ExpectedMeasurements [][]byte
	// ExpectedHostData is the expected HOST_DATA (32 bytes); nil means not checked.
	ExpectedHostData []byte
	// ExpectedReportData is the expected REPORT_DATA (64 bytes); nil means not checked.
	ExpectedReportData []byte
}

// Claims are the facts a verified piece of evidence establishes.
type Claims struct {
	TEE TEE
	// Simulated is true for evidence from the simulated TEE: it proves nothing about the host.
	Simulated   bool
	Measurement []byte
	HostData    []byte
	ReportData  []byte
	ChipID      []byte
	Policy      uint64
	ReportedTCB uint64
	VMPL        uint32
}

// simProductLines are the product lines under which sim roots are offered to go-sev-guest,
// which looks roots up by the product line it derives from the report.
var simProductLines = []string{"Milan", "Genoa", "Turin"}

// Verify checks evidence offline and fails closed at the first failed check, in this order:
//
//  1. parse: TEE kind, report size and layout (ErrMalformed; TDX gives ErrUnsupported);
//  2. simulated gate: a report labelled "sim" or carrying SimFamilyID needs AllowSimulated and
//     SimRoots (ErrSimulatedNotAllowed). The label picks the roots: "sim" is checked only
//     against SimRoots, "snp" only against AMD's embedded roots, so neither can pass as the
//     other;
//  3. certificate chain and report signature (ErrCertChain, ErrSignature);
//  4. policy: no debug, no migration agent, SMT allowed, VMPL 0, firmware and TCB
//     consistency (ErrPolicy);
//  5. MEASUREMENT, HOST_DATA, REPORT_DATA against the expectations given (ErrMeasurement,
//     ErrHostData, ErrReportData).
func Verify(ev *Evidence, opts VerifyOptions) (*Claims, error) {
	if ev == nil {
		return nil, fmt.Errorf("%w: nil evidence", ErrMalformed)
	}
	// 1. Parse.
	switch ev.TEE {
	case TEESNP, TEESim:
	case TEETDX:
		return nil, fmt.Errorf("%w: verifying tdx quotes is not implemented yet", ErrUnsupported)
	default:
		return nil, fmt.Errorf("%w: tee is %q, expected %q or %q", ErrMalformed, ev.TEE, TEESNP, TEESim)
	}
	if err := ev.checkShape(); err != nil {
		return nil, err
	}
	raw := bytes.Clone(ev.Report)
	if err := abi.ValidateReportFormat(raw); err != nil {
		return nil, fmt.Errorf("%w: %s report: %v", ErrMalformed, ev.TEE, err)
	}
	report, err := abi.ReportToProto(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %s report: %v", ErrMalformed, ev.TEE, err)
	}

	// 2. Simulated gate.
	simFamily := bytes.Equal(report.GetFamilyId(), SimFamilyID[:])
	if ev.TEE == TEESim || simFamily {
		switch {
		case !opts.AllowSimulated:
			return nil, fmt.Errorf("%w: evidence comes from the SIMULATED TEE (tee %q, FAMILY_ID %x); it proves nothing about the host and needs an explicit opt-in and a trusted simulated root", ErrSimulatedNotAllowed, ev.TEE, report.GetFamilyId())
		case len(opts.SimRoots) == 0:
			return nil, fmt.Errorf("%w: simulated evidence was allowed but no trusted simulated root was given", ErrSimulatedNotAllowed)
		}
	}
	if ev.TEE == TEESim && !simFamily {
		return nil, fmt.Errorf("%w: sim report FAMILY_ID is %x, expected the simulated marker %x", ErrMalformed, report.GetFamilyId(), SimFamilyID[:])
	}

	// 3. Chain and signature.
	chain, err := certificateChain(ev)
	if err != nil {
		return nil, err
	}
	att := &spb.Attestation{Report: report, CertificateChain: chain}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	var roots map[string][]*trust.AMDRootCerts
	if ev.TEE == TEESim {
		roots, err = simTrustedRoots(opts.SimRoots, chain.GetAskCert())
	} else {
		roots, err = amdTrustedRoots()
	}
	if err != nil {
		return nil, err
	}
	if err := verify.SnpAttestation(att, &verify.Options{DisableCertFetching: true, Now: now, TrustedRoots: roots}); err != nil {
		if isSignatureStage(err) {
			return nil, fmt.Errorf("%w: %s report: %v", ErrSignature, ev.TEE, err)
		}
		rootsDesc := "AMD's embedded roots"
		if ev.TEE == TEESim {
			rootsDesc = fmt.Sprintf("the %d trusted simulated root(s)", len(opts.SimRoots))
		}
		return nil, fmt.Errorf("%w: %s report against %s: %v", ErrCertChain, ev.TEE, rootsDesc, err)
	}

	// 4. Policy.
	vmpl := 0
	if err := validate.SnpAttestation(att, &validate.Options{
		GuestPolicy: abi.SnpPolicy{SMT: true},
		VMPL:        &vmpl,
	}); err != nil {
		return nil, fmt.Errorf("%w: %s report (POLICY 0x%x, VMPL %d): %v", ErrPolicy, ev.TEE, report.GetPolicy(), report.GetVmpl(), err)
	}

	// 5. Bindings.
	if len(opts.ExpectedMeasurements) > 0 {
		ok := false
		want := make([]string, 0, len(opts.ExpectedMeasurements))
		for _, m := range opts.ExpectedMeasurements {
			ok = ok || bytes.Equal(m, report.GetMeasurement())
			want = append(want, hex.EncodeToString(m))
		}
		if !ok {
			return nil, fmt.Errorf("%w: MEASUREMENT is %x, expected one of [%s]", ErrMeasurement, report.GetMeasurement(), strings.Join(want, ", "))
		}
	}
	if err := checkExact(ErrHostData, "HOST_DATA", report.GetHostData(), opts.ExpectedHostData); err != nil {
		return nil, err
	}
	if err := checkExact(ErrReportData, "REPORT_DATA", report.GetReportData(), opts.ExpectedReportData); err != nil {
		return nil, err
	}
	return &Claims{
		TEE:         ev.TEE,
		Simulated:   ev.TEE == TEESim,
		Measurement: report.GetMeasurement(),
		HostData:    report.GetHostData(),
		ReportData:  report.GetReportData(),
		ChipID:      report.GetChipId(),
		Policy:      report.GetPolicy(),
		ReportedTCB: report.GetReportedTcb(),
		VMPL:        report.GetVmpl(),
	}, nil
}

func checkExact(sentinel error, field string, got, want []byte) error {
	if want == nil {
		return nil
	}
	if len(want) != len(got) {
		return fmt.Errorf("%w: expected %s value is %d bytes, must be %d", sentinel, field, len(want), len(got))
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%w: %s is %x, expected %x", sentinel, field, got, want)
	}
	return nil
}

// isSignatureStage tells a failure of go-sev-guest's last step (the report signature under
// an already verified VCEK/VLEK) from the certificate checks before it. go-sev-guest v0.15.0
// has no typed errors; these prefixes are those of verify.SnpReportSignature, and the tests
// pin them (a flipped report byte must give ErrSignature, a wrong root ErrCertChain).
func isSignatureStage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"report signature verification error", "could not interpret report signature", "unknown SignatureAlgo", "attestation report format error"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// certificateChain builds the go-sev-guest certificate chain from ev.Certs, falling back to
// the certificate table for anything ev.Certs lacks.
func certificateChain(ev *Evidence) (*spb.CertificateChain, error) {
	table, err := parseCertTable(ev.CertTable)
	if err != nil {
		return nil, err
	}
	c := &spb.CertificateChain{
		ArkCert:  table[abi.ArkGUID],
		AskCert:  table[abi.AskGUID],
		VcekCert: table[abi.VcekGUID],
		VlekCert: table[abi.VlekGUID],
		Extras:   map[string][]byte{},
	}
	if ev.Certs != nil {
		pick := func(dst *[]byte, v []byte) {
			if len(v) > 0 {
				*dst = bytes.Clone(v)
			}
		}
		pick(&c.ArkCert, ev.Certs.ARK)
		pick(&c.AskCert, ev.Certs.ASK)
		pick(&c.VcekCert, ev.Certs.VCEK)
		pick(&c.VlekCert, ev.Certs.VLEK)
	}
	if len(c.VcekCert) == 0 && len(c.VlekCert) == 0 {
		return nil, fmt.Errorf("%w: %s evidence carries neither a VCEK nor a VLEK certificate (the host completes the evidence)", ErrCertChain, ev.TEE)
	}
	return c, nil
}

// simTrustedRoots pairs each trusted sim ARK with the ASK carried in the evidence. The ASK is
// only an intermediate: x509 verification still has to chain it to one of the trusted ARKs.
func simTrustedRoots(arks []*x509.Certificate, askDER []byte) (map[string][]*trust.AMDRootCerts, error) {
	if len(askDER) == 0 {
		return nil, fmt.Errorf("%w: sim evidence carries no ASK certificate", ErrCertChain)
	}
	ask, err := x509.ParseCertificate(askDER)
	if err != nil {
		return nil, fmt.Errorf("%w: sim ASK certificate: %v", ErrCertChain, err)
	}
	roots := map[string][]*trust.AMDRootCerts{}
	for _, line := range simProductLines {
		for _, ark := range arks {
			if ark == nil {
				continue
			}
			r := trust.AMDRootCertsProduct(line)
			r.ProductCerts = &trust.ProductCerts{Ark: ark, Ask: ask}
			roots[line] = append(roots[line], r)
		}
	}
	return roots, nil
}

// amdTrustedRoots returns AMD's roots embedded in go-sev-guest, with both the VCEK (ASK) and
// VLEK (ASVK) intermediates, built fresh so no caller can alter a shared copy. Turin is left
// out: go-sev-guest v0.15.0 cannot parse Turin VCEKs (nor its own Turin VLEK bundle), so a
// Turin report fails closed with "no trusted roots" until the library supports it.
func amdTrustedRoots() (map[string][]*trust.AMDRootCerts, error) {
	bundles := []struct {
		line       string
		vcek, vlek []byte
	}{
		{"Milan", trust.AskArkMilanVcekBytes, trust.AskArkMilanVlekBytes},
		{"Genoa", trust.AskArkGenoaVcekBytes, trust.AskArkGenoaVlekBytes},
	}
	roots := map[string][]*trust.AMDRootCerts{}
	for _, b := range bundles {
		pc := &trust.ProductCerts{}
		if err := pc.FromKDSCertBytes(b.vcek); err != nil {
			return nil, fmt.Errorf("embedded AMD %s VCEK roots: %w", b.line, err)
		}
		vl := &trust.ProductCerts{}
		if err := vl.FromKDSCertBytes(b.vlek); err != nil {
			return nil, fmt.Errorf("embedded AMD %s VLEK roots: %w", b.line, err)
		}
		if pc.Ark == nil || vl.Ark == nil || !pc.Ark.Equal(vl.Ark) {
			return nil, fmt.Errorf("embedded AMD %s roots: VCEK and VLEK bundles disagree on the ARK", b.line)
		}
		pc.Asvk = vl.Asvk
		r := trust.AMDRootCertsProduct(b.line)
		r.ProductCerts = pc
		roots[b.line] = []*trust.AMDRootCerts{r}
	}
	return roots, nil
}

// maxRootFileSize caps a --trusted-sim-root file.
const maxRootFileSize = 1 << 20

// LoadCertificatePEM reads certificates from a file (one or more PEM CERTIFICATE blocks, or
// a single DER certificate), e.g. for --trusted-sim-root.
func LoadCertificatePEM(path string) ([]*x509.Certificate, error) {
	b, err := readCapped(path, maxRootFileSize)
	if err != nil {
		return nil, fmt.Errorf("reading certificates: %w", err)
	}
	if !bytes.Contains(b, []byte("-----BEGIN")) {
		c, err := x509.ParseCertificate(b)
		if err != nil {
			return nil, fmt.Errorf("%s is neither PEM nor a DER certificate: %w", path, err)
		}
		return []*x509.Certificate{c}, nil
	}
	var certs []*x509.Certificate
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != pemCertificate {
			return nil, fmt.Errorf("%s: PEM block %q, expected %q", path, blk.Type, pemCertificate)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: certificate %d: %w", path, len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%s: data after the last PEM block is not PEM", path)
	}
	if len(certs) == 0 {
		return nil, errors.New(path + ": no certificate found")
	}
	return certs, nil
}
