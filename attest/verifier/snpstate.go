package verifier

import (
	"bytes"
	"crypto/x509"
	"fmt"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"

	"github.com/cloche-dev/cloche/attest"
)

// SNP product lines as go-sev-guest and AMD's KDS name them.
const (
	ProductMilan = "Milan"
	ProductGenoa = "Genoa"
	ProductTurin = "Turin"
)

// defaultMinimumTCB is the SNP minimum REPORTED_TCB and LAUNCH_TCB per product line that
// applies when the verifier gives none (Policy.MinimumTCB nil, NoDefaultMinimumTCB
// false). docs/design.md ("Hardware TCB policy") says where the values come from; a
// verifier raises them with --min-tcb as AMD publishes new security bulletins.
var defaultMinimumTCB = map[string]SNPTCB{
	ProductMilan: {Bootloader: 3, TEE: 0, SNP: 8, Microcode: 115},
	ProductGenoa: {Bootloader: 7, TEE: 0, SNP: 14, Microcode: 72},
}

// DefaultMinimumTCB returns the embedded minimum TCB of an SNP product line.
func DefaultMinimumTCB(productLine string) (SNPTCB, bool) {
	t, ok := defaultMinimumTCB[productLine]
	return t, ok
}

// errTurin says why this build refuses Turin evidence instead of calling it a forgery.
var errTurin = fmt.Errorf("%w: Turin is not supported by this build, because go-sev-guest v0.15.0 cannot parse Turin VCEK certificates (Turin's TCB_VERSION puts FMC_SPL in byte 0 and its HWID is 8 bytes, so the certificate's extensions and the chain to AMD's Turin ARK cannot be checked)", attest.ErrUnsupported)

// SNPProductLineOf names the SNP product line of an AMD CPU family and model ("" when
// unknown): Milan is family 19h models 00h-0Fh, Genoa 19h models 10h-1Fh and, for Bergamo
// and Siena, which AMD's KDS serves under Genoa, A0h-AFh; Turin is family 1Ah.
func SNPProductLineOf(family, model uint64) string {
	switch {
	case family == 0x19 && model <= 0x0f:
		return ProductMilan
	case family == 0x19 && (model >= 0x10 && model <= 0x1f || model >= 0xa0 && model <= 0xaf):
		return ProductGenoa
	case family == 0x1a:
		return ProductTurin
	}
	return ""
}

// snpProductLine names the product line of an SNP report from its CPUID fields (report
// VERSION 3 and later: family, model and stepping at 0x188), or, for a VERSION 2 report,
// from the VCEK certificate's product name. "" means not recognisable.
func snpProductLine(report *spb.Report, vcekDER []byte) string {
	if report.GetVersion() >= 3 {
		family, model, _ := abi.FmsFromCpuid1Eax(report.GetCpuid1EaxFms())
		return SNPProductLineOf(uint64(family), uint64(model))
	}
	if c, err := x509.ParseCertificate(vcekDER); err == nil {
		if ext, err := kds.VcekCertificateExtensions(c); err == nil {
			for _, line := range []string{ProductMilan, ProductGenoa, ProductTurin} {
				if bytes.HasPrefix([]byte(ext.ProductName), []byte(line)) {
					return line
				}
			}
		}
	}
	return ""
}

// checkChipID reports a VCEK of another chip as such: go-sev-guest would otherwise fail
// the report signature, which reads like a forged report. A zero CHIP_ID (MASK_CHIP_ID)
// is left to go-sev-guest.
func checkChipID(report *spb.Report, vcekDER []byte) error {
	if len(vcekDER) == 0 || allZero(report.GetChipId()) {
		return nil
	}
	c, err := x509.ParseCertificate(vcekDER)
	if err != nil {
		return nil // the chain check names it
	}
	ext, err := kds.VcekCertificateExtensions(c)
	if err != nil || len(ext.HWID) == 0 {
		return nil
	}
	if !bytes.Equal(ext.HWID, report.GetChipId()) {
		return fmt.Errorf("%w: the VCEK certificate is chip %x's, the report's CHIP_ID is %x", attest.ErrChipID, ext.HWID, report.GetChipId())
	}
	return nil
}

// checkFirmwareState accepts a committed firmware (COMMITTED_TCB equal to CURRENT_TCB, and
// the same build and API version) and a provisional one, as cloud hosts run it after an
// update that is not committed yet: CURRENT above COMMITTED, provided the report says
// REPORTED_TCB = COMMITTED_TCB (the host cannot claim the provisional firmware's level).
// Committed above current is refused.
func checkFirmwareState(r *spb.Report) error {
	current, committed, reported := snpTCBFromVersion(r.GetCurrentTcb()), snpTCBFromVersion(r.GetCommittedTcb()), snpTCBFromVersion(r.GetReportedTcb())
	if err := checkMinimumTCB("CURRENT_TCB", current, committed); err != nil {
		return fmt.Errorf("%w: COMMITTED_TCB %s is above CURRENT_TCB %s: a firmware cannot run below what it committed", attest.ErrFirmware, committed, current)
	}
	curVer := uint32(r.GetCurrentMajor())<<16 | uint32(r.GetCurrentMinor())<<8 | uint32(r.GetCurrentBuild())
	comVer := uint32(r.GetCommittedMajor())<<16 | uint32(r.GetCommittedMinor())<<8 | uint32(r.GetCommittedBuild())
	if comVer > curVer {
		return fmt.Errorf("%w: committed firmware %d.%d build %d is above the current %d.%d build %d", attest.ErrFirmware,
			r.GetCommittedMajor(), r.GetCommittedMinor(), r.GetCommittedBuild(), r.GetCurrentMajor(), r.GetCurrentMinor(), r.GetCurrentBuild())
	}
	if (current != committed || curVer != comVer) && reported != committed {
		return fmt.Errorf("%w: provisional firmware (CURRENT_TCB %s, COMMITTED_TCB %s) must report the committed TCB, REPORTED_TCB is %s", attest.ErrFirmware, current, committed, reported)
	}
	return nil
}

// CheckSimRoot accepts as a trusted simulated root only a self-signed CA certificate (the
// sim ARK); the sim ASK or VCEK given as a root would let any report they sign pass.
func CheckSimRoot(c *x509.Certificate) error {
	switch {
	case c == nil:
		return fmt.Errorf("%w: no certificate", attest.ErrCertChain)
	case !c.BasicConstraintsValid || !c.IsCA:
		return fmt.Errorf("%w: simulated root %q is not a CA certificate (expected the sim ARK, a self-signed CA)", attest.ErrCertChain, c.Subject)
	case !bytes.Equal(c.RawSubject, c.RawIssuer) || c.CheckSignatureFrom(c) != nil:
		return fmt.Errorf("%w: simulated root %q is not self-signed (issuer %q; expected the sim ARK)", attest.ErrCertChain, c.Subject, c.Issuer)
	}
	return nil
}
