package attest

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// TDXQuote is a TDX quote's header and TD quote body, read by cloche's own layout parser
// (offsets from Intel's DCAP quote format; all integers little-endian). go-tdx-guest parses
// the quote again for the cryptography; this parser only reads fields, strictly.
type TDXQuote struct {
	Version            uint16
	AttestationKeyType uint16
	TeeType            uint32
	PceSvn, QeSvn      uint16
	QeVendorID         []byte // 16
	UserData           []byte // 20
	BodyType           uint16 // v5 only: 2 = TDX 1.0, 3 = TDX 1.5
	TeeTcbSvn          []byte // 16
	MrSeam             []byte // 48
	MrSignerSeam       []byte
	SeamAttributes     uint64
	TdAttributes       uint64
	Xfam               uint64
	MrTd               []byte
	MrConfigID         []byte
	MrOwner            []byte
	MrOwnerConfig      []byte
	Rtmrs              [4][]byte
	ReportData         []byte // 64
	TeeTcbSvn2         []byte // TDX 1.5 body only
	MrServiceTd        []byte // TDX 1.5 body only
	SignedDataSize     uint32
	// Len is the quote's own length (header, body, signed data); Trailing counts the bytes
	// after it, which nothing signs (go-tdx-guest's sample quote has some).
	Len, Trailing int
}

// TD quote body offsets, relative to the body start.
const (
	tdxBodyOffTeeTcbSvn    = 0x000
	tdxBodyOffMrSeam       = 0x010
	tdxBodyOffMrSignerSeam = 0x040
	tdxBodyOffSeamAttr     = 0x070
	tdxBodyOffTdAttr       = 0x078
	tdxBodyOffXfam         = 0x080
	tdxBodyOffMrTd         = 0x088
	tdxBodyOffMrOwner      = 0x0E8
	tdxBodyOffMrOwnerCfg   = 0x118
	tdxBodyOffRtmr0        = 0x148
	tdxBodyOffTeeTcbSvn2   = 0x248
	tdxBodyOffMrServiceTd  = 0x258
	// tdxAttestKeyECDSAP256 is the only attestation key type DCAP quotes use.
	tdxAttestKeyECDSAP256 = 2
	// tdxMinSignedData is the ECDSA signature and attestation key (64 + 64), the
	// certification data header (6), the QE report (384), its signature (64), the QE auth
	// data length (2) and the next certification data header (6).
	tdxMinSignedData = 64 + 64 + 6 + 384 + 64 + 2 + 6
)

// ParseTDXQuote reads a v4 or v5 quote: header, body, u32 signed-data size and that many
// bytes. Bytes after that are counted in Trailing; callers must not use them.
func ParseTDXQuote(q []byte) (*TDXQuote, error) {
	body, err := tdxQuoteBody(q)
	if err != nil {
		return nil, err
	}
	t := &TDXQuote{
		Version:            binary.LittleEndian.Uint16(q[0:2]),
		AttestationKeyType: binary.LittleEndian.Uint16(q[2:4]),
		TeeType:            binary.LittleEndian.Uint32(q[4:8]),
		PceSvn:             binary.LittleEndian.Uint16(q[8:10]),
		QeSvn:              binary.LittleEndian.Uint16(q[10:12]),
		QeVendorID:         q[12:28],
		UserData:           q[28:48],
	}
	if t.AttestationKeyType != tdxAttestKeyECDSAP256 {
		return nil, fmt.Errorf("%w: tdx quote attestation key type is %d, expected %d (ECDSA P-256)", ErrMalformed, t.AttestationKeyType, tdxAttestKeyECDSAP256)
	}
	bodyStart := tdxHeaderSize
	if t.Version == 5 {
		t.BodyType = binary.LittleEndian.Uint16(q[tdxHeaderSize:])
		bodyStart += tdxV5BodyDescSize
	}
	f := func(off, n int) []byte { return body[off : off+n] }
	t.TeeTcbSvn = f(tdxBodyOffTeeTcbSvn, 16)
	t.MrSeam = f(tdxBodyOffMrSeam, 48)
	t.MrSignerSeam = f(tdxBodyOffMrSignerSeam, 48)
	t.SeamAttributes = binary.LittleEndian.Uint64(f(tdxBodyOffSeamAttr, 8))
	t.TdAttributes = binary.LittleEndian.Uint64(f(tdxBodyOffTdAttr, 8))
	t.Xfam = binary.LittleEndian.Uint64(f(tdxBodyOffXfam, 8))
	t.MrTd = f(tdxBodyOffMrTd, 48)
	t.MrConfigID = f(tdxBodyOffMrConfig, 48)
	t.MrOwner = f(tdxBodyOffMrOwner, 48)
	t.MrOwnerConfig = f(tdxBodyOffMrOwnerCfg, 48)
	for i := range t.Rtmrs {
		t.Rtmrs[i] = f(tdxBodyOffRtmr0+48*i, 48)
	}
	t.ReportData = f(tdxBodyOffReportDat, 64)
	if len(body) == tdxBodySizeV15 {
		t.TeeTcbSvn2 = f(tdxBodyOffTeeTcbSvn2, 16)
		t.MrServiceTd = f(tdxBodyOffMrServiceTd, 48)
	}
	end := bodyStart + len(body)
	if len(q) < end+4 {
		return nil, fmt.Errorf("%w: tdx quote is %d bytes, ends before its signed-data size field at %d", ErrMalformed, len(q), end)
	}
	t.SignedDataSize = binary.LittleEndian.Uint32(q[end:])
	if t.SignedDataSize < tdxMinSignedData {
		return nil, fmt.Errorf("%w: tdx quote signed data is %d bytes, expected at least %d", ErrMalformed, t.SignedDataSize, tdxMinSignedData)
	}
	want := uint64(end) + 4 + uint64(t.SignedDataSize)
	if uint64(len(q)) < want {
		return nil, fmt.Errorf("%w: tdx quote is %d bytes, shorter than the %d its signed-data size says", ErrMalformed, len(q), want)
	}
	t.Len = int(want)
	t.Trailing = len(q) - t.Len
	if err := checkTDXSignedData(q[end+4 : t.Len]); err != nil {
		return nil, err
	}
	return t, nil
}

