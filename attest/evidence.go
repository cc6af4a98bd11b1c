// Package attest holds the hardware evidence that binds a cloche build to its inputs, in the
// vendor's own format (an SEV-SNP attestation report, a TDX quote), and its strict parsing:
// the TEE kinds, the evidence.json document, the layout of reports and quotes, the launch
// digest a guest reads from them, and the sentinel errors every check wraps.
//
// It is the leaf of the attestation packages and imports no vendor library, so that the
// guest init (PID 1 of the measured initramfs) links no verifier. The roles live beside it,
// following go-sev-guest's client / verify / testing split:
//
//   - attest/client: the in-guest providers that ask the TEE for a report (configfs-tsm for
//     SEV-SNP and TDX, /dev/sev-guest, the TDREPORT, the simulated TEE's virtio-serial port);
//   - attest/simsp: the host side of the simulated TEE, a local stand-in for AMD's secure
//     processor;
//   - attest/verifier: the offline verifier and its policies;
//   - attest/kds: the host's completion of SNP evidence with AMD's certificates.
//
// The simulated TEE produces SNP-format reports signed by a locally generated chain, so that
// the same parser and verifier code path handles both, and only the root of trust differs.
package attest

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/cloche-dev/cloche/internal/strictjson"
)

// TEE names the kind of trusted execution environment that produced a piece of evidence.
type TEE string

// The supported TEE kinds. The values appear in evidence.json, in the job manifest's "tee"
// field and in the provenance, so they never change.
const (
	TEESNP TEE = "snp"
	TEETDX TEE = "tdx"
	TEESim TEE = "sim"
)

// Valid says whether t is one of the supported kinds.
func (t TEE) Valid() bool { return t == TEESNP || t == TEETDX || t == TEESim }

// Limits on evidence read from outside (output disk, provenance, host responses).
const (
	// MaxEvidenceSize caps evidence.json. A report or quote with its certificates is a few
	// kilobytes; a TDX event log (at most MaxEventLogSize) in base64 stays below this.
	MaxEvidenceSize = 2 << 20
	// MaxEventLogSize caps a TDX event log: the CCEL log area TDVF reserves is 64 KiB.
	MaxEventLogSize = 1 << 20
	// MaxCertTableSize caps an SNP extended-report certificate table (GHCB format). The
	// kernel hands out at most a few pages.
	MaxCertTableSize = 64 << 10
	// MaxQuoteSize caps a TDX quote (header, body, signature and the PEM PCK chain).
	MaxQuoteSize = 64 << 10
	// maxCertSize caps one DER certificate in a CertChain.
	maxCertSize = 16 << 10
)

// SNPReportSize is the size of an SEV-SNP ATTESTATION_REPORT (abi.ReportSize).
const SNPReportSize = 0x4A0

// SNP report offsets used without the full parser (see the abi layout in the notes).
const (
	snpOffVersion    = 0x000
	snpOffFamilyID   = 0x010
	snpOffReportData = 0x050
	snpOffHostData   = 0x0C0
)

// TDX quote layout: a 48-byte header, then (v4) the TD quote body, or (v5) a u16 body type
// and u32 body size before the body. Body offsets below are relative to the body start.
const (
	tdxHeaderSize       = 0x30
	tdxTeeTypeTDX       = 0x81
	tdxBodyOffMrConfig  = 0xE8 - tdxHeaderSize
	tdxBodyOffReportDat = 0x238 - tdxHeaderSize
	tdxBodySizeV10      = 584
	tdxBodySizeV15      = 648
	tdxV5BodyDescSize   = 6
	tdxMinQuoteSize     = 0x3FC
)

// Sentinel errors. Every error returned by Verify wraps exactly one of them, so callers (the
// CLI's exit codes, tests) can branch on the check that failed.
var (
	ErrMalformed           = errors.New("malformed evidence")
	ErrSimulatedNotAllowed = errors.New("simulated TEE evidence not allowed")
	ErrCertChain           = errors.New("certificate chain check failed")
	ErrSignature           = errors.New("report signature check failed")
	ErrPolicy              = errors.New("report policy check failed")
	ErrMeasurement         = errors.New("measurement mismatch")
	ErrHostData            = errors.New("HOST_DATA mismatch")
	ErrReportData          = errors.New("REPORT_DATA mismatch")
	ErrUnsupported         = errors.New("unsupported evidence")
	ErrTCB                 = errors.New("TCB below the minimum")
	ErrRevoked             = errors.New("revocation check failed")
	ErrCollateral          = errors.New("TDX collateral check failed")
	// ErrFirmware: the SNP firmware state is inconsistent (committed newer than current, or
	// a provisional firmware whose REPORTED_TCB is not the committed one).
	ErrFirmware = errors.New("firmware state check failed")
	// ErrChipID: the VCEK is another chip's (its HWID is not the report's CHIP_ID).
	ErrChipID = errors.New("CHIP_ID mismatch")
	// ErrPlatform: the platform is not on the verifier's allow-list.
	ErrPlatform = errors.New("platform not allowed")
	// ErrQEIdentity: the TDX quote was signed by an enclave that is not Intel's TD quoting
	// enclave.
	ErrQEIdentity = errors.New("TDX quoting enclave identity check failed")
	// ErrEventLog: the TDX event log is missing, malformed, or does not replay to the
	// quote's RTMR0.
	ErrEventLog = errors.New("TDX event log check failed")
	// ErrSimProtocol is wrapped by errors about malformed simulated-TEE messages.
	ErrSimProtocol = errors.New("simulated TEE protocol error")
)

