package verifier

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"

	"github.com/cloche-dev/cloche/attest"
)

// Field is one named value of a report or quote, formatted for people (hex for byte
// strings, 0x-hex for integers with a decoded reading in parentheses where it helps).
type Field struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Describe lists the fields of the evidence's report or quote in layout order, then the
// certificates it carries. It parses strictly but checks no signature: it is for looking
// at evidence, not for trusting it.
func Describe(ev *attest.Evidence) ([]Field, error) {
	if ev == nil {
		return nil, fmt.Errorf("%w: nil evidence", attest.ErrMalformed)
	}
	if err := ev.CheckShape(); err != nil {
		return nil, err
	}
	var fl fieldList
	fl.add("TEE", "%s", teeLabel(ev.TEE))
	var err error
	switch ev.TEE {
	case attest.TEETDX:
		err = fl.describeTDX(ev)
	default:
		err = fl.describeSNP(ev)
	}
	if err != nil {
		return nil, err
	}
	return fl, nil
}

// fieldList collects the fields Describe lists, in order.
type fieldList []Field

func (fl *fieldList) add(name, format string, args ...any) {
	*fl = append(*fl, Field{Name: name, Value: fmt.Sprintf(format, args...)})
}

// describeTDX lists a TDX quote's header and body fields.
func (fl *fieldList) describeTDX(ev *attest.Evidence) error {
	q, err := attest.ParseTDXQuote(ev.Report)
	if err != nil {
		return err
	}
	add := fl.add
	add("VERSION", "%d", q.Version)
	add("ATTESTATION_KEY_TYPE", "%d", q.AttestationKeyType)
	add("TEE_TYPE", "0x%x", q.TeeType)
	add("PCE_SVN", "%d", q.PceSvn)
	add("QE_SVN", "%d", q.QeSvn)
	add("QE_VENDOR_ID", "%x", q.QeVendorID)
	add("USER_DATA", "%x", q.UserData)
	if q.Version == 5 {
		add("BODY_TYPE", "%d", q.BodyType)
	}
	add("TEE_TCB_SVN", "%x", q.TeeTcbSvn)
	add("MRSEAM", "%x", q.MrSeam)
	add("MRSIGNERSEAM", "%x", q.MrSignerSeam)
	add("SEAMATTRIBUTES", "0x%016x", q.SeamAttributes)
	add("TDATTRIBUTES", "0x%016x (%s)", q.TdAttributes, tdAttributesString(q.TdAttributes))
	add("XFAM", "0x%016x", q.Xfam)
	add("MRTD", "%x", q.MrTd)
	add("MRCONFIGID", "%x", q.MrConfigID)
	add("MROWNER", "%x", q.MrOwner)
	add("MROWNERCONFIG", "%x", q.MrOwnerConfig)
	for i, r := range q.Rtmrs {
		add(fmt.Sprintf("RTMR%d", i), "%x", r)
	}
	add("REPORTDATA", "%x", q.ReportData)
	if q.TeeTcbSvn2 != nil {
		add("TEE_TCB_SVN2", "%x", q.TeeTcbSvn2)
		add("MRSERVICETD", "%x", q.MrServiceTd)
	}
	add("SIGNED_DATA_SIZE", "%d", q.SignedDataSize)
	if q.Trailing > 0 {
		add("TRAILING_BYTES", "%d (unsigned, ignored)", q.Trailing)
	}
	return nil
}

// describeSNP lists an SNP or sim report's fields, its signature, then its certificate
// table and certificates.
func (fl *fieldList) describeSNP(ev *attest.Evidence) error {
	r, err := abi.ReportToProto(bytes.Clone(ev.Report))
	if err != nil {
		return fmt.Errorf("%w: %s report: %w", attest.ErrMalformed, ev.TEE, err)
	}
	add := fl.add
	add("VERSION", "%d", r.GetVersion())
	fl.describeProductLine(ev, r)
	add("GUEST_SVN", "%d", r.GetGuestSvn())
	add("POLICY", "0x%x (%s)", r.GetPolicy(), snpPolicyString(r.GetPolicy()))
	add("FAMILY_ID", "%x", r.GetFamilyId())
	add("IMAGE_ID", "%x", r.GetImageId())
	add("VMPL", "%d", r.GetVmpl())
	add("SIGNATURE_ALGO", "%d", r.GetSignatureAlgo())
	add("CURRENT_TCB", "0x%016x (%s)", r.GetCurrentTcb(), snpTCBFromVersion(r.GetCurrentTcb()))
	add("PLATFORM_INFO", "0x%x", r.GetPlatformInfo())
	si, err := abi.ParseSignerInfo(r.GetSignerInfo())
	if err != nil {
		return fmt.Errorf("%w: SIGNER_INFO: %w", attest.ErrMalformed, err)
	}
	add("SIGNER_INFO", "0x%x (signing key %v, mask chip key %v, author key %v)", r.GetSignerInfo(), si.SigningKey, si.MaskChipKey, si.AuthorKeyEn)
	add("REPORT_DATA", "%x", r.GetReportData())
	add("MEASUREMENT", "%x", r.GetMeasurement())
	add("HOST_DATA", "%x", r.GetHostData())
	add("ID_KEY_DIGEST", "%x", r.GetIdKeyDigest())
	add("AUTHOR_KEY_DIGEST", "%x", r.GetAuthorKeyDigest())
	add("REPORT_ID", "%x", r.GetReportId())
	add("REPORT_ID_MA", "%x", r.GetReportIdMa())
	add("REPORTED_TCB", "0x%016x (%s)", r.GetReportedTcb(), snpTCBFromVersion(r.GetReportedTcb()))
	if r.GetVersion() >= 3 {
		add("CPUID_FMS", "0x%08x", r.GetCpuid1EaxFms())
	}
	add("CHIP_ID", "%x", r.GetChipId())
	add("COMMITTED_TCB", "0x%016x (%s)", r.GetCommittedTcb(), snpTCBFromVersion(r.GetCommittedTcb()))
	add("CURRENT_VERSION", "%d.%d.%d", r.GetCurrentMajor(), r.GetCurrentMinor(), r.GetCurrentBuild())
	add("COMMITTED_VERSION", "%d.%d.%d", r.GetCommittedMajor(), r.GetCommittedMinor(), r.GetCommittedBuild())
	add("LAUNCH_TCB", "0x%016x (%s)", r.GetLaunchTcb(), snpTCBFromVersion(r.GetLaunchTcb()))
	if r.GetVersion() >= 5 {
		add("LAUNCH_MIT_VECTOR", "0x%x", r.GetLaunchMitVector())
		add("CURRENT_MIT_VECTOR", "0x%x", r.GetCurrentMitVector())
	}
	add("SIGNATURE_R", "%x", reverse(ev.Report[0x2A0:0x2A0+72]))
	add("SIGNATURE_S", "%x", reverse(ev.Report[0x2E8:0x2E8+72]))
	return fl.describeSNPCerts(ev)
}

