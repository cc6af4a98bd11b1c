package verifier

import (
	"testing"

	"github.com/google/uuid"

	"github.com/cloche-dev/cloche/attest"
)

// Report, quote and table offsets the tests edit evidence at, written down again from the
// vendors' specifications (SEV-SNP ABI, Intel DCAP quote format and TDX module ABI, GHCB)
// so that the tests pin the layouts rather than reuse the parser's constants.
const (
	snpOffReportData = 0x050

	tdxHeaderSize          = 0x30
	tdxMinQuoteSize        = 0x3FC
	tdxBodySizeV10         = 584
	tdxBodyOffMrSignerSeam = 0x040
	tdxBodyOffSeamAttr     = 0x070
	tdxBodyOffTdAttr       = 0x078
	tdxBodyOffXfam         = 0x080
	tdxBodyOffMrTd         = 0x088
	tdxBodyOffMrConfig     = 0xE8 - tdxHeaderSize
	tdxBodyOffRtmr0        = 0x148
	tdxSDQEAuthSize        = 582
	tdxSDQEAuthData        = 584
	tdxCertTypePCK         = 5
	tdxCertTypeQE          = 6

	tdReportSize        = 1024
	tdReportTypeTDX     = 0x81
	tdReportOffMrConfig = 512 + 8 + 8 + 48

	certTableEntrySize = 24
)

// vcekGUIDBytes is the VCEK's GUID as a certificate table entry stores it.
func vcekGUIDBytes(t *testing.T) []byte {
	t.Helper()
	g := uuid.MustParse(attest.VCEKGUID)
	return g[:]
}