// Evidence leaves the guest in the output disk (evidence.json) and, after host completion,
// goes into the provenance.
type Evidence struct {
	TEE TEE `json:"tee"`
	// Report is, for SNP and sim, the 1184-byte attestation report; for TDX, the quote.
	Report []byte `json:"report"`
	// CertTable is the SNP extended-report certificate table (GHCB format) if the guest got one.
	CertTable []byte `json:"certTable,omitempty"`
	// Certs are DER certificates filled in by the host (Complete).
	Certs *CertChain `json:"certs,omitempty"`
	// EventLog is, for TDX, the TCG crypto-agile event log TDVF wrote (the CCEL table's log
	// area, as the guest kernel exposes it under /sys/firmware/acpi/tables/data/CCEL). It
	// is unsigned: a verifier trusts only the events that replay to the quote's RTMR0.
	EventLog []byte `json:"eventLog,omitempty"`
}

// CertChain holds the DER certificates that connect a report to the vendor root. The host
// fills it in; a verifier never trusts ARK/ASK from here as roots, only as intermediates
// checked against its own roots.
type CertChain struct {
	ARK  []byte `json:"ark,omitempty"`
	ASK  []byte `json:"ask,omitempty"`
	VCEK []byte `json:"vcek,omitempty"`
	VLEK []byte `json:"vlek,omitempty"`
}

// Marshal encodes the evidence canonically (encoding/json of the struct).
func (e *Evidence) Marshal() ([]byte, error) {
	if e == nil {
		return nil, fmt.Errorf("%w: nil evidence", ErrMalformed)
	}
	return json.Marshal(e)
}

// ParseEvidence decodes evidence.json strictly: size-capped, unknown, duplicate and
// case-variant keys and trailing data rejected (internal/strictjson), and the report's size checked for its TEE kind.
func ParseEvidence(b []byte) (*Evidence, error) {
	if len(b) > MaxEvidenceSize {
		return nil, fmt.Errorf("%w: evidence is %d bytes, limit %d", ErrMalformed, len(b), MaxEvidenceSize)
	}
	var ev Evidence
	if err := strictjson.Decode(b, &ev); err != nil {
		return nil, fmt.Errorf("%w: evidence JSON: %w", ErrMalformed, err)
	}
	if err := ev.CheckShape(); err != nil {
		return nil, err
	}
	return &ev, nil
}

// CheckShape validates sizes and the TEE kind without any cryptography.
func (e *Evidence) CheckShape() error {
	switch e.TEE {
	case TEESNP, TEESim:
		if len(e.Report) != SNPReportSize {
			return fmt.Errorf("%w: %s report is %d bytes, expected %d", ErrMalformed, e.TEE, len(e.Report), SNPReportSize)
		}
	case TEETDX:
		if len(e.Report) < tdxMinQuoteSize || len(e.Report) > MaxQuoteSize {
			return fmt.Errorf("%w: tdx quote is %d bytes, expected %d..%d", ErrMalformed, len(e.Report), tdxMinQuoteSize, MaxQuoteSize)
		}
	default:
		return fmt.Errorf("%w: tee is %q, expected %q, %q or %q", ErrMalformed, e.TEE, TEESNP, TEETDX, TEESim)
	}
	if len(e.EventLog) > MaxEventLogSize {
		return fmt.Errorf("%w: event log is %d bytes, limit %d", ErrMalformed, len(e.EventLog), MaxEventLogSize)
	}
	if e.EventLog != nil && e.TEE != TEETDX {
		return fmt.Errorf("%w: %s evidence carries an event log; only tdx evidence has one", ErrMalformed, e.TEE)
	}
	if len(e.CertTable) > MaxCertTableSize {
		return fmt.Errorf("%w: certificate table is %d bytes, limit %d", ErrMalformed, len(e.CertTable), MaxCertTableSize)
	}
	if e.Certs != nil {
		for _, c := range []struct {
			name string
			der  []byte
		}{{"ark", e.Certs.ARK}, {"ask", e.Certs.ASK}, {"vcek", e.Certs.VCEK}, {"vlek", e.Certs.VLEK}} {
			if len(c.der) > maxCertSize {
				return fmt.Errorf("%w: certs.%s is %d bytes, limit %d", ErrMalformed, c.name, len(c.der), maxCertSize)
			}
		}
	}
	return nil
}