// describeProductLine names the SNP product line, from the report's CPUID or the VCEK.
func (fl *fieldList) describeProductLine(ev *attest.Evidence, r *spb.Report) {
	var vcek []byte
	if ev.Certs != nil {
		vcek = ev.Certs.VCEK
	}
	switch line := snpProductLine(r, vcek); line {
	case "":
		fl.add("PRODUCT_LINE", "unknown (a VERSION 2 report carries no CPUID, and no VCEK certificate names the product)")
	case ProductTurin:
		fl.add("PRODUCT_LINE", "%s (not supported by this build: go-sev-guest v0.15.0 cannot parse Turin VCEKs)", line)
	default:
		fl.add("PRODUCT_LINE", "%s", line)
	}
}

// describeSNPCerts lists the certificate table's size and each certificate carried.
func (fl *fieldList) describeSNPCerts(ev *attest.Evidence) error {
	if len(ev.CertTable) > 0 {
		table, err := attest.ParseCertTable(ev.CertTable)
		if err != nil {
			return err
		}
		fl.add("CERT_TABLE", "%d entries, %d bytes", len(table), len(ev.CertTable))
	}
	if c := ev.Certs; c != nil {
		for _, cert := range []struct {
			name string
			der  []byte
		}{{"VCEK", c.VCEK}, {"VLEK", c.VLEK}, {"ASK", c.ASK}, {"ARK", c.ARK}} {
			if len(cert.der) > 0 {
				fl.add("CERT_"+cert.name, "%s", certSummary(cert.der))
			}
		}
	}
	return nil
}

// FormatFields writes fields as "NAME: value" lines.
func FormatFields(fields []Field) string {
	var b strings.Builder
	for _, f := range fields {
		fmt.Fprintf(&b, "%s: %s\n", f.Name, f.Value)
	}
	return b.String()
}

func teeLabel(t attest.TEE) string {
	if t == attest.TEESim {
		return "sim (SIMULATED TEE: no hardware guarantee)"
	}
	return string(t)
}

func snpPolicyString(p uint64) string {
	pol, err := abi.ParseSnpPolicy(p)
	if err != nil {
		return "invalid: " + err.Error()
	}
	s := []string{fmt.Sprintf("ABI %d.%d", pol.ABIMajor, pol.ABIMinor)}
	for _, f := range []struct {
		on   bool
		name string
	}{{pol.SMT, "SMT"}, {pol.MigrateMA, "MIGRATE_MA"}, {pol.Debug, "DEBUG"}, {pol.SingleSocket, "SINGLE_SOCKET"}, {pol.CXLAllowed, "CXL_ALLOW"}, {pol.MemAES256XTS, "MEM_AES_256_XTS"}, {pol.RAPLDis, "RAPL_DIS"}, {pol.CipherTextHidingDRAM, "CIPHERTEXT_HIDING"}, {pol.PageSwapDisable, "PAGE_SWAP_DISABLE"}} {
		if f.on {
			s = append(s, f.name)
		}
	}
	return strings.Join(s, ", ")
}

func tdAttributesString(a uint64) string {
	var s []string
	for _, f := range []struct {
		bit  uint64
		name string
	}{{tdAttrDebug, "DEBUG"}, {tdAttrSeptVEDisable, "SEPT_VE_DISABLE"}, {tdAttrPKS, "PKS"}, {tdAttrPerfmon, "PERFMON"}} {
		if a&f.bit != 0 {
			s = append(s, f.name)
		}
	}
	if rest := a &^ tdAttrAllowed; rest != 0 {
		s = append(s, fmt.Sprintf("other 0x%x", rest))
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

func certSummary(der []byte) string {
	sum := sha256.Sum256(der)
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Sprintf("unparsable (%d bytes): %v", len(der), err)
	}
	return fmt.Sprintf("CN=%q issuer CN=%q serial %s valid %s..%s sha256 %s", c.Subject.CommonName, c.Issuer.CommonName,
		c.SerialNumber.Text(16), c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339), hex.EncodeToString(sum[:]))
}

func reverse(b []byte) []byte {
	out := make([]byte, len(b))
	for i := range b {
		out[len(b)-1-i] = b[i]
	}
	return out
}
