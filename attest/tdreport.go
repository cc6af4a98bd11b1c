package attest

import (
	"context"
	"fmt"
)

// TDREPORT_STRUCT layout (Intel TDX Module ABI specification, "TDREPORT_STRUCT"): a
// 256-byte REPORTMACSTRUCT, then TEE_TCB_INFO, then TDINFO at byte 512.
const (
	tdReportSize         = 1024 // go-tdx-guest linuxabi.TdReportSize
	tdReportOffType      = 0    // REPORTTYPE: TYPE, SUBTYPE, VERSION, reserved
	tdReportOffTDInfo    = 512
	tdReportOffMrConfig  = tdReportOffTDInfo + 8 + 8 + 48 // after ATTRIBUTES, XFAM, MRTD
	tdReportTypeTDX      = 0x81
	tdReportMaxVersion   = 1 // 0: TDX 1.0; 1: TDX 1.5 (SERVTD_HASH valid)
	tdReportMrConfigSize = 48
)

// LaunchDigester is a Provider that can read the launch-bound manifest digest from a
// source the host cannot forge, instead of from evidence the host relayed.
type LaunchDigester interface {
	// LaunchDigest reads the digest; probe is the REPORT_DATA of the report it asks for.
	LaunchDigest(ctx context.Context, probe [64]byte) ([32]byte, error)
}

// GuestLaunchDigest is the launch-bound manifest digest as the guest reads it: from the
// provider itself when it is a LaunchDigester (TDX: the TDREPORT), else from fresh evidence
// for probe (SNP: the report comes from the secure processor through the kernel's encrypted
// guest channel; sim: the simulated secure processor).
func GuestLaunchDigest(ctx context.Context, p Provider, probe [64]byte) ([32]byte, error) {
	if d, ok := p.(LaunchDigester); ok {
		return d.LaunchDigest(ctx, probe)
	}
	ev, err := p.GetEvidence(ctx, probe)
	if err != nil {
		return [32]byte{}, err
	}
	return LaunchDigest(ev)
}

// TDReportLaunchDigest extracts MRCONFIGID[0:32] from a TDREPORT_STRUCT, with the same
// rule as LaunchDigest: MRCONFIGID[32:48] must be zero.
func TDReportLaunchDigest(tdreport []byte) ([32]byte, error) {
	var d [32]byte
	if len(tdreport) != tdReportSize {
		return d, fmt.Errorf("%w: TDREPORT is %d bytes, expected %d", ErrMalformed, len(tdreport), tdReportSize)
	}
	if t, v := tdreport[tdReportOffType], tdreport[tdReportOffType+2]; t != tdReportTypeTDX || v > tdReportMaxVersion {
		return d, fmt.Errorf("%w: TDREPORT type 0x%02x version %d, expected type 0x%02x (TDX) version 0..%d", ErrMalformed, t, v, tdReportTypeTDX, tdReportMaxVersion)
	}
	mr := tdreport[tdReportOffMrConfig : tdReportOffMrConfig+tdReportMrConfigSize]
	if !allZero(mr[32:]) {
		return d, fmt.Errorf("%w: TDREPORT MRCONFIGID[32:48] is %x, expected 16 zero bytes", ErrMalformed, mr[32:])
	}
	copy(d[:], mr[:32])
	return d, nil
}
