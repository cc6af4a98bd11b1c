// Package verifier checks hardware evidence (attest.Evidence) offline and fails closed:
// SEV-SNP reports against AMD's roots embedded in go-sev-guest, TDX quotes against Intel's
// SGX root, simulated reports against the sim roots the caller trusts, each under a Policy
// (debug, migration, VMPL, TCB minimums, revocation, collateral, platform allow-list).
// Every error wraps one of attest's sentinels, so callers branch on the check that failed.
// It also describes evidence for people (Describe) and reads the verifier's inputs (CRLs,
// TDX collateral, certificate files).
//
// Nothing in the guest imports it: the verifier and its vendor libraries (go-sev-guest's
// verify and validate, go-tdx-guest's verify, validate and pcs) stay out of the measured
// guest init.
package verifier

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"

	"github.com/cloche-dev/cloche/internal/fileio"

	"github.com/cloche-dev/cloche/attest"
)

// Options says what Verify trusts and expects.
type Options struct {
	// AllowSimulated admits simulated evidence; it is rejected unless this is true AND
	// SimRoots is non-empty.
	AllowSimulated bool
	// SimRoots are the trusted sim ARKs (the verifier's --trusted-sim-root).
	SimRoots []*x509.Certificate
	// Now is the time at which certificates, CRLs and collateral must be valid; zero means
	// time.Now().
	Now time.Time
	// ExpectedMeasurements lists the accepted launch measurements; nil or empty means not
	// checked (the value is still reported in Claims). SNP and sim: MEASUREMENT (48 bytes).
	// TDX: MRTD (48 bytes; then give Policy.TDX.RTMR too, or Verify warns) or
	// MRTD || RTMR0 || RTMR1 || RTMR2 (192 bytes).
	ExpectedMeasurements [][]byte
	// ExpectedHostData is the expected launch digest (32 bytes): SNP and sim HOST_DATA; TDX
	// MRCONFIGID[0:32], with MRCONFIGID[32:48] zero. Nil means not checked.
	ExpectedHostData []byte
	// ExpectedReportData is the expected REPORT_DATA (64 bytes); nil means not checked.
	ExpectedReportData []byte
	// Policy is what the evidence must satisfy beyond chain, signature and bindings.
	Policy Policy
	// InsecureSkipEventLog accepts TDX evidence without replaying its event log to RTMR0
	// (for raw quotes, which carry none). The claims then carry a warning and no
	// RTMR0Events. `cloche verify` never sets it.
	InsecureSkipEventLog bool

	// fakeAMDRoots replaces AMD's embedded roots in this package's tests, which sign
	// evidence with go-sev-guest's test-only chain. Nothing outside the package can set it.
	fakeAMDRoots func() map[string][]*trust.AMDRootCerts
	// fakeIntelRoot replaces Intel's SGX root in this package's tests, which build TDX
	// quotes under a test PCK chain. Nothing outside the package can set it.
	fakeIntelRoot *x509.Certificate
}

// Claims are the facts a verified piece of evidence establishes.
type Claims struct {
	TEE attest.TEE
	// Simulated is true for evidence from the simulated TEE: it proves nothing about the host.
	Simulated bool
	// Measurement is the launch measurement: SNP MEASUREMENT, TDX MRTD (see Rtmrs).
	Measurement []byte
	// HostData is SNP HOST_DATA (32 bytes) or TDX MRCONFIGID (48 bytes).
	HostData    []byte
	ReportData  []byte
	ChipID      []byte
	Policy      uint64
	ReportedTCB uint64
	VMPL        uint32
	// MrTd and Rtmrs (RTMR0..3) are the TDX launch registers.
	MrTd  []byte
	Rtmrs [][]byte
	// RTMR0Events are the TDX event log's events that replayed to RTMR0, in log order
	// (nil with InsecureSkipEventLog).
	RTMR0Events []RTMR0Event
	// ProductLine is the SNP product line (Milan, Genoa); PlatformID the platform's
	// identity, lowercase hex: SNP CHIP_ID, TDX PPID of the PCK certificate.
	ProductLine string
	PlatformID  string
	// Warnings name checks that were skipped (e.g. revocation without a CRL). The evidence
	// passed, but a caller must show them.
	Warnings []string
}

