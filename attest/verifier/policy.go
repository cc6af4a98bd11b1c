package verifier

import (
	"crypto/x509"
	"fmt"
	"strconv"
	"strings"

	"github.com/cloche-dev/cloche/attest"
)

// Policy is what a verifier demands of hardware evidence beyond a valid signature chain and
// the bindings. The zero value is the strict default: no debug guest, no migration agent,
// VMPL 0, any firmware TCB, production TDX module (SEAMATTRIBUTES and MRSIGNERSEAM zero),
// and no revocation check (Verify then returns a warning saying so).
type Policy struct {
	// AllowDebug accepts evidence from a debug-enabled guest (SNP POLICY.DEBUG, TDX
	// TDATTRIBUTES.DEBUG). For test samples only: a debug guest's memory is readable by the
	// host, so its evidence proves nothing. `cloche verify` never sets it.
	AllowDebug bool

	// SNPGuestPolicy, when set, is the exact POLICY value the SNP report must carry.
	SNPGuestPolicy *uint64
	// MinimumTCB, when set, is the component-wise minimum of the SNP REPORTED_TCB.
	MinimumTCB *SNPTCB

	// TDX holds the TDX-only expectations.
	TDX TDXPolicy

	// AMDCRL is AMD's CRL for the report's product line (signed by the ARK); when set, the
	// ASK must not be revoked by it and it must be current at the verification time.
	AMDCRL *x509.RevocationList
	// AllowedPlatforms, when non-empty, lists the platforms the evidence may come from, in
	// lowercase hex: SNP and sim the CHIP_ID (128 digits), TDX the PPID of the PCK
	// certificate (32 digits). A producer demands "built on our own fleet" with it.
	AllowedPlatforms []string
	// NoDefaultMinimumTCB turns off the embedded per-product-line minimum TCB
	// (DefaultMinimumTCB) that applies when MinimumTCB is nil.
	NoDefaultMinimumTCB bool

	// TDXCollateral is Intel's collateral (TCB info, QE identity and, optionally, the CRLs);
	// when set, the quote's TCB and QE are checked against it.
	TDXCollateral *TDXCollateral
}

// TDXPolicy are the TDX quote body expectations. Nil fields are not checked unless said.
type TDXPolicy struct {
	// MrOwner and MrOwnerConfig (48 bytes each) must match exactly when set. cloche's own
	// launches leave both zero.
	MrOwner       []byte
	MrOwnerConfig []byte
	// Xfam, when set, is the exact XFAM value (which CPU extended features the TD may use).
	Xfam *uint64
	// MrSignerSeam (48 bytes) is the signer of the TDX module; nil means "must be zero",
	// which is what Intel-signed modules carry.
	MrSignerSeam []byte
	// SeamAttributes, nil means "must be zero": a non-zero value marks a debug TDX module.
	SeamAttributes *uint64
	// MinimumTeeTcbSvn (16 bytes), when set, is the component-wise minimum TEE_TCB_SVN.
	MinimumTeeTcbSvn []byte
	// RTMR are the expected RTMR0..RTMR2 (48 bytes each; nil = not checked): the firmware
	// configuration, the kernel, the command line and initrd. MRTD (the measurement) covers
	// the firmware alone, so a verifier that checks only MRTD accepts any kernel; Verify
	// warns when a measurement was checked but an RTMR was not.
	RTMR [3][]byte
}

// SNPTCB is an SEV-SNP TCB_VERSION by component (Milan/Genoa layout): the security patch
// levels of the PSP bootloader, the PSP OS (TEE), the SNP firmware and the microcode.
type SNPTCB struct {
	Bootloader, TEE, SNP, Microcode uint8
}

// snpTCBComponents are the names used by ParseSNPTCB and in error messages.
var snpTCBComponents = []string{"bootloader", "tee", "snp", "microcode"}

func (t SNPTCB) parts() []uint8 { return []uint8{t.Bootloader, t.TEE, t.SNP, t.Microcode} }

