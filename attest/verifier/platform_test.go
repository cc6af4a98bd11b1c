package verifier

import (
	"encoding/hex"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/attest/simtest"
)

// Acceptance with go-sev-guest's own fake AMD chain (not the simulated secure processor):
// provisional firmware, as cloud hosts run it, passes go-sev-guest's validation only because
// cloche permits it (PermitProvisionalFirmware) once REPORTED_TCB equals COMMITTED_TCB.
func TestVerifyFakeSNPProvisionalFirmware(t *testing.T) {
	// CURRENT_TCB one microcode step above COMMITTED_TCB; REPORTED_TCB (and the VCEK's TCB)
	// stay at the committed level.
	provisional := fakeSNPEvidence(t, func(r []byte) { r[0x038+7]++ })
	if _, err := Verify(provisional, fakeSNPOpts(t)); err != nil {
		t.Fatalf("provisional firmware on go-sev-guest's fake chain: %v", err)
	}
	// The current firmware build above the committed one (provisional too).
	if _, err := Verify(fakeSNPEvidence(t, func(r []byte) { r[0x1E8]++ }), fakeSNPOpts(t)); err != nil {
		t.Fatalf("provisional firmware build: %v", err)
	}
	// Committed above current is never a state a genuine host reports.
	_, err := Verify(fakeSNPEvidence(t, func(r []byte) { r[0x1E0+7]++ }), fakeSNPOpts(t))
	simtest.WantErr(t, err, attest.ErrFirmware, "COMMITTED_TCB")
}

// The platform allow-list on go-sev-guest's fake SNP chain (CHIP_ID) and on a real Intel TDX
// quote (PPID from its PCK certificate): the platform passes, another is refused, and
// case and surrounding space in the allow-list do not matter.
func TestVerifyAllowedPlatforms(t *testing.T) {
	snp := fakeSNPOpts(t)
	snp.Policy.AllowedPlatforms = []string{" " + strings.ToUpper(hex.EncodeToString(fakeHWID)) + " "}
	claims, err := Verify(fakeSNPEvidence(t, nil), snp)
	if err != nil {
		t.Fatalf("SNP CHIP_ID on the allow-list: %v", err)
	}
	if claims.PlatformID != hex.EncodeToString(fakeHWID) {
		t.Errorf("SNP platform id %q", claims.PlatformID)
	}
	snp.Policy.AllowedPlatforms = []string{strings.Repeat("00", 64)}
	_, err = Verify(fakeSNPEvidence(t, nil), snp)
	simtest.WantErr(t, err, attest.ErrPlatform, "CHIP_ID "+hex.EncodeToString(fakeHWID), "1 allowed platform")

	claims, err = Verify(realTDXEvidence(), tdxOpts())
	if err != nil {
		t.Fatal(err)
	}
	ppid := claims.PlatformID
	if len(ppid) != 32 {
		t.Fatalf("TDX PPID %q, want 16 bytes of hex from the PCK certificate", ppid)
	}
	tdx := tdxOpts()
	tdx.Policy.AllowedPlatforms = []string{strings.Repeat("ab", 16), strings.ToUpper(ppid)}
	if _, err := Verify(realTDXEvidence(), tdx); err != nil {
		t.Fatalf("TDX PPID on the allow-list: %v", err)
	}
	tdx.Policy.AllowedPlatforms = []string{strings.Repeat("ab", 16)}
	_, err = Verify(realTDXEvidence(), tdx)
	simtest.WantErr(t, err, attest.ErrPlatform, "PPID "+ppid)
}
