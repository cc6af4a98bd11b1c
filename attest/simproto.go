package attest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
	"unicode"
)

// The simulated TEE protocol runs over one byte stream between the guest and the host (in the
// guest, the virtio-serial port named SimPortName). The guest asks, the host answers; there is
// exactly one response per request, in order.
//
//	request  = "CSIMREQ1" (8 bytes) | REPORT_DATA (64 bytes)
//	response = "CSIMRSP1" (8 bytes) | u32le status | u32le bodyLen | body (bodyLen bytes)
//
// With status 0 (ok) the body is
//
//	u32le reportLen | report (reportLen = 1184) | u32le tableLen | cert table (GHCB format)
//
// and nothing else: the lengths must add up to bodyLen exactly. With any other status the
// body is a short UTF-8 error message from the host (at most maxSimErrorLen bytes).
//
// All integers are little-endian. The guest treats every length as hostile: bodyLen is capped
// before anything is allocated, reportLen must be exactly the SNP report size, tableLen is
// capped by MaxCertTableSize, and the report's REPORT_DATA must echo the request.
const SimPortName = "org.cloche.simtee.0"

const (
	simReqMagic = "CSIMREQ1"
	simRspMagic = "CSIMRSP1"

	simReqSize    = 8 + 64
	simRspHdrSize = 8 + 4 + 4

	// SimStatusOK and the error statuses a host may send.
	simStatusOK         = 0
	simStatusBadRequest = 1
	simStatusInternal   = 2

	maxSimErrorLen = 1024
	maxSimBodyLen  = 4 + snpReportSize + 4 + MaxCertTableSize
)

// ErrSimProtocol is wrapped by errors about malformed simulated-TEE messages.
var ErrSimProtocol = errors.New("simulated TEE protocol error")

// simProvider is the guest side of the simulated TEE.
type simProvider struct {
	mu sync.Mutex // one request/response exchange at a time on the shared stream
	rw io.ReadWriter
}

// NewSimProvider returns the guest side of the simulated TEE, speaking the protocol above
// over rw.
func NewSimProvider(rw io.ReadWriter) Provider { return &simProvider{rw: rw} }

func (p *simProvider) TEE() TEE { return TEESim }

// GetEvidence sends one request and reads one response. If rw supports deadlines (a net.Conn
// or an *os.File for a character device), ctx's deadline and cancellation interrupt the
// exchange; otherwise ctx is only checked before the exchange starts.
func (p *simProvider) GetEvidence(ctx context.Context, reportData [64]byte) (*Evidence, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	stop := bindDeadline(ctx, p.rw)
	defer stop()

	req := make([]byte, 0, simReqSize)
	req = append(req, simReqMagic...)
	req = append(req, reportData[:]...)
	if _, err := p.rw.Write(req); err != nil {
		return nil, fmt.Errorf("sending simulated TEE report request: %w", ctxErrOr(ctx, err))
	}
	report, table, err := readSimResponse(p.rw)
	if err != nil {
		return nil, fmt.Errorf("reading simulated TEE response: %w", ctxErrOr(ctx, err))
	}
	if got := report[snpOffReportData : snpOffReportData+64]; !bytes.Equal(got, reportData[:]) {
		return nil, fmt.Errorf("%w: report REPORT_DATA is %x, expected the requested %x", ErrSimProtocol, got, reportData[:])
	}
	ev := &Evidence{TEE: TEESim, Report: report}
	if len(table) > 0 {
		ev.CertTable = table
	}
	return ev, nil
}

