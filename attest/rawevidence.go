package attest

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"fmt"
)

// ParseEvidenceFile reads evidence as `cloche evidence` takes it: an evidence.json document
// (starts with '{'), or the raw bytes of an SNP attestation report (1184 bytes, optionally
// followed by its GHCB certificate table, as go-sev-guest's quote providers return it) or
// of a TDX quote (v4 or v5). tee, when not empty, is what the caller expects; raw bytes are
// recognised by their layout otherwise. Only evidence.json can say "sim".
func ParseEvidenceFile(b []byte, tee TEE) (*Evidence, error) {
	if len(b) > MaxEvidenceSize {
		return nil, fmt.Errorf("%w: evidence file is %d bytes, limit %d", ErrMalformed, len(b), MaxEvidenceSize)
	}
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		ev, err := ParseEvidence(b)
		if err != nil {
			return nil, err
		}
		if tee != "" && ev.TEE != tee {
			return nil, fmt.Errorf("%w: evidence is from TEE %q, expected %q", ErrMalformed, ev.TEE, tee)
		}
		return ev, nil
	}
	guess := rawEvidenceKind(b)
	if tee == "" {
		tee = guess
	}
	switch {
	case tee == "":
		return nil, fmt.Errorf("%w: %d bytes are neither evidence JSON, an SNP report (%d bytes, optionally followed by a certificate table) nor a TDX quote (version 4 or 5, TEE type 0x81)", ErrMalformed, len(b), SNPReportSize)
	case tee == TEESim:
		return nil, fmt.Errorf("%w: simulated evidence is only read from evidence JSON", ErrMalformed)
	case tee == TEESNP && len(b) > SNPReportSize && guess == TEESNP:
		ev := &Evidence{TEE: TEESNP, Report: bytes.Clone(b[:SNPReportSize]), CertTable: bytes.Clone(b[SNPReportSize:])}
		if err := ev.CheckShape(); err != nil {
			return nil, err
		}
		if _, err := ParseCertTable(ev.CertTable); err != nil {
			return nil, fmt.Errorf("the bytes after the %d-byte report: %w", SNPReportSize, err)
		}
		return ev, nil
	}
	ev := &Evidence{TEE: tee, Report: bytes.Clone(b)}
	if err := ev.CheckShape(); err != nil {
		return nil, err
	}
	return ev, nil
}

// rawEvidenceKind recognises a TDX quote by its header, and an SNP report by its size and
// version field.
func rawEvidenceKind(b []byte) TEE {
	if len(b) >= tdxMinQuoteSize {
		v := binary.LittleEndian.Uint16(b[0:2])
		if (v == 4 || v == 5) && binary.LittleEndian.Uint32(b[4:8]) == tdxTeeTypeTDX {
			return TEETDX
		}
	}
	if len(b) >= SNPReportSize {
		v := binary.LittleEndian.Uint32(b[snpOffVersion:])
		if v >= 2 && v <= 5 {
			return TEESNP
		}
	}
	return ""
}

// AttachCertificates puts vendor certificates (as `--certs` gives them) into SNP evidence:
// each goes to the place its subject names (SEV-VCEK, SEV-VLEK, the self-signed ARK, or the
// ASK/ASVK it signs). They are only candidates: Verify still chains them to its own roots.
func AttachCertificates(ev *Evidence, certs []*x509.Certificate) error {
	if ev == nil || len(certs) == 0 {
		return nil
	}
	if ev.TEE == TEETDX {
		return fmt.Errorf("%w: a TDX quote carries its own PCK certificate chain; certificates are only attached to SNP evidence", ErrUnsupported)
	}
	c := &CertChain{}
	if ev.Certs != nil {
		*c = *ev.Certs
	}
	for i, cert := range certs {
		cn := cert.Subject.CommonName
		switch {
		case cn == "SEV-VCEK":
			c.VCEK = cert.Raw
		case cn == "SEV-VLEK":
			c.VLEK = cert.Raw
		case bytes.Equal(cert.RawSubject, cert.RawIssuer):
			c.ARK = cert.Raw
		case cert.IsCA:
			c.ASK = cert.Raw
		default:
			return fmt.Errorf("certificate %d (CN %q) is neither a VCEK, a VLEK, an ARK nor an ASK", i+1, cn)
		}
	}
	ev.Certs = c
	return ev.CheckShape()
}
