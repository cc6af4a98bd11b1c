package attest

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
	tdxclient "github.com/google/go-tdx-guest/client"
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
func NewSEVGuestProvider(dev sevclient.Device) Provider { return &sevDeviceProvider{dev: dev} }

func (p *sevDeviceProvider) TEE() TEE { return TEESNP }

// GetEvidence issues SNP_GET_REPORT at VMPL 0. The ioctl cannot be interrupted; ctx is
// checked before and after. go-sev-guest's Linux device spaces requests 2 s apart.
func (p *sevDeviceProvider) GetEvidence(ctx context.Context, reportData [64]byte) (*Evidence, error) {
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
	return checkDeviceEvidence(&Evidence{TEE: TEESNP, Report: bytes.Clone(raw)}, reportData, SEVGuestDevice)
}

// tdxDeviceProvider asks /dev/tdx_guest for a TD report and has it turned into a quote
// (TDX_CMD_GET_QUOTE). Only older, downstream kernels offer that ioctl; upstream ones quote
// through configfs-tsm, which the guest tries first.
type tdxDeviceProvider struct {
	mu  sync.Mutex
	dev tdxclient.Device
}

// NewTDXGuestProvider returns a provider over an open go-tdx-guest device.
func NewTDXGuestProvider(dev tdxclient.Device) Provider { return &tdxDeviceProvider{dev: dev} }

func (p *tdxDeviceProvider) TEE() TEE { return TEETDX }

// GetEvidence gets a quote for reportData. The quote generation goes through the host's
// quoting service and may block; the ioctl cannot be interrupted, so ctx is checked before
// and after.
func (p *tdxDeviceProvider) GetEvidence(ctx context.Context, reportData [64]byte) (*Evidence, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	raw, err := tdxclient.GetRawQuote(p.dev, reportData)
	if err != nil {
		return nil, fmt.Errorf("/dev/%s quote: %w", TDXGuestDevice, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return checkDeviceEvidence(&Evidence{TEE: TEETDX, Report: bytes.Clone(raw)}, reportData, TDXGuestDevice)
}

// checkDeviceEvidence bounds what a device returned and checks it answers this request.
func checkDeviceEvidence(ev *Evidence, reportData [64]byte, dev string) (*Evidence, error) {
	if err := ev.checkShape(); err != nil {
		return nil, fmt.Errorf("/dev/%s: %w", dev, err)
	}
	got, err := reportDataOf(ev.TEE, ev.Report)
	if err != nil {
		return nil, fmt.Errorf("/dev/%s: %w", dev, err)
	}
	if !bytes.Equal(got, reportData[:]) {
		return nil, fmt.Errorf("%w: /dev/%s %s REPORT_DATA is %x, expected the requested %x", ErrMalformed, dev, ev.TEE, got, reportData[:])
	}
	return ev, nil
}

// OpenGuestDeviceProvider opens devRoot/sev-guest, else devRoot/tdx_guest, and returns a
// provider over it with the device to close when done.
func OpenGuestDeviceProvider(devRoot string) (Provider, io.Closer, error) {
	sevPath := filepath.Join(devRoot, SEVGuestDevice)
	tdxPath := filepath.Join(devRoot, TDXGuestDevice)
	var errs []error
	if _, err := os.Stat(sevPath); err == nil {
		d := &sevclient.LinuxDevice{}
		if err := d.Open(sevPath); err == nil {
			return NewSEVGuestProvider(d), d, nil
		} else {
			errs = append(errs, err)
		}
	} else {
		errs = append(errs, err)
	}
	if _, err := os.Stat(tdxPath); err == nil {
		d := &tdxclient.LinuxDevice{}
		if err := d.Open(tdxPath); err == nil {
			return NewTDXGuestProvider(d), d, nil
		} else {
			errs = append(errs, err)
		}
	} else {
		errs = append(errs, err)
	}
	return nil, nil, fmt.Errorf("%w: %v", ErrNoGuestDevice, errors.Join(errs...))
}