// Signed data layout (ECDSA-256 quote v4 auth data), offsets from its start.
const (
	tdxSDCertType    = 128 // u16, 6 = QE report certification data
	tdxSDCertSize    = 130 // u32
	tdxSDQEAuthSize  = 582 // u16, after the QE report (384) and its signature (64)
	tdxSDQEAuthData  = 584
	tdxCertTypeQE    = 6
	tdxCertTypePCK   = 5 // PEM PCK leaf || intermediate || root
	tdxMaxPCKChain   = 32 << 10
	tdxCertHeaderLen = 6
)

// checkTDXSignedData bounds every size inside the signed data before go-tdx-guest parses it:
// its parser slices by these host-controlled sizes without checking them, and panics on a
// QE auth data size past the end (found by FuzzEvidenceFile).
func checkTDXSignedData(sd []byte) error {
	if len(sd) < tdxMinSignedData {
		return fmt.Errorf("%w: tdx quote signed data is %d bytes, expected at least %d", ErrMalformed, len(sd), tdxMinSignedData)
	}
	if ct := binary.LittleEndian.Uint16(sd[tdxSDCertType:]); ct != tdxCertTypeQE {
		return fmt.Errorf("%w: tdx quote certification data type is %d, expected %d (QE report certification data)", ErrMalformed, ct, tdxCertTypeQE)
	}
	if cs := uint64(binary.LittleEndian.Uint32(sd[tdxSDCertSize:])); cs != uint64(len(sd)-tdxSDCertSize-4) {
		return fmt.Errorf("%w: tdx quote certification data size is %d, the signed data leaves %d", ErrMalformed, cs, len(sd)-tdxSDCertSize-4)
	}
	auth := int(binary.LittleEndian.Uint16(sd[tdxSDQEAuthSize:]))
	pck := tdxSDQEAuthData + auth
	if pck+tdxCertHeaderLen > len(sd) {
		return fmt.Errorf("%w: tdx quote QE auth data size %d runs past the signed data", ErrMalformed, auth)
	}
	if ct := binary.LittleEndian.Uint16(sd[pck:]); ct != tdxCertTypePCK {
		return fmt.Errorf("%w: tdx quote PCK certification data type is %d, expected %d (PEM certificate chain)", ErrMalformed, ct, tdxCertTypePCK)
	}
	ps := uint64(binary.LittleEndian.Uint32(sd[pck+2:]))
	if ps > tdxMaxPCKChain || uint64(pck+tdxCertHeaderLen)+ps != uint64(len(sd)) {
		return fmt.Errorf("%w: tdx quote PCK chain size is %d, the signed data leaves %d", ErrMalformed, ps, len(sd)-pck-tdxCertHeaderLen)
	}
	return nil
}

// LaunchRegisters is MRTD || RTMR0 || RTMR1 || RTMR2 (192 bytes), the long form of a TDX
// reference value. MRTD covers the firmware alone; RTMR0 the firmware configuration (TD
// HOB, ACPI tables), RTMR1 the kernel, RTMR2 the command line and initrd. RTMR3 is left to
// the running guest.
func (t *TDXQuote) LaunchRegisters() []byte {
	return bytes.Join([][]byte{t.MrTd, t.Rtmrs[0], t.Rtmrs[1], t.Rtmrs[2]}, nil)
}