// String formats t as ParseSNPTCB reads it.
func (t SNPTCB) String() string {
	p := t.parts()
	s := make([]string, len(p))
	for i, v := range p {
		s[i] = fmt.Sprintf("%s=%d", snpTCBComponents[i], v)
	}
	return strings.Join(s, ",")
}

// snpTCBFromVersion splits a TCB_VERSION (byte 0 bootloader, 1 TEE, 6 SNP, 7 microcode).
func snpTCBFromVersion(v uint64) SNPTCB {
	return SNPTCB{Bootloader: uint8(v), TEE: uint8(v >> 8), SNP: uint8(v >> 48), Microcode: uint8(v >> 56)}
}

// ParseSNPTCB reads "bootloader=N,tee=N,snp=N,microcode=N". Components may be left out
// (minimum 0) but not repeated; each value is 0..255.
func ParseSNPTCB(s string) (SNPTCB, error) {
	var t SNPTCB
	seen := map[string]bool{}
	dst := map[string]*uint8{"bootloader": &t.Bootloader, "tee": &t.TEE, "snp": &t.SNP, "microcode": &t.Microcode}
	for _, kv := range strings.Split(s, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		k = strings.ToLower(strings.TrimSpace(k))
		p, known := dst[k]
		if !ok || !known {
			return t, fmt.Errorf("TCB component %q: expected bootloader=N, tee=N, snp=N or microcode=N", kv)
		}
		if seen[k] {
			return t, fmt.Errorf("TCB component %q given twice", k)
		}
		seen[k] = true
		n, err := strconv.ParseUint(strings.TrimSpace(v), 0, 8)
		if err != nil {
			return t, fmt.Errorf("TCB component %s=%q: expected a number 0..255", k, v)
		}
		*p = uint8(n)
	}
	if len(seen) == 0 {
		return t, fmt.Errorf("empty minimum TCB %q: expected bootloader=N,tee=N,snp=N,microcode=N", s)
	}
	return t, nil
}

// checkMinimumTCB names the first component of got below min and by how much.
func checkMinimumTCB(field string, got, min SNPTCB) error {
	g, m := got.parts(), min.parts()
	for i := range g {
		if g[i] < m[i] {
			return fmt.Errorf("%w: %s %s SPL is %d, minimum %d (short by %d); %s is %s, minimum %s",
				attest.ErrTCB, field, snpTCBComponents[i], g[i], m[i], m[i]-g[i], field, got, min)
		}
	}
	return nil
}

// tdxTCBComponentName names TEE_TCB_SVN byte i as Intel's TCB info names its
// tdxtcbcomponents: bytes 0 and 1 belong to the TDX module (its SVN and major version),
// byte 2 to the late microcode update; the others are reserved.
func tdxTCBComponentName(i int) string {
	switch i {
	case 0:
		return "TEE_TCB_SVN[0] (TDX module SVN)"
	case 1:
		return "TEE_TCB_SVN[1] (TDX module major version)"
	case 2:
		return "TEE_TCB_SVN[2] (TDX late microcode update SVN)"
	default:
		return fmt.Sprintf("TEE_TCB_SVN[%d]", i)
	}
}

// checkMinimumTeeTcbSvn compares TEE_TCB_SVN component-wise.
func checkMinimumTeeTcbSvn(got, min []byte) error {
	if len(min) != len(got) {
		return fmt.Errorf("%w: minimum TEE_TCB_SVN is %d bytes, must be %d", attest.ErrTCB, len(min), len(got))
	}
	for i := range got {
		if got[i] < min[i] {
			return fmt.Errorf("%w: %s is %d, minimum %d (short by %d); TEE_TCB_SVN is %x, minimum %x",
				attest.ErrTCB, tdxTCBComponentName(i), got[i], min[i], min[i]-got[i], got, min)
		}
	}
	return nil
}
