package verify

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/verifier"
)

func TestEvidenceCheckNames(t *testing.T) {
	for sentinel, want := range map[error]string{
		attest.ErrSimulatedNotAllowed: CheckSimulated,
		attest.ErrMeasurement:         CheckMeasurement,
		attest.ErrHostData:            CheckHostData,
		attest.ErrReportData:          CheckReportData,
		attest.ErrTCB:                 CheckTCB,
		attest.ErrRevoked:             CheckRevocation,
		attest.ErrCollateral:          CheckCollateral,
		attest.ErrPolicy:              CheckPolicy,
		attest.ErrSignature:           CheckEvidenceSignature,
		attest.ErrCertChain:           CheckChain,
		attest.ErrFirmware:            CheckFirmware,
		attest.ErrChipID:              CheckChipID,
		attest.ErrPlatform:            CheckPlatform,
		attest.ErrUnsupported:         CheckUnsupported,
		attest.ErrEventLog:            CheckEventLog,
		attest.ErrMalformed:           CheckEvidenceParse,
	} {
		if got := EvidenceCheck(fmt.Errorf("wrapped: %w", sentinel)); got != want {
			t.Errorf("%v: check %q, want %q", sentinel, got, want)
		}
	}
}

// `cloche verify` never accepts a debug guest, whatever the caller asked, and holds TDX
// MROWNER/MROWNERCONFIG to zero unless told otherwise.
func TestEvidencePolicyDefaults(t *testing.T) {
	p := evidencePolicy(verifier.Policy{AllowDebug: true})
	if p.AllowDebug {
		t.Error("debug allowed")
	}
	if !bytes.Equal(p.TDX.MrOwner, make([]byte, 48)) || !bytes.Equal(p.TDX.MrOwnerConfig, make([]byte, 48)) {
		t.Error("MROWNER/MROWNERCONFIG not zero by default")
	}
	owner := bytes.Repeat([]byte{1}, 48)
	p = evidencePolicy(verifier.Policy{TDX: verifier.TDXPolicy{MrOwner: owner}})
	if !bytes.Equal(p.TDX.MrOwner, owner) {
		t.Error("explicit MROWNER replaced")
	}
}
