package client

// TDREPORT_STRUCT offsets the tests build reports with, written down again from Intel's TDX
// module ABI specification so that the tests pin the layout rather than reuse it.
const (
	tdReportSize        = 1024
	tdReportTypeTDX     = 0x81
	tdReportOffMrConfig = 512 + 8 + 8 + 48
)
