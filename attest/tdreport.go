package attest

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"

	tdxclient "github.com/google/go-tdx-guest/client"
	labi "github.com/google/go-tdx-guest/client/linuxabi"
)

// TDREPORT_STRUCT layout (Intel TDX Module ABI specification, "TDREPORT_STRUCT"): a
// 256-byte REPORTMACSTRUCT, then TEE_TCB_INFO, then TDINFO at byte 512.
const (
	tdReportSize         = labi.TdReportSize // 1024
	tdReportOffType      = 0                 // REPORTTYPE: TYPE, SUBTYPE, VERSION, reserved
	tdReportOffData      = 128               // REPORTMACSTRUCT.REPORTDATA, 64 bytes
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

// ReadTDReport asks the TDX module, through the tdx_guest driver (TDX_CMD_GET_REPORT0,
// which every kernel with the driver implements), for a TDREPORT with reportData.
//
// A TD quote reaches the guest through the host's quote generation service, so a host can
// hand the guest any quote it likes; the TDREPORT comes from the TDX module (TDG.MR.REPORT)
// with no host in between, which is why the guest reads its MRCONFIGID from here.
func ReadTDReport(dev tdxclient.Device, reportData [64]byte) ([]byte, error) {
	req := labi.TdxReportReq{ReportData: reportData}
	result, err := dev.Ioctl(labi.IocTdxGetReport, &req)
	if err != nil {
		return nil, fmt.Errorf("TDX_CMD_GET_REPORT0: %w", err)
	}
	if result != uintptr(labi.TdxAttestSuccess) {
		return nil, fmt.Errorf("TDX_CMD_GET_REPORT0: result %d", result)
	}
	if !bytes.Equal(req.TdReport[tdReportOffData:tdReportOffData+64], reportData[:]) {
		return nil, fmt.Errorf("%w: TDREPORT REPORTDATA is %x, expected the requested %x", ErrMalformed, req.TdReport[tdReportOffData:tdReportOffData+64], reportData[:])
	}
	return bytes.Clone(req.TdReport[:]), nil
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

// tdxReportDigester wraps a TDX Provider: evidence (quotes) from it, the launch digest from
// the TDREPORT of the device at path.
type tdxReportDigester struct {
	Provider
	open func() (tdxclient.Device, error)
}

// WithTDReportLaunchDigest makes a TDX provider read the launch digest from the TDREPORT of
// devRoot/tdx_guest; other providers are returned as they are.
func WithTDReportLaunchDigest(p Provider, devRoot string) Provider {
	if p.TEE() != TEETDX {
		return p
	}
	path := filepath.Join(devRoot, TDXGuestDevice)
	return &tdxReportDigester{Provider: p, open: func() (tdxclient.Device, error) {
		d := &tdxclient.LinuxDevice{}
		if err := d.Open(path); err != nil {
			return nil, fmt.Errorf("opening %s for the TDREPORT: %w", path, err)
		}
		return d, nil
	}}
}

func (t *tdxReportDigester) LaunchDigest(ctx context.Context, probe [64]byte) ([32]byte, error) {
	if err := ctx.Err(); err != nil {
		return [32]byte{}, err
	}
	dev, err := t.open()
	if err != nil {
		return [32]byte{}, err
	}
	defer dev.Close()
	r, err := ReadTDReport(dev, probe)
	if err != nil {
		return [32]byte{}, err
	}
	return TDReportLaunchDigest(r)
}
