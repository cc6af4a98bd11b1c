package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/report"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/attest/simwire"
)

// configfs-tsm provider names (the "provider" attribute of a report entry, newline-terminated).
const (
	tsmProviderSNP = "sev_guest"
	tsmProviderTDX = "tdx_guest"
)

// ErrNoTSMProvider is returned by NewTSMProvider when configfs-tsm has no supported provider.
var ErrNoTSMProvider = errors.New("no supported configfs-tsm report provider")

// tsmProvider asks the kernel's configfs-tsm report interface for evidence.
type tsmProvider struct {
	client   configfsi.Client
	tee      attest.TEE
	provider string
}

// NewTSMProvider returns the guest-side provider for real hardware. It reads the "provider"
// attribute of a fresh report entry to tell sev_guest (SEV-SNP) from tdx_guest (TDX). The
// client is normally linuxtsm.MakeClient(); tests pass a faketsm client.
func NewTSMProvider(client configfsi.Client) (attest.Provider, error) {
	if client == nil {
		return nil, fmt.Errorf("%w: nil configfs client", ErrNoTSMProvider)
	}
	entry, err := report.CreateOpenReport(client)
	if err != nil {
		return nil, fmt.Errorf("%w: creating a configfs-tsm report entry: %w", ErrNoTSMProvider, err)
	}
	// The kernel answers "provider" on a fresh entry, but faketsm only answers reads after a
	// write. Writing an inblob first suits both and is harmless: the kernel generates a
	// report only when outblob or auxblob is read.
	var zero [64]byte
	readErr := entry.WriteOption("inblob", zero[:])
	var raw []byte
	if readErr == nil {
		raw, readErr = entry.ReadOption("provider")
	}
	if err := entry.Destroy(); err != nil && readErr == nil {
		return nil, fmt.Errorf("removing the configfs-tsm probe entry: %w", err)
	}
	if readErr != nil {
		return nil, fmt.Errorf("%w: reading the provider attribute: %v", ErrNoTSMProvider, readErr)
	}
	name := strings.TrimSuffix(string(raw), "\n")
	switch name {
	case tsmProviderSNP:
		return &tsmProvider{client: client, tee: attest.TEESNP, provider: name}, nil
	case tsmProviderTDX:
		return &tsmProvider{client: client, tee: attest.TEETDX, provider: name}, nil
	default:
		return nil, fmt.Errorf("%w: provider is %q, expected %q or %q", ErrNoTSMProvider, simwire.Printable([]byte(name)), tsmProviderSNP, tsmProviderTDX)
	}
}

func (p *tsmProvider) TEE() attest.TEE { return p.tee }

// GetEvidence writes reportData as the inblob and reads the report (SNP, with the certificate
// table as auxblob) or the quote (TDX). The configfs write/read sequence does not block on
// the host for SNP; TDX quote generation may, but configfs offers no way to interrupt it, so
// ctx is checked before and after.
func (p *tsmProvider) GetEvidence(ctx context.Context, reportData [64]byte) (*attest.Evidence, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rd := reportData // report.Request keeps a reference to InBlob
	resp, err := report.Get(p.client, &report.Request{InBlob: rd[:], GetAuxBlob: p.tee == attest.TEESNP})
	if err != nil {
		return nil, fmt.Errorf("configfs-tsm %s report: %w", p.provider, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if got := strings.TrimSuffix(resp.Provider, "\n"); got != p.provider {
		return nil, fmt.Errorf("%w: configfs-tsm provider changed from %q to %q", attest.ErrMalformed, p.provider, simwire.Printable([]byte(got)))
	}
	ev := &attest.Evidence{TEE: p.tee, Report: resp.OutBlob}
	if p.tee == attest.TEESNP && len(resp.AuxBlob) > 0 {
		ev.CertTable = resp.AuxBlob
	}
	if err := ev.CheckShape(); err != nil {
		return nil, fmt.Errorf("configfs-tsm %s outblob: %w", p.provider, err)
	}
	got, err := attest.ReportDataOf(ev.TEE, ev.Report)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(got, reportData[:]) {
		return nil, fmt.Errorf("%w: %s REPORT_DATA is %x, expected the requested %x", attest.ErrMalformed, ev.TEE, got, reportData[:])
	}
	return ev, nil
}