// simProductLines are the product lines under which sim roots are offered to go-sev-guest,
// which looks roots up by the product line it derives from the report.
var simProductLines = []string{"Milan", "Genoa", "Turin"}

// Verify checks evidence offline and fails closed at the first failed check. For SEV-SNP
// and the simulated TEE, in this order:
//
//  1. parse: TEE kind, report size and layout (ErrMalformed);
//  2. simulated gate: a report labelled "sim" or carrying SimFamilyID needs AllowSimulated and
//     SimRoots (ErrSimulatedNotAllowed). The label picks the roots: "sim" is checked only
//     against SimRoots, "snp" only against AMD's embedded roots, so neither can pass as the
//     other;
//  3. SIGNATURE_ALGO (ErrSignature), revocation of the ASK when an AMD CRL is given
//     (ErrRevoked), certificate chain (ErrCertChain) and report signature (ErrSignature);
//  4. policy: no debug (unless Policy.AllowDebug), no migration agent, SMT allowed, the
//     exact POLICY when given, VMPL 0, REPORTED_TCB and CHIP_ID equal to the VCEK's, firmware
//     consistency (ErrPolicy);
//  5. minimum TCB per component (ErrTCB, naming the component that is short);
//  6. MEASUREMENT, HOST_DATA, REPORT_DATA against the expectations given (ErrMeasurement,
//     ErrHostData, ErrReportData).
//
// For TDX: 1. parse (ErrMalformed); 2. PCK chain to Intel's root (ErrCertChain) and the
// quote and QE report signatures (ErrSignature); 3. Intel collateral and CRLs when given
// (ErrCollateral, ErrRevoked); 4. TD attributes (no DEBUG), XFAM, SEAMATTRIBUTES,
// MRSIGNERSEAM, MROWNER, MROWNERCONFIG (ErrPolicy); 5. minimum TEE_TCB_SVN (ErrTCB);
// 6. MRTD and RTMR0..2, MRCONFIGID, REPORT_DATA (ErrMeasurement, ErrHostData, ErrReportData);
// a warning when MRTD was compared but an RTMR was not.
func Verify(ev *attest.Evidence, opts Options) (*Claims, error) {
	if ev == nil {
		return nil, fmt.Errorf("%w: nil evidence", attest.ErrMalformed)
	}
	if err := ev.CheckShape(); err != nil {
		return nil, err
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	if ev.TEE == attest.TEETDX {
		if opts.Policy.AMDCRL != nil || opts.Policy.MinimumTCB != nil || opts.Policy.SNPGuestPolicy != nil {
			return nil, fmt.Errorf("%w: an SNP policy (AMD CRL, minimum TCB or guest policy) was given for tdx evidence", attest.ErrUnsupported)
		}
		return verifyTDX(ev, opts, now)
	}
	if opts.Policy.TDXCollateral != nil || opts.Policy.TDX.MinimumTeeTcbSvn != nil {
		return nil, fmt.Errorf("%w: a TDX policy (collateral or minimum TEE_TCB_SVN) was given for %s evidence", attest.ErrUnsupported, ev.TEE)
	}
	return verifySNP(ev, opts, now)
}

// verifySNP checks SEV-SNP and simulated evidence (see Verify).
func verifySNP(ev *attest.Evidence, opts Options, now time.Time) (*Claims, error) {
	report, version, err := parseSNPReport(ev)
	if err != nil {
		return nil, err
	}
	if err := checkSimulatedGate(ev, report, version, opts); err != nil {
		return nil, err
	}
	att, product, warnings, err := checkSNPSignature(ev, report, opts, now)
	if err != nil {
		return nil, err
	}
	if err := checkSNPPolicy(ev, att, product, opts.Policy); err != nil {
		return nil, err
	}
	if err := checkSNPBindings(report, opts); err != nil {
		return nil, err
	}
	return snpClaims(ev, report, product, warnings), nil
}

// parseSNPReport is step 1: the report's VERSION, format and layout.
func parseSNPReport(ev *attest.Evidence) (*spb.Report, uint32, error) {
	raw := bytes.Clone(ev.Report)
	version := binary.LittleEndian.Uint32(raw[snpOffVersion:])
	if err := abi.ValidateReportFormat(raw); err != nil {
		return nil, 0, fmt.Errorf("%w: %s report VERSION %d: %w", attest.ErrMalformed, ev.TEE, version, err)
	}
	report, err := abi.ReportToProto(raw)
	if err != nil {
		// Reserved ranges depend on VERSION: name it, since a changed VERSION is what
		// usually moves a set field into a range that must be zero.
		return nil, 0, fmt.Errorf("%w: %s report does not have the layout of its VERSION %d: %w", attest.ErrMalformed, ev.TEE, version, err)
	}
	return report, version, nil
}

// checkSimulatedGate is step 2: simulated evidence needs the opt-in and trusted roots, and
// a report labelled "sim" must carry the simulated marker and VERSION.
func checkSimulatedGate(ev *attest.Evidence, report *spb.Report, version uint32, opts Options) error {
	simFamily := bytes.Equal(report.GetFamilyId(), attest.SimFamilyID[:])
	if ev.TEE == attest.TEESim || simFamily {
		switch {
		case !opts.AllowSimulated:
			return fmt.Errorf("%w: evidence comes from the SIMULATED TEE (tee %q, FAMILY_ID %x); it proves nothing about the host and needs an explicit opt-in and a trusted simulated root", attest.ErrSimulatedNotAllowed, ev.TEE, report.GetFamilyId())
		case len(opts.SimRoots) == 0:
			return fmt.Errorf("%w: simulated evidence was allowed but no trusted simulated root was given", attest.ErrSimulatedNotAllowed)
		}
	}
	if ev.TEE == attest.TEESim && !simFamily {
		return fmt.Errorf("%w: sim report FAMILY_ID is %x, expected the simulated marker %x", attest.ErrMalformed, report.GetFamilyId(), attest.SimFamilyID[:])
	}
	if ev.TEE == attest.TEESim && version != attest.SimReportVersion {
		return fmt.Errorf("%w: sim report VERSION is %d, the simulated secure processor writes %d", attest.ErrMalformed, version, attest.SimReportVersion)
	}
	return nil
}

// checkSNPSignature is step 3: signature algorithm, revocation, chain and signature. It
// returns the attestation to validate, the product line and the warnings so far.
func checkSNPSignature(ev *attest.Evidence, report *spb.Report, opts Options, now time.Time) (*spb.Attestation, string, []string, error) {
	chain, product, err := snpChain(ev, report, opts)
	if err != nil {
		return nil, "", nil, err
	}
	roots, err := snpTrustedRoots(ev, opts, chain)
	if err != nil {
		return nil, "", nil, err
	}
	vopts, warnings, err := snpVerifyOptions(ev, opts, roots, now)
	if err != nil {
		return nil, "", nil, err
	}
	att := &spb.Attestation{Report: report, CertificateChain: chain}
	if err := verify.SnpAttestation(att, vopts); err != nil {
		return nil, "", nil, snpVerifyError(ev, opts, vopts, err)
	}
	return att, product, warnings, nil
}

// snpChain checks SIGNATURE_ALGO, reads the certificate chain, derives the product line,
// binds CHIP_ID to the VCEK and, for sim evidence, checks the trusted simulated roots.
func snpChain(ev *attest.Evidence, report *spb.Report, opts Options) (*spb.CertificateChain, string, error) {
	if algo := report.GetSignatureAlgo(); algo != snpSigAlgoECDSAP384 {
		return nil, "", fmt.Errorf("%w: %s report SIGNATURE_ALGO is %d, expected %d (ECDSA P-384 with SHA-384)", attest.ErrSignature, ev.TEE, algo, snpSigAlgoECDSAP384)
	}
	chain, err := certificateChain(ev)
	if err != nil {
		return nil, "", err
	}
	vcekDER := chain.GetVcekCert()
	product := snpProductLine(report, vcekDER)
	if product == ProductTurin {
		return nil, "", errTurin
	}
	if len(chain.GetVlekCert()) == 0 {
		if err := checkChipID(report, vcekDER); err != nil {
			return nil, "", err
		}
	}
	if ev.TEE == attest.TEESim {
		for i, r := range opts.SimRoots {
			if err := CheckSimRoot(r); err != nil {
				return nil, "", fmt.Errorf("trusted simulated root %d: %w", i+1, err)
			}
		}
	}
	return chain, product, nil
}

// snpTrustedRoots picks the roots by the evidence's label: the trusted simulated roots for
// "sim", AMD's embedded roots (or the tests' fake ones) otherwise.
func snpTrustedRoots(ev *attest.Evidence, opts Options, chain *spb.CertificateChain) (map[string][]*trust.AMDRootCerts, error) {
	switch {
	case ev.TEE == attest.TEESim:
		return simTrustedRoots(opts.SimRoots, chain.GetAskCert())
	case opts.fakeAMDRoots != nil:
		return opts.fakeAMDRoots(), nil
	default:
		return amdTrustedRoots()
	}
}

// snpVerifyOptions builds go-sev-guest's offline verify options, attaching the AMD CRL to
// the roots when one is given; without one, SNP evidence gets a warning.
func snpVerifyOptions(ev *attest.Evidence, opts Options, roots map[string][]*trust.AMDRootCerts, now time.Time) (*verify.Options, []string, error) {
	var warnings []string
	vopts := &verify.Options{DisableCertFetching: true, Now: now, TrustedRoots: roots, Getter: offlineSEVGetter{}}
	if crl := opts.Policy.AMDCRL; crl != nil {
		if err := crlCurrent("the AMD CRL", crl, now); err != nil {
			return nil, nil, err
		}
		// go-sev-guest uses a root's CRL when it is current (checked above) and checks that
		// the ARK signed it and that it does not revoke the ASK (or ASVK).
		for _, rs := range roots {
			for _, r := range rs {
				r.CRL = crl
			}
		}
		vopts.CheckRevocations = true
	} else if ev.TEE != attest.TEESim {
		// Simulated roots are local keys: nobody publishes a CRL for them.
		warnings = append(warnings, "revocation not checked: no AMD CRL was given")
	}
	return vopts, warnings, nil
}

// snpVerifyError names the stage at which go-sev-guest's verification failed: signature,
// revocation, or else the certificate chain.
func snpVerifyError(ev *attest.Evidence, opts Options, vopts *verify.Options, err error) error {
	switch {
	case isSignatureStage(err):
		return fmt.Errorf("%w: %s report: %w", attest.ErrSignature, ev.TEE, err)
	case vopts.CheckRevocations && isRevocationStage(err):
		return fmt.Errorf("%w: %s report against the given AMD CRL: %w", attest.ErrRevoked, ev.TEE, err)
	}
	rootsDesc := "AMD's embedded roots"
	if ev.TEE == attest.TEESim {
		rootsDesc = fmt.Sprintf("the %d trusted simulated root(s)", len(opts.SimRoots))
	}
	return fmt.Errorf("%w: %s report against %s: %w", attest.ErrCertChain, ev.TEE, rootsDesc, err)
}

// checkSNPPolicy is steps 4 and 5: guest policy, firmware state, VMPL, then the minimum
// TCB per component, then go-sev-guest's validation of the whole.
func checkSNPPolicy(ev *attest.Evidence, att *spb.Attestation, product string, p Policy) error {
	report := att.GetReport()
	pol, err := checkSNPGuestPolicy(ev, report, p)
	if err != nil {
		return err
	}
	minTCB, err := minimumTCB(p, product)
	if err != nil {
		return err
	}
	// Checked here (not by validate) so that the failure is named "firmware state".
	if err := checkFirmwareState(report); err != nil {
		return err
	}
	if pol.MigrateMA {
		return fmt.Errorf("%w: %s report (POLICY 0x%x) allows a migration agent: found unauthorized migration agent capability", attest.ErrPolicy, ev.TEE, report.GetPolicy())
	}
	if report.GetVmpl() != 0 {
		return fmt.Errorf("%w: %s report was requested at VMPL %d, expected VMPL 0", attest.ErrPolicy, ev.TEE, report.GetVmpl())
	}
	// Checked here first so that the error names the component.
	if err := checkSNPMinimumTCB(report, minTCB); err != nil {
		return err
	}
	if err := validate.SnpAttestation(att, snpValidateOptions(p, minTCB)); err != nil {
		return fmt.Errorf("%w: %s report (POLICY 0x%x, VMPL %d): %w", attest.ErrPolicy, ev.TEE, report.GetPolicy(), report.GetVmpl(), err)
	}
	return nil
}

// checkSNPGuestPolicy parses POLICY and checks DEBUG and, when given, the exact value.
func checkSNPGuestPolicy(ev *attest.Evidence, report *spb.Report, p Policy) (abi.SnpPolicy, error) {
	pol, err := abi.ParseSnpPolicy(report.GetPolicy())
	if err != nil {
		return pol, fmt.Errorf("%w: %s report POLICY 0x%x: %w", attest.ErrMalformed, ev.TEE, report.GetPolicy(), err)
	}
	if pol.Debug && !p.AllowDebug {
		return pol, fmt.Errorf("%w: %s report (POLICY 0x%x) has DEBUG set: found unauthorized debug capability, the host can read and change a debug guest", attest.ErrPolicy, ev.TEE, report.GetPolicy())
	}
	if want := p.SNPGuestPolicy; want != nil && report.GetPolicy() != *want {
		return pol, fmt.Errorf("%w: %s report POLICY is 0x%x, expected exactly 0x%x", attest.ErrPolicy, ev.TEE, report.GetPolicy(), *want)
	}
	return pol, nil
}

// checkSNPMinimumTCB checks REPORTED_TCB and LAUNCH_TCB against the minimum, if any.
func checkSNPMinimumTCB(report *spb.Report, minTCB *SNPTCB) error {
	if minTCB == nil {
		return nil
	}
	if err := checkMinimumTCB("REPORTED_TCB", snpTCBFromVersion(report.GetReportedTcb()), *minTCB); err != nil {
		return err
	}
	return checkMinimumTCB("LAUNCH_TCB", snpTCBFromVersion(report.GetLaunchTcb()), *minTCB)
}

// snpValidateOptions is what go-sev-guest's validation checks: SMT allowed, DEBUG only
// when allowed, VMPL 0, the minimum TCB, provisional firmware permitted (checked by
// checkFirmwareState).
func snpValidateOptions(p Policy, minTCB *SNPTCB) *validate.Options {
	vmpl := 0
	vo := &validate.Options{
		GuestPolicy: abi.SnpPolicy{SMT: true, Debug: p.AllowDebug},
		VMPL:        &vmpl,
	}
	if m := minTCB; m != nil {
		vo.MinimumTCB = kds.TCBParts{BlSpl: m.Bootloader, TeeSpl: m.TEE, SnpSpl: m.SNP, UcodeSpl: m.Microcode}
		vo.MinimumLaunchTCB = vo.MinimumTCB
	}
	vo.PermitProvisionalFirmware = true
	return vo
}

// checkSNPBindings is step 6: MEASUREMENT, HOST_DATA and REPORT_DATA against the
// expectations given, then CHIP_ID against the platform allow-list.
func checkSNPBindings(report *spb.Report, opts Options) error {
	if len(opts.ExpectedMeasurements) > 0 {
		ok := false
		want := make([]string, 0, len(opts.ExpectedMeasurements))
		for _, m := range opts.ExpectedMeasurements {
			ok = ok || bytes.Equal(m, report.GetMeasurement())
			want = append(want, hex.EncodeToString(m))
		}
		if !ok {
			return fmt.Errorf("%w: MEASUREMENT is %x, expected one of [%s]", attest.ErrMeasurement, report.GetMeasurement(), strings.Join(want, ", "))
		}
	}
	if err := checkExact(attest.ErrHostData, "HOST_DATA", report.GetHostData(), opts.ExpectedHostData); err != nil {
		return err
	}
	if err := checkExact(attest.ErrReportData, "REPORT_DATA", report.GetReportData(), opts.ExpectedReportData); err != nil {
		return err
	}
	return checkPlatform(opts.Policy.AllowedPlatforms, "CHIP_ID", hex.EncodeToString(report.GetChipId()))
}

// snpClaims are the facts verified SNP or sim evidence establishes.
func snpClaims(ev *attest.Evidence, report *spb.Report, product string, warnings []string) *Claims {
	return &Claims{
		ProductLine: product,
		PlatformID:  hex.EncodeToString(report.GetChipId()),
		TEE:         ev.TEE,
		Simulated:   ev.TEE == attest.TEESim,
		Measurement: report.GetMeasurement(),
		HostData:    report.GetHostData(),
		ReportData:  report.GetReportData(),
		ChipID:      report.GetChipId(),
		Policy:      report.GetPolicy(),
		ReportedTCB: report.GetReportedTcb(),
		VMPL:        report.GetVmpl(),
		Warnings:    warnings,
	}
}

// snpSigAlgoECDSAP384 is SIGNATURE_ALGO 1, ECDSA P-384 with SHA-384, the only algorithm
// SEV-SNP firmware uses.
const snpSigAlgoECDSAP384 = 1

// isRevocationStage recognises go-sev-guest's CRL failures (verifyCRL's messages).
func isRevocationStage(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "was revoked") || strings.Contains(msg, "CRL")
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
func certificateChain(ev *attest.Evidence) (*spb.CertificateChain, error) {
	table, err := attest.ParseCertTable(ev.CertTable)
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
		return nil, fmt.Errorf("%w: %s evidence carries neither a VCEK nor a VLEK certificate (the host completes the evidence)", attest.ErrCertChain, ev.TEE)
	}
	return c, nil
}

