package verifier

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-tdx-guest/pcs"
	tdxpb "github.com/google/go-tdx-guest/proto/tdx"
	tdxvalidate "github.com/google/go-tdx-guest/validate"
	tdxverify "github.com/google/go-tdx-guest/verify"

	"github.com/cloche-dev/cloche/attest"
)

// verifyTDX checks a TDX quote offline, in the order documented on Verify.
func verifyTDX(ev *attest.Evidence, opts Options, now time.Time) (*Claims, error) {
	q, quote, warnings, err := parseTDXEvidence(ev)
	if err != nil {
		return nil, err
	}
	roots, times, err := checkTDXSignature(quote, opts, now)
	if err != nil {
		return nil, err
	}
	// The enclave that signed the quote must be Intel's TD quoting enclave, with or without
	// collateral: the PCK certifies any enclave on the platform, so a host could run its
	// own and sign any quote with it.
	if err := checkQEIdentity(quote); err != nil {
		return nil, err
	}
	collWarnings, err := checkTDXCollateral(quote, opts.Policy.TDXCollateral, roots, times)
	if err != nil {
		return nil, err
	}
	warnings = append(warnings, collWarnings...)

	// 4-6. Policy, TCB, bindings.
	if err := checkTDXValues(q, quote, opts); err != nil {
		return nil, err
	}
	var events []RTMR0Event
	if opts.InsecureSkipEventLog {
		warnings = append(warnings, "the TDX event log was NOT replayed (InsecureSkipEventLog): what RTMR0 measured (the TD HOB, the UEFI variables, the host's ACPI tables) is unknown")
	} else if events, err = checkTDXEventLog(ev.EventLog, q.Rtmrs[0]); err != nil {
		return nil, err
	}
	ppid, err := tdxPPID(quote)
	if err != nil {
		return nil, err
	}
	if err := checkPlatform(opts.Policy.AllowedPlatforms, "PPID", ppid); err != nil {
		return nil, err
	}
	if open := tdxUncheckedRTMRs(opts.ExpectedMeasurements, opts.Policy.TDX.RTMR); len(open) > 0 {
		warnings = append(warnings, fmt.Sprintf("only MRTD (the firmware) was compared with a reference value; %s not checked: the kernel, command line and initrd are not bound", strings.Join(open, ", ")))
	}
	claims := tdxClaims(q, ppid, warnings)
	claims.RTMR0Events = events
	return claims, nil
}

// parseTDXEvidence is step 1: cloche's own strict layout parser, then go-tdx-guest's. A
// TDX quote carries its own PCK chain, so SNP certificates are refused.
func parseTDXEvidence(ev *attest.Evidence) (*attest.TDXQuote, any, []string, error) {
	q, err := attest.ParseTDXQuote(ev.Report)
	if err != nil {
		return nil, nil, nil, err
	}
	var warnings []string
	if q.Trailing > 0 {
		warnings = append(warnings, fmt.Sprintf("ignored %d unsigned bytes after the tdx quote's signed data", q.Trailing))
	}
	quote, err := tdxQuoteToProto(ev.Report[:q.Len])
	if err != nil {
		return nil, nil, nil, err
	}
	if ev.CertTable != nil || ev.Certs != nil {
		// A TDX quote carries its own PCK chain; anything else is a confused producer.
		return nil, nil, nil, fmt.Errorf("%w: tdx evidence carries an SNP certificate table or chain", attest.ErrMalformed)
	}
	return q, quote, warnings, nil
}

