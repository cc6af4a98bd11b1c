package client

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"

	tdxclient "github.com/google/go-tdx-guest/client"
	labi "github.com/google/go-tdx-guest/client/linuxabi"

	"github.com/cloche-dev/cloche/attest"
)

// tdReportOffData is REPORTMACSTRUCT.REPORTDATA (64 bytes) in a TDREPORT_STRUCT.
const tdReportOffData = 128

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
		return nil, fmt.Errorf("%w: TDREPORT REPORTDATA is %x, expected the requested %x", attest.ErrMalformed, req.TdReport[tdReportOffData:tdReportOffData+64], reportData[:])
	}
	return bytes.Clone(req.TdReport[:]), nil
}

// tdxReportDigester wraps a TDX Provider: evidence (quotes) from it, the launch digest from
// the TDREPORT of the device at path.
type tdxReportDigester struct {
	attest.Provider
	open func() (tdxclient.Device, error)
}

// WithTDReportLaunchDigest makes a TDX provider read the launch digest from the TDREPORT of
// devRoot/tdx_guest; other providers are returned as they are.
func WithTDReportLaunchDigest(p attest.Provider, devRoot string) attest.Provider {
	if p.TEE() != attest.TEETDX {
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
	return attest.TDReportLaunchDigest(r)
}
