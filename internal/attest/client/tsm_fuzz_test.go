package client

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"

	tdxtestdata "github.com/google/go-tdx-guest/testing/testdata"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/attest/simtest"
)

// FuzzTSMEvidence drives the configfs-tsm path end to end with a faketsm kernel that
// answers whatever a hostile host could make the guest read: any provider name, outblob and
// auxblob. The provider must never panic, and evidence it returns must have passed the shape
// and REPORT_DATA checks: it answers the request, and LaunchDigest reads it.
func FuzzTSMEvidence(f *testing.F) {
	rd := simtest.ReportData()
	snp := make([]byte, attest.SNPReportSize)
	copy(snp[snpOffReportData:], rd[:])
	f.Add("sev_guest\n", snp, []byte{})
	f.Add("tdx_guest\n", bytes.Clone(tdxtestdata.RawQuote), []byte{})
	f.Add("sev_guest\n", snp[:100], bytes.Repeat([]byte{0xff}, 64))
	f.Add("tdx_guest", []byte{}, []byte{1})
	f.Fuzz(func(t *testing.T, provider string, outblob, auxblob []byte) {
		var pv atomic.Value
		pv.Store(provider)
		tsm := fakeTSM(&pv, func([]byte) ([]byte, error) { return bytes.Clone(outblob), nil },
			func() ([]byte, error) { return bytes.Clone(auxblob), nil })
		p, err := NewTSMProvider(tsm)
		if err != nil {
			if !errors.Is(err, ErrNoTSMProvider) {
				t.Fatalf("NewTSMProvider error %v is not ErrNoTSMProvider", err)
			}
			return
		}
		ev, err := p.GetEvidence(context.Background(), rd)
		if err != nil {
			return
		}
		if ev.TEE != p.TEE() {
			t.Fatalf("evidence of %q from a %q provider", ev.TEE, p.TEE())
		}
		got, err := attest.ReportDataOf(ev.TEE, ev.Report)
		if err != nil || !bytes.Equal(got, rd[:]) {
			t.Fatalf("accepted evidence whose REPORT_DATA is %x (%v), not the request", got, err)
		}
		_, _ = attest.LaunchDigest(ev) // must not panic; its errors are the padding rule
	})
}

// FuzzTDReport: the TDREPORT parser never panics, and a digest it returns is MRCONFIGID's
// first half with a zero second half.
func FuzzTDReport(f *testing.F) {
	r := make([]byte, tdReportSize)
	r[0] = tdReportTypeTDX
	f.Add(r)
	f.Add(r[:512])
	f.Add(bytes.Clone(tdxtestdata.RawReport))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := attest.TDReportLaunchDigest(b)
		if err != nil {
			return
		}
		if !bytes.Equal(d[:], b[tdReportOffMrConfig:tdReportOffMrConfig+32]) || !allZero(b[tdReportOffMrConfig+32:tdReportOffMrConfig+48]) {
			t.Fatalf("digest %x from MRCONFIGID %x", d, b[tdReportOffMrConfig:tdReportOffMrConfig+48])
		}
	})
}
