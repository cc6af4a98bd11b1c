package verify

import (
	"bytes"
	"errors"

	"github.com/cloche-dev/cloche/attest"
)

// evidencePolicy is the policy `cloche verify` hands to attest.Verify: the caller's, with
// debug never allowed (a debug guest proves nothing) and, where the caller left them open,
// TDX MROWNER and MROWNERCONFIG zero, as cloche's launches leave them.
func evidencePolicy(p attest.Policy) attest.Policy {
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

// EvidenceCheck names the check an attest.Verify error failed, as FAILED lines show it.
// `cloche evidence verify` uses the same names as `cloche verify`.
func EvidenceCheck(err error) string {
	switch {
	case errors.Is(err, attest.ErrSimulatedNotAllowed):
		return CheckSimulated
	case errors.Is(err, attest.ErrMeasurement):
		return CheckMeasurement
	case errors.Is(err, attest.ErrHostData):
		return CheckHostData
	case errors.Is(err, attest.ErrReportData):
		return CheckReportData
	case errors.Is(err, attest.ErrTCB):
		return CheckTCB
	case errors.Is(err, attest.ErrRevoked):
		return CheckRevocation
	case errors.Is(err, attest.ErrCollateral):
		return CheckCollateral
	}
	return CheckEvidence
}
