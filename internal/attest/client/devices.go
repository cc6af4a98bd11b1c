package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	sevclient "github.com/google/go-sev-guest/client"

	"github.com/cloche-dev/cloche/attest"
)

// The guest's character devices, the fallback for kernels without configfs-tsm reports.
const (
	SEVGuestDevice = "sev-guest"
	TDXGuestDevice = "tdx_guest"
)

// ErrNoGuestDevice is returned by OpenGuestDeviceProvider when neither device exists.
var ErrNoGuestDevice = errors.New("no SEV-SNP or TDX guest device")

// sevDeviceProvider asks /dev/sev-guest for a plain (not extended) report. The extended
// request would let the host size a certificate buffer the guest then allocates (an Iago
// hazard), and upstream KVM hands out an empty table anyway: the host completes the chain.
type sevDeviceProvider struct {
	mu  sync.Mutex
	dev sevclient.Device
}

// NewSEVGuestProvider returns a provider over an open go-sev-guest device (the Linux
// /dev/sev-guest, or a fake in tests).
func NewSEVGuestProvider(dev sevclient.Device) attest.Provider { return &sevDeviceProvider{dev: dev} }

func (p *sevDeviceProvider) TEE() attest.TEE { return attest.TEESNP }

// GetEvidence issues SNP_GET_REPORT at VMPL 0. The ioctl cannot be interrupted; ctx is
// checked before and after. go-sev-guest's Linux device spaces requests 2 s apart.
func (p *sevDeviceProvider) GetEvidence(ctx context.Context, reportData [64]byte) (*attest.Evidence, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	raw, err := sevclient.GetRawReport(p.dev, reportData)
	if err != nil {
		return nil, fmt.Errorf("/dev/%s report: %w", SEVGuestDevice, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return checkDeviceEvidence(&attest.Evidence{TEE: attest.TEESNP, Report: bytes.Clone(raw)}, reportData, SEVGuestDevice)
}

// checkDeviceEvidence bounds what a device returned and checks it answers this request.
func checkDeviceEvidence(ev *attest.Evidence, reportData [64]byte, dev string) (*attest.Evidence, error) {
	if err := ev.CheckShape(); err != nil {
		return nil, fmt.Errorf("/dev/%s: %w", dev, err)
	}
	got, err := attest.ReportDataOf(ev.TEE, ev.Report)
	if err != nil {
		return nil, fmt.Errorf("/dev/%s: %w", dev, err)
	}
	if !bytes.Equal(got, reportData[:]) {
		return nil, fmt.Errorf("%w: /dev/%s %s REPORT_DATA is %x, expected the requested %x", attest.ErrMalformed, dev, ev.TEE, got, reportData[:])
	}
	return ev, nil
}

// OpenGuestDeviceProvider opens devRoot/sev-guest and returns a provider over it with the
// device to close when done. For TDX there is no device fallback: the guest kernel (6.12)
// quotes only through configfs-tsm, and /dev/tdx_guest's TDX_CMD_GET_QUOTE exists only in
// some downstream kernels; so a TDX guest without configfs-tsm gets an error saying so.
// (/dev/tdx_guest still serves the TDREPORT: WithTDReportLaunchDigest.)
func OpenGuestDeviceProvider(devRoot string) (attest.Provider, io.Closer, error) {
	sevPath := filepath.Join(devRoot, SEVGuestDevice)
	tdxPath := filepath.Join(devRoot, TDXGuestDevice)
	_, err := os.Stat(sevPath)
	if err == nil {
		d := &sevclient.LinuxDevice{}
		if err = d.Open(sevPath); err == nil {
			return NewSEVGuestProvider(d), d, nil
		}
	}
	if _, tdxErr := os.Stat(tdxPath); tdxErr == nil {
		return nil, nil, fmt.Errorf("%w: %s exists but TDX quotes need configfs-tsm (CONFIG_TSM_REPORTS and a mounted configfs): the kernel's TDX_CMD_GET_QUOTE ioctl is not in upstream Linux", ErrNoGuestDevice, tdxPath)
	}
	return nil, nil, fmt.Errorf("%w: %v; no %s either", ErrNoGuestDevice, err, tdxPath)
}