// checkTDXSignature is step 2: the PCK chain to Intel's root and the quote signature,
// without collateral. It returns the roots and times the collateral check reuses.
func checkTDXSignature(quote any, opts Options, now time.Time) (*x509.CertPool, *tdxverify.TimeSet, error) {
	root, err := intelSGXRoot()
	if err != nil {
		return nil, nil, err
	}
	if opts.fakeIntelRoot != nil {
		root = opts.fakeIntelRoot
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	times := &tdxverify.TimeSet{PckCertChain: now, TcbInfo: now, QeIdentity: now, PckCrl: now, RootCaCrl: now}
	if err := tdxverify.TdxQuote(quote, &tdxverify.Options{Now: times, TrustedRoots: roots, Getter: offlineTDXGetter{}}); err != nil {
		if isTDXSignatureStage(err) {
			return nil, nil, fmt.Errorf("%w: tdx quote: %w", attest.ErrSignature, err)
		}
		return nil, nil, fmt.Errorf("%w: tdx quote PCK chain against Intel's SGX root CA: %w", attest.ErrCertChain, err)
	}
	return roots, times, nil
}

// checkTDXCollateral is step 3: Intel collateral and revocation, when given; it returns
// warnings naming what was not checked.
func checkTDXCollateral(quote any, c *TDXCollateral, roots *x509.CertPool, times *tdxverify.TimeSet) ([]string, error) {
	if c == nil {
		return []string{"TDX collateral not given: the platform's TCB status, the quoting enclave's TCB level and Intel's CRLs were not checked; its identity was checked against Intel's TD QE"}, nil
	}
	err := tdxverify.TdxQuote(quote, &tdxverify.Options{
		Now: times, TrustedRoots: roots, Getter: offlineTDXGetter{c},
		GetCollateral: true, CheckRevocations: c.HasCRLs(),
	})
	if err != nil {
		if strings.Contains(err.Error(), "revoked") {
			return nil, fmt.Errorf("%w: tdx PCK chain: %w", attest.ErrRevoked, err)
		}
		return nil, fmt.Errorf("%w: tdx quote against the given Intel collateral: %w", attest.ErrCollateral, err)
	}
	if !c.HasCRLs() {
		return []string{"revocation not checked: the TDX collateral carries no Intel CRLs (PCK CRL and root CA CRL)"}, nil
	}
	return nil, nil
}

// tdxClaims are the facts a verified TDX quote establishes.
func tdxClaims(q *attest.TDXQuote, ppid string, warnings []string) *Claims {
	return &Claims{
		TEE:         attest.TEETDX,
		PlatformID:  ppid,
		Measurement: bytes.Clone(q.MrTd),
		HostData:    bytes.Clone(q.MrConfigID),
		ReportData:  bytes.Clone(q.ReportData),
		MrTd:        bytes.Clone(q.MrTd),
		Rtmrs:       [][]byte{bytes.Clone(q.Rtmrs[0]), bytes.Clone(q.Rtmrs[1]), bytes.Clone(q.Rtmrs[2]), bytes.Clone(q.Rtmrs[3])},
		Warnings:    warnings,
	}
}

// checkTDXValues checks the quote's fields once its signatures are known to be good:
// policy (ErrPolicy), minimum TEE_TCB_SVN (ErrTCB), then the bindings.
func checkTDXValues(q *attest.TDXQuote, quote any, opts Options) error {
	if err := checkTDXPolicy(q, quote, opts.Policy); err != nil {
		return err
	}
	if min := opts.Policy.TDX.MinimumTeeTcbSvn; min != nil {
		if err := checkMinimumTeeTcbSvn(q.TeeTcbSvn, min); err != nil {
			return err
		}
	}
	if err := checkTDXMeasurement(q, opts.ExpectedMeasurements, opts.Policy.TDX.RTMR); err != nil {
		return err
	}
	if want := opts.ExpectedHostData; want != nil {
		if len(want) != 32 {
			return fmt.Errorf("%w: expected launch digest is %d bytes, must be 32 (it is compared with MRCONFIGID[0:32])", attest.ErrHostData, len(want))
		}
		if !bytes.Equal(q.MrConfigID[:32], want) {
			return fmt.Errorf("%w: MRCONFIGID[0:32] is %x, expected %x", attest.ErrHostData, q.MrConfigID[:32], want)
		}
		if !allZero(q.MrConfigID[32:]) {
			return fmt.Errorf("%w: MRCONFIGID padding [32:48] is %x, expected 16 zero bytes", attest.ErrHostData, q.MrConfigID[32:])
		}
	}
	return checkExact(attest.ErrReportData, "REPORT_DATA", q.ReportData, opts.ExpectedReportData)
}

// checkTDXPolicy checks the TD and TDX module attributes and the owner fields.
func checkTDXPolicy(q *attest.TDXQuote, quote any, p Policy) error {
	if q.TdAttributes&tdAttrDebug != 0 && !p.AllowDebug {
		return fmt.Errorf("%w: TDATTRIBUTES 0x%016x has DEBUG set: the host can read and change a debug TD", attest.ErrPolicy, q.TdAttributes)
	}
	if extra := q.TdAttributes &^ tdAttrAllowed; extra != 0 {
		return fmt.Errorf("%w: TDATTRIBUTES 0x%016x has bits 0x%x set, only DEBUG, SEPT_VE_DISABLE, PKS and PERFMON are accepted", attest.ErrPolicy, q.TdAttributes, extra)
	}
	if q.Xfam&xfamFixed1 != xfamFixed1 || q.Xfam&^xfamFixed0 != 0 {
		return fmt.Errorf("%w: XFAM 0x%016x violates the fixed bits (must have 0x%x, may only have 0x%x)", attest.ErrPolicy, q.Xfam, xfamFixed1, xfamFixed0)
	}
	if p.TDX.Xfam != nil && q.Xfam != *p.TDX.Xfam {
		return fmt.Errorf("%w: XFAM is 0x%016x, expected 0x%016x", attest.ErrPolicy, q.Xfam, *p.TDX.Xfam)
	}
	wantSeamAttr := uint64(0)
	if p.TDX.SeamAttributes != nil {
		wantSeamAttr = *p.TDX.SeamAttributes
	}
	if q.SeamAttributes != wantSeamAttr {
		return fmt.Errorf("%w: SEAMATTRIBUTES is 0x%016x, expected 0x%016x (non-zero marks a debug TDX module)", attest.ErrPolicy, q.SeamAttributes, wantSeamAttr)
	}
	wantSigner := p.TDX.MrSignerSeam
	if wantSigner == nil {
		wantSigner = make([]byte, 48)
	}
	if err := checkExact(attest.ErrPolicy, "MRSIGNERSEAM", q.MrSignerSeam, wantSigner); err != nil {
		return err
	}
	if err := checkExact(attest.ErrPolicy, "MROWNER", q.MrOwner, p.TDX.MrOwner); err != nil {
		return err
	}
	if err := checkExact(attest.ErrPolicy, "MROWNERCONFIG", q.MrOwnerConfig, p.TDX.MrOwnerConfig); err != nil {
		return err
	}
	// A service TD bound to this one (a migration TD, say; TDX 1.5 bodies name it) can read
	// or move its state, as SEV-SNP's migration agent can, so the build's secrecy and
	// integrity would rest on that TD too.
	if !allZero(q.MrServiceTd) {
		return fmt.Errorf("%w: MRSERVICETD is %x: a service TD (such as a migration TD) is bound to this TD and can read or move its state; expected zero", attest.ErrPolicy, q.MrServiceTd)
	}
	// go-tdx-guest's own validation as a second opinion, for the v4 quotes it supports (v5
	// gives "unsupported quote type"). EnableTdDebugCheck matters: without it (or an exact
	// TdAttributes) the library accepts a debug TD.
	if v4, ok := quote.(*tdxpb.QuoteV4); ok {
		if err := tdxvalidate.TdxQuote(v4, &tdxvalidate.Options{TdQuoteBodyOptions: tdxvalidate.TdQuoteBodyOptions{EnableTdDebugCheck: !p.AllowDebug}}); err != nil {
			return fmt.Errorf("%w: tdx quote: %w", attest.ErrPolicy, err)
		}
	}
	return nil
}

// checkTDXMeasurement compares the launch registers with the reference values: each is
// either 48 bytes (MRTD, what the provenance and the reference values name as the TDX
// measurement) or 192 bytes (MRTD || RTMR0 || RTMR1 || RTMR2). Then each expected RTMR.
func checkTDXMeasurement(q *attest.TDXQuote, refs [][]byte, rtmrs [3][]byte) error {
	if len(refs) > 0 {
		long := q.LaunchRegisters()
		var diffs []string
		ok := false
		for _, ref := range refs {
			switch len(ref) {
			case 48:
				if bytes.Equal(ref, q.MrTd) {
					ok = true
				}
				diffs = append(diffs, fmt.Sprintf("MRTD %x", ref))
			case 192:
				if bytes.Equal(ref, long) {
					ok = true
				}
				var names []string
				for i, name := range []string{"MRTD", "RTMR0", "RTMR1", "RTMR2"} {
					if !bytes.Equal(ref[48*i:48*i+48], long[48*i:48*i+48]) {
						names = append(names, fmt.Sprintf("%s (expected %x)", name, ref[48*i:48*i+48]))
					}
				}
				diffs = append(diffs, "differs in "+strings.Join(names, ", "))
			default:
				return fmt.Errorf("%w: a TDX reference value is %d bytes, expected 48 (MRTD) or 192 (MRTD||RTMR0||RTMR1||RTMR2)", attest.ErrMeasurement, len(ref))
			}
			if ok {
				break
			}
		}
		if !ok {
			return fmt.Errorf("%w: MRTD %x, RTMR0 %x, RTMR1 %x, RTMR2 %x match none of the %d reference value(s): %s",
				attest.ErrMeasurement, q.MrTd, q.Rtmrs[0], q.Rtmrs[1], q.Rtmrs[2], len(refs), strings.Join(diffs, "; "))
		}
	}
	for i, want := range rtmrs {
		if want == nil {
			continue
		}
		if err := checkExact(attest.ErrMeasurement, fmt.Sprintf("RTMR%d", i), q.Rtmrs[i], want); err != nil {
			return err
		}
	}
	return nil
}

// tdxUncheckedRTMRs names the RTMRs a verifier that checked the measurement left open.
func tdxUncheckedRTMRs(refs [][]byte, rtmrs [3][]byte) []string {
	if len(refs) == 0 {
		return nil
	}
	for _, r := range refs {
		if len(r) != 192 {
			var open []string
			for i, want := range rtmrs {
				if want == nil {
					open = append(open, fmt.Sprintf("RTMR%d", i))
				}
			}
			return open
		}
	}
	return nil
}

// isTDXSignatureStage tells go-tdx-guest's quote-signature failures (the attestation key's
// signature over header and body, the QE report's signature under the PCK, the QE report
// data binding the attestation key) from PCK chain failures. The library wraps its errors
// with %v, so this matches its messages; the tests pin the split.
func isTDXSignatureStage(err error) bool {
	if errors.Is(err, tdxverify.ErrHashVerificationFail) {
		return true
	}
	msg := err.Error()
	for _, p := range []string{"attestation key in the quote is invalid", "unable to convert Quote's signature", "error verifying QE report signature", "error verifying QE report data", "could not get message digest"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// tdxPPID is the platform's PPID from the (verified) PCK certificate's SGX extensions.
func tdxPPID(quote any) (string, error) {
	chain, err := tdxverify.ExtractChainFromQuote(quote)
	if err != nil {
		return "", fmt.Errorf("%w: tdx PCK chain: %w", attest.ErrCertChain, err)
	}
	ext, err := pcs.PckCertificateExtensions(chain.PCKCertificate)
	if err != nil {
		return "", fmt.Errorf("%w: tdx PCK certificate extensions: %w", attest.ErrCertChain, err)
	}
	return strings.ToLower(ext.PPID), nil
}

// Intel's TD quoting enclave identity, as Intel's signed QE identity (enclaveIdentity
// "TD_QE", version 2, from Intel's PCS; go-tdx-guest's testing/testdata
// sample_qeIdentity_response) states it: MRSIGNER, ISVPRODID 2, and the attributes and
// MISCSELECT under their masks (DEBUG must be clear).
var (
	tdQEMrSigner       = mustHex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5")
	tdQEAttributes     = mustHex("11000000000000000000000000000000")
	tdQEAttributesMask = mustHex("fbffffffffffffff0000000000000000")
)

const (
	tdQEIsvProdID      = 2
	tdQEMiscSelect     = 0x00000000
	tdQEMiscSelectMask = 0xffffffff
)

// checkQEIdentity checks the QE report in the quote's certification data against Intel's TD
// QE identity. go-tdx-guest checks it only with collateral.
func checkQEIdentity(quote any) error {
	var r *tdxpb.EnclaveReport
	switch q := quote.(type) {
	case *tdxpb.QuoteV4:
		r = q.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetQeReport()
	case *tdxpb.QuoteV5:
		r = q.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetQeReport()
	}
	if r == nil {
		return fmt.Errorf("%w: the quote carries no QE report", attest.ErrQEIdentity)
	}
	if !bytes.Equal(r.GetMrSigner(), tdQEMrSigner) {
		return fmt.Errorf("%w: QE MRSIGNER is %x, expected Intel's %x", attest.ErrQEIdentity, r.GetMrSigner(), tdQEMrSigner)
	}
	if r.GetIsvProdId() != tdQEIsvProdID {
		return fmt.Errorf("%w: QE ISVPRODID is %d, expected %d (the TD QE)", attest.ErrQEIdentity, r.GetIsvProdId(), tdQEIsvProdID)
	}
	if r.GetMiscSelect()&tdQEMiscSelectMask != tdQEMiscSelect {
		return fmt.Errorf("%w: QE MISCSELECT is 0x%08x, expected 0x%08x under mask 0x%08x", attest.ErrQEIdentity, r.GetMiscSelect(), tdQEMiscSelect, tdQEMiscSelectMask)
	}
	attr := r.GetAttributes()
	if len(attr) != len(tdQEAttributes) {
		return fmt.Errorf("%w: QE ATTRIBUTES are %d bytes, expected %d", attest.ErrQEIdentity, len(attr), len(tdQEAttributes))
	}
	for i := range attr {
		if attr[i]&tdQEAttributesMask[i] != tdQEAttributes[i] {
			return fmt.Errorf("%w: QE ATTRIBUTES %x do not match Intel's %x under mask %x (a debug or other enclave)", attest.ErrQEIdentity, attr, tdQEAttributes, tdQEAttributesMask)
		}
	}
	return nil
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}
