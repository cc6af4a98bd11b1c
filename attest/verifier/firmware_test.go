package verifier

import (
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/attest/simtest"
)

// Cloud hosts run provisional firmware: CURRENT_TCB one microcode step above COMMITTED_TCB,
// REPORTED_TCB equal to COMMITTED_TCB. That is accepted; the other inconsistent states are
// "firmware state" failures, and a LAUNCH_TCB below the minimum a TCB failure.
func TestVerifyFirmwareState(t *testing.T) {
	sp, _ := simtest.SPs(t)
	provisional := signedVariant(t, sp, func(r []byte) { r[0x038+7]++ })
	if _, err := Verify(provisional, simOpts(t, sp)); err != nil {
		t.Fatalf("provisional firmware (CURRENT_TCB one microcode step above COMMITTED_TCB): %v", err)
	}
	provisionalBuild := signedVariant(t, sp, func(r []byte) { r[0x1E8]++ })
	if _, err := Verify(provisionalBuild, simOpts(t, sp)); err != nil {
		t.Fatalf("provisional firmware build: %v", err)
	}
	for name, c := range map[string]struct {
		edit func(r []byte)
		err  error
		want string
	}{
		"committed above current":       {func(r []byte) { r[0x1E0+7]++ }, attest.ErrFirmware, "COMMITTED_TCB"},
		"committed build above current": {func(r []byte) { r[0x1EC]++ }, attest.ErrFirmware, "committed firmware"},
		"provisional reporting current": {func(r []byte) { r[0x038+7]++; r[0x180+7]++ }, attest.ErrFirmware, "must report the committed TCB"},
		"launch TCB below the minimum":  {func(r []byte) { binary.LittleEndian.PutUint64(r[0x1F0:], 0) }, attest.ErrTCB, "LAUNCH_TCB"},
		"report version 2 relabelled":   {func(r []byte) { binary.LittleEndian.PutUint32(r, 2) }, attest.ErrMalformed, "VERSION"},
		"report version 5 (unlike sim)": {func(r []byte) { binary.LittleEndian.PutUint32(r, 5) }, attest.ErrMalformed, "VERSION is 5"},
		"Turin CPUID":                   {func(r []byte) { r[0x188] = 0x1A }, attest.ErrUnsupported, "Turin is not supported by this build, because"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Verify(signedVariant(t, sp, c.edit), simOpts(t, sp))
			simtest.WantErr(t, err, c.err, c.want)
		})
	}
}

func TestVerifyDefaultMinimumTCB(t *testing.T) {
	sp, _ := simtest.SPs(t)
	old := signedVariant(t, sp, func(r []byte) { r[0x180+7] = 100 }) // microcode 100 < Milan's 115
	_, err := Verify(old, simOpts(t, sp))
	simtest.WantErr(t, err, attest.ErrTCB, "microcode SPL is 100, minimum 115")
}

func TestVerifySimRootMustBeSelfSignedCA(t *testing.T) {
	sp, _ := simtest.SPs(t)
	for name, der := range map[string][]byte{"VCEK": sp.Chain().VCEK, "ASK": sp.Chain().ASK} {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		o := simOpts(t, sp)
		o.SimRoots = []*x509.Certificate{c}
		_, err = Verify(simtest.Evidence(t, sp), o)
		simtest.WantErr(t, err, attest.ErrCertChain, "simulated root")
		if err := CheckSimRoot(c); err == nil {
			t.Errorf("CheckSimRoot accepts the sim %s", name)
		}
	}
	if err := CheckSimRoot(sp.Root()); err != nil {
		t.Fatalf("CheckSimRoot(ARK): %v", err)
	}
}

func TestVerifyPlatformAllowList(t *testing.T) {
	sp, other := simtest.SPs(t)
	ev := simtest.Evidence(t, sp)
	o := simOpts(t, sp)
	o.Policy.AllowedPlatforms = []string{hex.EncodeToString(ev.Report[0x1A0:0x1E0])}
	claims, err := Verify(ev, o)
	if err != nil {
		t.Fatal(err)
	}
	if claims.PlatformID != o.Policy.AllowedPlatforms[0] {
		t.Errorf("platform id %s", claims.PlatformID)
	}
	o.Policy.AllowedPlatforms = []string{hex.EncodeToString(simtest.Evidence(t, other).Report[0x1A0:0x1E0])}
	_, err = Verify(ev, o)
	simtest.WantErr(t, err, attest.ErrPlatform, "CHIP_ID")
}

func TestParseEvidenceStrictKeys(t *testing.T) {
	sp, _ := simtest.SPs(t)
	good, err := simtest.Evidence(t, sp).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for name, in := range map[string]string{
		"tee twice":    `{"tee":"snp"` + string(good[len(`{"tee":"sim"`):len(good)-1]) + `,"tee":"sim"}`,
		"case variant": `{"TEE"` + string(good[len(`{"tee"`):]),
	} {
		if _, err := attest.ParseEvidence([]byte(in)); !errors.Is(err, attest.ErrMalformed) {
			t.Errorf("%s: ParseEvidence = %v, want ErrMalformed", name, err)
		}
	}
}
