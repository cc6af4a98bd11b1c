package attest

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/google/uuid"
)

// The SNP extended-report certificate table (GHCB specification, MSG_REPORT_REQ): a list of
// 24-byte entries {GUID (16 bytes, in the byte order of the GUID string), u32le offset, u32le
// length} ended by an all-zero entry, followed by the certificates; offsets count from the
// start of the table. go-sev-guest's own parser can be made to panic by an offset+length that
// overflows 32 bits, so cloche parses the host-provided table itself, with 64-bit bounds.

const (
	certTableEntrySize  = 24
	maxCertTableEntries = 32
)

// The GUIDs of the certificate table entries (AMD's GHCB specification; go-sev-guest's
// ARKGUID and so on).
const (
	ARKGUID  = "c0b406a4-a803-4952-9743-3fb6014cd0ae"
	ASKGUID  = "4ab7b379-bbac-4fe4-a02f-05aef327c782"
	VCEKGUID = "63da758d-e664-4564-adc5-f4b93be8accd"
	VLEKGUID = "a8074bc2-a25a-483e-aae6-39c045a0b8a1"
)

// CertTable maps a GUID string to its certificate bytes.
type CertTable map[string][]byte

// ParseCertTable parses a GHCB certificate table strictly. An empty table is valid.
func ParseCertTable(t []byte) (CertTable, error) {
	out := CertTable{}
	if len(t) == 0 {
		return out, nil
	}
	if len(t) > MaxCertTableSize {
		return nil, fmt.Errorf("%w: certificate table is %d bytes, limit %d", ErrMalformed, len(t), MaxCertTableSize)
	}
	type entry struct {
		guid        string
		off, length uint64
	}
	var entries []entry
	for i := 0; ; i++ {
		start := i * certTableEntrySize
		if start+certTableEntrySize > len(t) {
			return nil, fmt.Errorf("%w: certificate table has no terminating zero entry within %d bytes", ErrMalformed, len(t))
		}
		if i > maxCertTableEntries {
			return nil, fmt.Errorf("%w: certificate table has more than %d entries", ErrMalformed, maxCertTableEntries)
		}
		e := t[start : start+certTableEntrySize]
		if allZero(e) {
			break
		}
		g, err := uuid.FromBytes(e[:16])
		if err != nil {
			return nil, fmt.Errorf("%w: certificate table entry %d GUID: %w", ErrMalformed, i, err)
		}
		entries = append(entries, entry{
			guid:   g.String(),
			off:    uint64(binary.LittleEndian.Uint32(e[16:20])),
			length: uint64(binary.LittleEndian.Uint32(e[20:24])),
		})
	}
	headerLen := uint64(len(entries)+1) * certTableEntrySize
	for i, e := range entries {
		if e.off < headerLen || e.off+e.length > uint64(len(t)) {
			return nil, fmt.Errorf("%w: certificate table entry %d (%s) covers bytes %d..%d, outside %d..%d",
				ErrMalformed, i, e.guid, e.off, e.off+e.length, headerLen, len(t))
		}
		if _, dup := out[e.guid]; dup {
			return nil, fmt.Errorf("%w: certificate table lists GUID %s twice", ErrMalformed, e.guid)
		}
		out[e.guid] = bytes.Clone(t[e.off : e.off+e.length])
	}
	return out, nil
}

// SIGNER_INFO (report offset 0x48): SIGNING_KEY in bits 2..4, bits 5..31 reserved (must be
// zero); SIGNING_KEY 0 is the VCEK, 1 a VLEK, 7 none, 2..6 reserved (SEV-SNP ABI
// specification, ATTESTATION_REPORT; go-sev-guest's abi.ParseSignerInfo).
const (
	snpOffSignerInfo = 0x048
	snpSignerVCEK    = 0
	snpSignerVLEK    = 1
	snpSignerNone    = 7
)

// snpSigningKey returns which key signed an SNP report (of SNPReportSize bytes) according
// to SIGNER_INFO.
func snpSigningKey(report []byte) (uint32, error) {
	info := binary.LittleEndian.Uint32(report[snpOffSignerInfo:])
	if info>>5 != 0 {
		return 0, fmt.Errorf("%w: SIGNER_INFO 0x%x has reserved bits 5..31 set", ErrMalformed, info)
	}
	key := (info >> 2) & 7
	if key > snpSignerVLEK && key < snpSignerNone {
		return 0, fmt.Errorf("%w: SIGNER_INFO: signing key values 2-6 are reserved, got %d", ErrMalformed, key)
	}
	return key, nil
}

// CompleteSNPFromCertTable fills ev.Certs from the certificate table the guest received with
// its extended report, keeping any certificate already present. It fails when the key that
// signed the report (VCEK or VLEK, from SIGNER_INFO) is in neither place: fetching a VCEK from
// AMD's key distribution service is not implemented yet, and a VLEK is never fetchable.
func CompleteSNPFromCertTable(ev *Evidence) error {
	if ev == nil {
		return fmt.Errorf("%w: nil evidence", ErrMalformed)
	}
	if ev.TEE != TEESNP {
		return fmt.Errorf("%w: CompleteSNPFromCertTable needs %q evidence, got %q", ErrUnsupported, TEESNP, ev.TEE)
	}
	if err := ev.CheckShape(); err != nil {
		return err
	}
	key, err := snpSigningKey(ev.Report)
	if err != nil {
		return err
	}
	table, err := ParseCertTable(ev.CertTable)
	if err != nil {
		return err
	}
	certs := &CertChain{}
	if ev.Certs != nil {
		*certs = *ev.Certs
	}
	fill := func(dst *[]byte, guid string) {
		if len(*dst) == 0 {
			*dst = table[guid]
		}
	}
	fill(&certs.ARK, ARKGUID)
	fill(&certs.ASK, ASKGUID)
	fill(&certs.VCEK, VCEKGUID)
	fill(&certs.VLEK, VLEKGUID)
	switch key {
	case snpSignerVCEK:
		if len(certs.VCEK) == 0 {
			return fmt.Errorf("%w: report is signed by the VCEK but neither the certificate table nor the evidence carries it (fetching it from AMD's key distribution service is not implemented yet)", ErrCertChain)
		}
	case snpSignerVLEK:
		if len(certs.VLEK) == 0 {
			return fmt.Errorf("%w: report is signed by a VLEK but neither the certificate table nor the evidence carries it (the cloud provider must supply it)", ErrCertChain)
		}
	default:
		return fmt.Errorf("%w: report SIGNER_INFO names signing key %d (none), expected VCEK or VLEK", ErrCertChain, key)
	}
	ev.Certs = certs
	return nil
}