// simTrustedRoots pairs each trusted sim ARK with the ASK carried in the evidence. The ASK is
// only an intermediate: x509 verification still has to chain it to one of the trusted ARKs.
func simTrustedRoots(arks []*x509.Certificate, askDER []byte) (map[string][]*trust.AMDRootCerts, error) {
	if len(askDER) == 0 {
		return nil, fmt.Errorf("%w: sim evidence carries no ASK certificate", attest.ErrCertChain)
	}
	ask, err := x509.ParseCertificate(askDER)
	if err != nil {
		return nil, fmt.Errorf("%w: sim ASK certificate: %w", attest.ErrCertChain, err)
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

// pemCertificate is the PEM block type of a certificate.
const pemCertificate = "CERTIFICATE"

// snpOffVersion is the VERSION field of an SNP report.
const snpOffVersion = 0x000

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// LoadCertificatePEM reads certificates from a file (one or more PEM CERTIFICATE blocks, or
// a single DER certificate), e.g. for --trusted-sim-root.
func LoadCertificatePEM(path string) ([]*x509.Certificate, error) {
	b, err := fileio.ReadCapped(path, maxRootFileSize)
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

// minimumTCB is the caller's minimum TCB or, unless turned off, the product line's
// embedded one. An SNP report of an unknown product line with no minimum given fails: the
// default policy cannot be applied to it.
func minimumTCB(p Policy, product string) (*SNPTCB, error) {
	if p.MinimumTCB != nil {
		return p.MinimumTCB, nil
	}
	if p.NoDefaultMinimumTCB {
		return nil, nil
	}
	t, ok := DefaultMinimumTCB(product)
	if !ok {
		return nil, fmt.Errorf("%w: no embedded minimum TCB for SNP product line %q; give a minimum TCB explicitly", attest.ErrTCB, product)
	}
	return &t, nil
}

// checkPlatform checks the platform allow-list, when one is given.
func checkPlatform(allowed []string, field, id string) error {
	if len(allowed) == 0 {
		return nil
	}
	for _, a := range allowed {
		if strings.EqualFold(strings.TrimSpace(a), id) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s %s is not among the %d allowed platform(s)", attest.ErrPlatform, field, id, len(allowed))
}
