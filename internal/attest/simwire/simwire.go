// Package simwire is the wire format of the simulated TEE, shared by its guest side
// (attest/client) and its host side (attest/simsp).
//
// The protocol runs over one byte stream between the guest and the host (in the guest, the
// virtio-serial port named attest.SimPortName). The guest asks, the host answers; there is
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
package simwire

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"time"
	"unicode"

	"github.com/cloche-dev/cloche/attest"
)

// Message framing.
const (
	ReqMagic = "CSIMREQ1"
	RspMagic = "CSIMRSP1"

	ReqSize    = 8 + 64
	RspHdrSize = 8 + 4 + 4

	// StatusOK and the error statuses a host may send.
	StatusOK         = 0
	StatusBadRequest = 1
	StatusInternal   = 2

	MaxErrorLen = 1024
	MaxBodyLen  = 4 + attest.SNPReportSize + 4 + attest.MaxCertTableSize

	// MaxRequests bounds how many reports one guest may ask for over one connection. The
	// guest needs one; a few more allow retries.
	MaxRequests = 64
)

// snpOffVersion is the VERSION field of an SNP report.
const snpOffVersion = 0x000

// EncodeRequest is one request for reportData.
func EncodeRequest(reportData [64]byte) []byte {
	req := make([]byte, 0, ReqSize)
	req = append(req, ReqMagic...)
	return append(req, reportData[:]...)
}

// ReadResponse reads and validates one host response. It is the only parser of host bytes
// on the guest side of the simulated TEE (fuzzed by attest/client FuzzSimResponse).
func ReadResponse(r io.Reader) (report, table []byte, err error) {
	var hdr [RspHdrSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, nil, fmt.Errorf("response header: %w", err)
	}
	if string(hdr[:8]) != RspMagic {
		return nil, nil, fmt.Errorf("%w: response magic is %q, expected %q", attest.ErrSimProtocol, hdr[:8], RspMagic)
	}
	status := binary.LittleEndian.Uint32(hdr[8:12])
	bodyLen := binary.LittleEndian.Uint32(hdr[12:16])
	if status != StatusOK {
		if bodyLen > MaxErrorLen {
			return nil, nil, fmt.Errorf("%w: host error status %d with a %d-byte message, limit %d", attest.ErrSimProtocol, status, bodyLen, MaxErrorLen)
		}
		msg := make([]byte, bodyLen)
		if _, err := io.ReadFull(r, msg); err != nil {
			return nil, nil, fmt.Errorf("response error message: %w", err)
		}
		return nil, nil, fmt.Errorf("%w: host answered status %d: %s", attest.ErrSimProtocol, status, Printable(msg))
	}
	if bodyLen > MaxBodyLen {
		return nil, nil, fmt.Errorf("%w: response body is %d bytes, limit %d", attest.ErrSimProtocol, bodyLen, MaxBodyLen)
	}
	if bodyLen < 4+attest.SNPReportSize+4 {
		return nil, nil, fmt.Errorf("%w: response body is %d bytes, at least %d expected", attest.ErrSimProtocol, bodyLen, 4+attest.SNPReportSize+4)
	}
	body := make([]byte, bodyLen)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, nil, fmt.Errorf("response body: %w", err)
	}
	reportLen := binary.LittleEndian.Uint32(body[0:4])
	if reportLen != attest.SNPReportSize {
		return nil, nil, fmt.Errorf("%w: report length is %d, expected %d", attest.ErrSimProtocol, reportLen, attest.SNPReportSize)
	}
	report = body[4 : 4+attest.SNPReportSize]
	rest := body[4+attest.SNPReportSize:]
	tableLen := binary.LittleEndian.Uint32(rest[0:4])
	if tableLen > attest.MaxCertTableSize {
		return nil, nil, fmt.Errorf("%w: certificate table length is %d, limit %d", attest.ErrSimProtocol, tableLen, attest.MaxCertTableSize)
	}
	if uint64(len(rest)-4) != uint64(tableLen) {
		return nil, nil, fmt.Errorf("%w: certificate table length is %d but %d body bytes remain", attest.ErrSimProtocol, tableLen, len(rest)-4)
	}
	table = rest[4:]
	if v := binary.LittleEndian.Uint32(report[snpOffVersion:]); v < 2 {
		return nil, nil, fmt.Errorf("%w: report VERSION is %d, expected at least 2", attest.ErrSimProtocol, v)
	}
	return report, table, nil
}

// WriteResponse writes one ok response.
func WriteResponse(w io.Writer, report, table []byte) error {
	bodyLen := 4 + len(report) + 4 + len(table)
	buf := make([]byte, 0, RspHdrSize+bodyLen)
	buf = append(buf, RspMagic...)
	buf = binary.LittleEndian.AppendUint32(buf, StatusOK)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(bodyLen))
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(report)))
	buf = append(buf, report...)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(table)))
	buf = append(buf, table...)
	_, err := w.Write(buf)
	return err
}

// WriteError writes one error response with a bounded message.
func WriteError(w io.Writer, status uint32, msg string) error {
	if len(msg) > MaxErrorLen {
		msg = msg[:MaxErrorLen]
	}
	buf := make([]byte, 0, RspHdrSize+len(msg))
	buf = append(buf, RspMagic...)
	buf = binary.LittleEndian.AppendUint32(buf, status)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(msg)))
	buf = append(buf, msg...)
	_, err := w.Write(buf)
	return err
}

// Printable keeps an untrusted message safe to log: printable runes only.
func Printable(b []byte) string {
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

// BindDeadline interrupts blocked I/O on rw (when rw supports deadlines) once ctx is done,
// by moving the deadline into the past. Only then: ctx's own deadline is not copied to rw, so
// that an interrupted call always finds ctx.Err() set and reports it. The returned function
// undoes the binding.
func BindDeadline(ctx context.Context, rw any) (stop func()) {
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

// CtxErrOr reports the context's error when it caused an I/O failure.
func CtxErrOr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%w)", cerr, err)
	}
	return err
}
