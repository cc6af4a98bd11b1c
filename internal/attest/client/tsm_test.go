package client

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/faketsm"
	tdxtestdata "github.com/google/go-tdx-guest/testing/testdata"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/verifier"
	"github.com/cloche-dev/cloche/internal/attest/simsp"
	"github.com/cloche-dev/cloche/internal/attest/simtest"
)

// fakeTSM returns a faketsm client whose report subsystem answers provider, outblob and
// auxblob with the given functions (nil: the faketsm default).
func fakeTSM(provider *atomic.Value, outblob func(inblob []byte) ([]byte, error), auxblob func() ([]byte, error)) configfsi.Client {
	sub := faketsm.Report611(0)
	fallback := sub.ReadAttr
	sub.ReadAttr = func(e *faketsm.ReportEntry, attr string) ([]byte, error) {
		switch {
		case attr == "provider" && provider != nil:
			return []byte(provider.Load().(string)), nil
		case attr == "outblob" && outblob != nil:
			return outblob(e.InAttrs["inblob"].Value)
		case attr == "auxblob" && auxblob != nil:
			return auxblob()
		}
		return fallback(e, attr)
	}
	return &faketsm.Client{Subsystems: map[string]configfsi.Client{"report": sub}}
}

func TestTSMProviderSNP(t *testing.T) {
	sp, _ := simtest.SPs(t)
	launch := simtest.Launch()
	var provider atomic.Value
	provider.Store("sev_guest\n")
	// The fake secure processor signs a report over the inblob, and hands out its
	// certificate table as the auxblob, as the sev_guest driver does.
	tsm := fakeTSM(&provider, func(inblob []byte) ([]byte, error) {
		var rd [64]byte
		if len(inblob) != 64 {
			return nil, errors.New("inblob is not 64 bytes")
		}
		copy(rd[:], inblob)
		return sp.Report(launch, rd)
	}, func() ([]byte, error) { return bytes.Clone(sp.CertTable()), nil })

	p, err := NewTSMProvider(tsm)
	if err != nil {
		t.Fatal(err)
	}
	if p.TEE() != attest.TEESNP {
		t.Fatalf("TEE %q, want snp", p.TEE())
	}
	rd := simtest.ReportData()
	ev, err := p.GetEvidence(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if ev.TEE != attest.TEESNP || !bytes.Equal(ev.CertTable, sp.CertTable()) {
		t.Fatalf("evidence TEE %q, table %d bytes", ev.TEE, len(ev.CertTable))
	}
	if d, err := attest.LaunchDigest(ev); err != nil || d != launch.HostData {
		t.Fatalf("LaunchDigest %x, %v", d, err)
	}
	if err := attest.CompleteSNPFromCertTable(ev); err != nil {
		t.Fatal(err)
	}
	// Signed by the simulated processor, so it verifies as sim evidence only.
	_, err = verifier.Verify(ev, simOpts(t, sp))
	simtest.WantErr(t, err, attest.ErrCertChain)
	ev.TEE = attest.TEESim
	if _, err := verifier.Verify(ev, simOpts(t, sp)); err != nil {
		t.Fatalf("Verify: %v", err)
	}

	// The provider must not change under the guest's feet.
	provider.Store("tdx_guest\n")
	_, err = p.GetEvidence(context.Background(), rd)
	simtest.WantErr(t, err, attest.ErrMalformed, "provider changed")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.GetEvidence(ctx, rd); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
}

func TestTSMProviderSNPWrongReportData(t *testing.T) {
	sp, _ := simtest.SPs(t)
	var provider atomic.Value
	provider.Store("sev_guest\n")
	tsm := fakeTSM(&provider, func([]byte) ([]byte, error) {
		return sp.Report(simtest.Launch(), [64]byte{}) // ignores the inblob
	}, func() ([]byte, error) { return nil, nil })
	p, err := NewTSMProvider(tsm)
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.GetEvidence(context.Background(), simtest.ReportData())
	simtest.WantErr(t, err, attest.ErrMalformed, "REPORT_DATA")

	short := fakeTSM(&provider, func([]byte) ([]byte, error) { return make([]byte, 100), nil }, func() ([]byte, error) { return nil, nil })
	p, err = NewTSMProvider(short)
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.GetEvidence(context.Background(), simtest.ReportData())
	simtest.WantErr(t, err, attest.ErrMalformed, "100 bytes")
}

func TestTSMProviderTDX(t *testing.T) {
	var provider atomic.Value
	provider.Store("tdx_guest\n")
	tsm := fakeTSM(&provider,
		func([]byte) ([]byte, error) { return bytes.Clone(tdxtestdata.RawQuote), nil },
		func() ([]byte, error) {
			t.Error("auxblob read for TDX")
			return nil, errors.New("no auxblob")
		})
	p, err := NewTSMProvider(tsm)
	if err != nil {
		t.Fatal(err)
	}
	if p.TEE() != attest.TEETDX {
		t.Fatalf("TEE %q, want tdx", p.TEE())
	}
	// The sample quote's REPORTDATA, as if the guest had asked for it.
	var rd [64]byte
	copy(rd[:], tdxtestdata.RawQuote[0x238:0x278])
	ev, err := p.GetEvidence(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if ev.TEE != attest.TEETDX || !bytes.Equal(ev.Report, tdxtestdata.RawQuote) || ev.CertTable != nil {
		t.Fatal("TDX evidence differs from the quote")
	}
	_, err = p.GetEvidence(context.Background(), simtest.ReportData())
	simtest.WantErr(t, err, attest.ErrMalformed, "REPORT_DATA")
}

func TestTSMProviderUnsupported(t *testing.T) {
	// faketsm's default provider is "fake".
	_, err := NewTSMProvider(fakeTSM(nil, nil, nil))
	simtest.WantErr(t, err, ErrNoTSMProvider, `"fake"`)

	// No report subsystem at all (configfs-tsm missing).
	_, err = NewTSMProvider(&faketsm.Client{})
	simtest.WantErr(t, err, ErrNoTSMProvider)

	_, err = NewTSMProvider(nil)
	simtest.WantErr(t, err, ErrNoTSMProvider)
}

// simOpts opts in to simulated evidence from sp and expects the simtest launch.
func simOpts(t *testing.T, sp *simsp.SP) verifier.Options {
	t.Helper()
	l, rd := simtest.Launch(), simtest.ReportData()
	return verifier.Options{AllowSimulated: true, SimRoots: []*x509.Certificate{sp.Root()},
		ExpectedMeasurements: [][]byte{l.Measurement[:]}, ExpectedHostData: l.HostData[:], ExpectedReportData: rd[:]}
}

func allZero(b []byte) bool { return bytes.Count(b, []byte{0}) == len(b) }
