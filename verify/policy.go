package verify

import (
	"bytes"
	"errors"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/verifier"
)

// evidencePolicy is the policy `cloche verify` hands to verifier.Verify: the caller's, with
// debug never allowed (a debug guest proves nothing) and, where the caller left them open,
// TDX MROWNER and MROWNERCONFIG zero, as cloche's launches leave them.
func evidencePolicy(p verifier.Policy) verifier.Policy {
	p.AllowDebug = false
	if p.TDX.MrOwner == nil {
		p.TDX.MrOwner = make([]byte, 48)
	}
	if p.TDX.MrOwnerConfig == nil {
		p.TDX.MrOwnerConfig = make([]byte, 48)
	}
	p.TDX.MrOwner = bytes.Clone(p.TDX.MrOwner)
	p.TDX.MrOwnerConfig = bytes.Clone(p.TDX.MrOwnerConfig)
	return p
}

// evidenceChecks maps each attest sentinel to its check name.
var evidenceChecks = []struct {
	sentinel error
	check    string
}{
	{attest.ErrSimulatedNotAllowed, CheckSimulated},
	{attest.ErrMeasurement, CheckMeasurement},
	{attest.ErrHostData, CheckHostData},
	{attest.ErrReportData, CheckReportData},
	{attest.ErrTCB, CheckTCB},
	{attest.ErrFirmware, CheckFirmware},
	{attest.ErrChipID, CheckChipID},
	{attest.ErrRevoked, CheckRevocation},
	{attest.ErrCollateral, CheckCollateral},
	{attest.ErrQEIdentity, CheckQEIdentity},
	{attest.ErrPlatform, CheckPlatform},
	{attest.ErrEventLog, CheckEventLog},
	{attest.ErrUnsupported, CheckUnsupported},
	{attest.ErrSignature, CheckEvidenceSignature},
	{attest.ErrCertChain, CheckChain},
	{attest.ErrPolicy, CheckPolicy},
	{attest.ErrMalformed, CheckEvidenceParse},
}

// EvidenceCheck names the check an verifier.Verify error failed, as FAILED lines show it.
// `cloche evidence verify` uses the same names as `cloche verify`.
func EvidenceCheck(err error) string {
	for _, c := range evidenceChecks {
		if errors.Is(err, c.sentinel) {
			return c.check
		}
	}
	return CheckEvidenceParse
}