// readSimResponse reads and validates one host response. It is the only parser of host bytes
// on the guest side of the simulated TEE (fuzzed by FuzzSimResponse).
func readSimResponse(r io.Reader) (report, table []byte, err error) {
	var hdr [simRspHdrSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, nil, fmt.Errorf("response header: %w", err)
	}
	if string(hdr[:8]) != simRspMagic {
		return nil, nil, fmt.Errorf("%w: response magic is %q, expected %q", ErrSimProtocol, hdr[:8], simRspMagic)
	}
	status := binary.LittleEndian.Uint32(hdr[8:12])
	bodyLen := binary.LittleEndian.Uint32(hdr[12:16])
	if status != simStatusOK {
		if bodyLen > maxSimErrorLen {
			return nil, nil, fmt.Errorf("%w: host error status %d with a %d-byte message, limit %d", ErrSimProtocol, status, bodyLen, maxSimErrorLen)
		}
		msg := make([]byte, bodyLen)
		if _, err := io.ReadFull(r, msg); err != nil {
			return nil, nil, fmt.Errorf("response error message: %w", err)
		}
		return nil, nil, fmt.Errorf("%w: host answered status %d: %s", ErrSimProtocol, status, printable(msg))
	}
	if bodyLen > maxSimBodyLen {
		return nil, nil, fmt.Errorf("%w: response body is %d bytes, limit %d", ErrSimProtocol, bodyLen, maxSimBodyLen)
	}
	if bodyLen < 4+snpReportSize+4 {
		return nil, nil, fmt.Errorf("%w: response body is %d bytes, at least %d expected", ErrSimProtocol, bodyLen, 4+snpReportSize+4)
	}
	body := make([]byte, bodyLen)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, nil, fmt.Errorf("response body: %w", err)
	}
	reportLen := binary.LittleEndian.Uint32(body[0:4])
	if reportLen != snpReportSize {
		return nil, nil, fmt.Errorf("%w: report length is %d, expected %d", ErrSimProtocol, reportLen, snpReportSize)
	}
	report = body[4 : 4+snpReportSize]
	rest := body[4+snpReportSize:]
	tableLen := binary.LittleEndian.Uint32(rest[0:4])
	if tableLen > MaxCertTableSize {
		return nil, nil, fmt.Errorf("%w: certificate table length is %d, limit %d", ErrSimProtocol, tableLen, MaxCertTableSize)
	}
	if uint64(len(rest)-4) != uint64(tableLen) {
		return nil, nil, fmt.Errorf("%w: certificate table length is %d but %d body bytes remain", ErrSimProtocol, tableLen, len(rest)-4)
	}
	table = rest[4:]
	if v := binary.LittleEndian.Uint32(report[snpOffVersion:]); v < 2 {
		return nil, nil, fmt.Errorf("%w: report VERSION is %d, expected at least 2", ErrSimProtocol, v)
	}
	return report, table, nil
}

// writeSimResponse writes one ok response.
func writeSimResponse(w io.Writer, report, table []byte) error {
	bodyLen := 4 + len(report) + 4 + len(table)
	buf := make([]byte, 0, simRspHdrSize+bodyLen)
	buf = append(buf, simRspMagic...)
	buf = binary.LittleEndian.AppendUint32(buf, simStatusOK)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(bodyLen))
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(report)))
	buf = append(buf, report...)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(table)))
	buf = append(buf, table...)
	_, err := w.Write(buf)
	return err
}

// writeSimError writes one error response with a bounded message.
func writeSimError(w io.Writer, status uint32, msg string) error {
	if len(msg) > maxSimErrorLen {
		msg = msg[:maxSimErrorLen]
	}
	buf := make([]byte, 0, simRspHdrSize+len(msg))
	buf = append(buf, simRspMagic...)
	buf = binary.LittleEndian.AppendUint32(buf, status)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(msg)))
	buf = append(buf, msg...)
	_, err := w.Write(buf)
	return err
}

// printable keeps an untrusted message safe to log: printable runes only.
func printable(b []byte) string {
	return string(bytes.Map(func(r rune) rune {
		if r == unicode.ReplacementChar || !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, b))
}

// deadliner is what net.Conn and *os.File offer to interrupt blocked I/O.
type deadliner interface {
	SetDeadline(t time.Time) error
}

// bindDeadline interrupts blocked I/O on rw (when rw supports deadlines) once ctx is done,
// by moving the deadline into the past. Only then: ctx's own deadline is not copied to rw, so
// that an interrupted call always finds ctx.Err() set and reports it. The returned function
// undoes the binding.
func bindDeadline(ctx context.Context, rw any) (stop func()) {
	d, ok := rw.(deadliner)
	if !ok {
		return func() {}
	}
	stopAfter := context.AfterFunc(ctx, func() { _ = d.SetDeadline(time.Unix(1, 0)) })
	return func() {
		stopAfter()
		_ = d.SetDeadline(time.Time{})
	}
}

// ctxErrOr reports the context's error when it caused an I/O failure.
func ctxErrOr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	return err
}
