package attest

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/google/go-sev-guest/abi"
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

// certTable maps a GUID string to its certificate bytes.
type certTable map[string][]byte

// parseCertTable parses a GHCB certificate table strictly. An empty table is valid.
func parseCertTable(t []byte) (certTable, error) {
	out := certTable{}
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
			return nil, fmt.Errorf("%w: certificate table entry %d GUID: %v", ErrMalformed, i, err)
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

// snpSigningKey returns which key signed an SNP report according to SIGNER_INFO.
func snpSigningKey(report []byte) (abi.ReportSigner, error) {
	info, err := abi.ReportSignerInfo(report)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	si, err := abi.ParseSignerInfo(info)
	if err != nil {
		return 0, fmt.Errorf("%w: SIGNER_INFO: %v", ErrMalformed, err)
	}
	return si.SigningKey, nil
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
	if err := ev.checkShape(); err != nil {
		return err
	}
	key, err := snpSigningKey(ev.Report)
	if err != nil {
		return err
	}
	table, err := parseCertTable(ev.CertTable)
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
	fill(&certs.ARK, abi.ArkGUID)
	fill(&certs.ASK, abi.AskGUID)
	fill(&certs.VCEK, abi.VcekGUID)
	fill(&certs.VLEK, abi.VlekGUID)
	switch key {
	case abi.VcekReportSigner:
		if len(certs.VCEK) == 0 {
			return fmt.Errorf("%w: report is signed by the VCEK but neither the certificate table nor the evidence carries it (fetching it from AMD's key distribution service is not implemented yet)", ErrCertChain)
		}
	case abi.VlekReportSigner:
		if len(certs.VLEK) == 0 {
			return fmt.Errorf("%w: report is signed by a VLEK but neither the certificate table nor the evidence carries it (the cloud provider must supply it)", ErrCertChain)
		}
	default:
		return fmt.Errorf("%w: report SIGNER_INFO names signing key %v, expected VCEK or VLEK", ErrCertChain, key)
	}
	ev.Certs = certs
	return nil
}