// Provider gets evidence inside the guest (attest/client has the implementations).
type Provider interface {
	TEE() TEE
	GetEvidence(ctx context.Context, reportData [64]byte) (*Evidence, error)
}

// LaunchDigest extracts the launch-bound 32-byte manifest digest from the guest's own fresh
// evidence: SNP and sim: HOST_DATA (report offset 0xC0); TDX: MRCONFIGID[0:32], and an error
// if MRCONFIGID[32:48] is not zero (the host sets SHA-256(manifest) followed by 16 zero bytes;
// anything else there means the launch did not follow the protocol).
//
// It checks layout only, not signatures: the guest reads its own report straight from the
// hardware, and a verifier checks the signature separately.
func LaunchDigest(ev *Evidence) ([32]byte, error) {
	var d [32]byte
	if ev == nil {
		return d, fmt.Errorf("%w: nil evidence", ErrMalformed)
	}
	switch ev.TEE {
	case TEESNP, TEESim:
		if len(ev.Report) != SNPReportSize {
			return d, fmt.Errorf("%w: %s report is %d bytes, expected %d", ErrMalformed, ev.TEE, len(ev.Report), SNPReportSize)
		}
		copy(d[:], ev.Report[snpOffHostData:snpOffHostData+32])
		return d, nil
	case TEETDX:
		body, err := tdxQuoteBody(ev.Report)
		if err != nil {
			return d, err
		}
		mr := body[tdxBodyOffMrConfig : tdxBodyOffMrConfig+48]
		if !allZero(mr[32:]) {
			return d, fmt.Errorf("%w: tdx MRCONFIGID[32:48] is %x, expected 16 zero bytes", ErrMalformed, mr[32:])
		}
		copy(d[:], mr[:32])
		return d, nil
	default:
		return d, fmt.Errorf("%w: tee is %q, expected %q, %q or %q", ErrMalformed, ev.TEE, TEESNP, TEETDX, TEESim)
	}
}

// tdxQuoteBody returns the TD quote body of a v4 or v5 TDX quote after checking the header
// fields that decide the layout.
func tdxQuoteBody(q []byte) ([]byte, error) {
	if len(q) < tdxMinQuoteSize || len(q) > MaxQuoteSize {
		return nil, fmt.Errorf("%w: tdx quote is %d bytes, expected %d..%d", ErrMalformed, len(q), tdxMinQuoteSize, MaxQuoteSize)
	}
	version := binary.LittleEndian.Uint16(q[0:2])
	teeType := binary.LittleEndian.Uint32(q[4:8])
	if teeType != tdxTeeTypeTDX {
		return nil, fmt.Errorf("%w: tdx quote TEE type is 0x%x, expected 0x%x", ErrMalformed, teeType, tdxTeeTypeTDX)
	}
	switch version {
	case 4:
		return q[tdxHeaderSize : tdxHeaderSize+tdxBodySizeV10], nil
	case 5:
		bodyType := binary.LittleEndian.Uint16(q[tdxHeaderSize : tdxHeaderSize+2])
		bodySize := binary.LittleEndian.Uint32(q[tdxHeaderSize+2 : tdxHeaderSize+6])
		var want uint32
		switch bodyType {
		case 2:
			want = tdxBodySizeV10
		case 3:
			want = tdxBodySizeV15
		default:
			return nil, fmt.Errorf("%w: tdx v5 quote body type is %d, expected 2 (TDX 1.0) or 3 (TDX 1.5)", ErrMalformed, bodyType)
		}
		if bodySize != want {
			return nil, fmt.Errorf("%w: tdx v5 quote body size is %d, expected %d for body type %d", ErrMalformed, bodySize, want, bodyType)
		}
		start := tdxHeaderSize + tdxV5BodyDescSize
		if len(q) < start+int(bodySize) {
			return nil, fmt.Errorf("%w: tdx v5 quote is %d bytes, shorter than its %d-byte body", ErrMalformed, len(q), bodySize)
		}
		return q[start : start+int(bodySize)], nil
	default:
		return nil, fmt.Errorf("%w: tdx quote version is %d, expected 4 or 5", ErrMalformed, version)
	}
}

// ReportDataOf returns the REPORT_DATA field of SNP/sim reports and TDX quotes.
func ReportDataOf(tee TEE, report []byte) ([]byte, error) {
	switch tee {
	case TEESNP, TEESim:
		if len(report) != SNPReportSize {
			return nil, fmt.Errorf("%w: %s report is %d bytes, expected %d", ErrMalformed, tee, len(report), SNPReportSize)
		}
		return report[snpOffReportData : snpOffReportData+64], nil
	case TEETDX:
		body, err := tdxQuoteBody(report)
		if err != nil {
			return nil, err
		}
		return body[tdxBodyOffReportDat : tdxBodyOffReportDat+64], nil
	default:
		return nil, fmt.Errorf("%w: tee is %q", ErrMalformed, tee)
	}
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
