package client

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/attest/simwire"
)

// snpOffReportData is the REPORT_DATA field of an SNP report.
const snpOffReportData = 0x050

// simProvider is the guest side of the simulated TEE.
type simProvider struct {
	mu sync.Mutex // one request/response exchange at a time on the shared stream
	rw io.ReadWriter
}

// NewSimProvider returns the guest side of the simulated TEE, speaking the protocol of
// attest/internal/simwire over rw (in the guest, the port named attest.SimPortName).
func NewSimProvider(rw io.ReadWriter) attest.Provider { return &simProvider{rw: rw} }

func (p *simProvider) TEE() attest.TEE { return attest.TEESim }

// GetEvidence sends one request and reads one response. If rw supports deadlines (a net.Conn
// or an *os.File for a character device), ctx's deadline and cancellation interrupt the
// exchange; otherwise ctx is only checked before the exchange starts.
func (p *simProvider) GetEvidence(ctx context.Context, reportData [64]byte) (*attest.Evidence, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	stop := simwire.BindDeadline(ctx, p.rw)
	defer stop()

	if _, err := p.rw.Write(simwire.EncodeRequest(reportData)); err != nil {
		return nil, fmt.Errorf("sending simulated TEE report request: %w", simwire.CtxErrOr(ctx, err))
	}
	report, table, err := simwire.ReadResponse(p.rw)
	if err != nil {
		return nil, fmt.Errorf("reading simulated TEE response: %w", simwire.CtxErrOr(ctx, err))
	}
	if got := report[snpOffReportData : snpOffReportData+64]; !bytes.Equal(got, reportData[:]) {
		return nil, fmt.Errorf("%w: report REPORT_DATA is %x, expected the requested %x", attest.ErrSimProtocol, got, reportData[:])
	}
	ev := &attest.Evidence{TEE: attest.TEESim, Report: report}
	if len(table) > 0 {
		ev.CertTable = table
	}
	return ev, nil
}
