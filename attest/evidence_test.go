package attest_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"testing"

	tdxabi "github.com/google/go-tdx-guest/abi"
	tdxpb "github.com/google/go-tdx-guest/proto/tdx"
	tdxtestdata "github.com/google/go-tdx-guest/testing/testdata"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/attest/simtest"
)

func TestEvidenceMarshalParse(t *testing.T) {
	sp, _ := simtest.SPs(t)
	ev := simtest.Evidence(t, sp)
	ev.CertTable = sp.CertTable()
	b, err := ev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var generic map[string]any
	if err := json.Unmarshal(b, &generic); err != nil {
		t.Fatal(err)
	}
	certs, _ := generic["certs"].(map[string]any)
	if generic["tee"] != "sim" || generic["report"] == nil || generic["certTable"] == nil || certs["ark"] == nil || certs["vcek"] == nil {
		t.Fatalf("JSON shape: %s", b)
	}
	if _, ok := certs["vlek"]; ok {
		t.Error("empty vlek is encoded")
	}
	back, err := attest.ParseEvidence(b)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := back.Marshal()
	if !bytes.Equal(b, b2) {
		t.Fatal("round trip changed the encoding")
	}

	tdx := &attest.Evidence{TEE: attest.TEETDX, Report: tdxtestdata.RawQuote}
	b, _ = tdx.Marshal()
	if _, err := attest.ParseEvidence(b); err != nil {
		t.Fatalf("tdx evidence: %v", err)
	}
	// The event log travels in evidence.json, up to its limit, and only in TDX evidence.
	tdx.EventLog = bytes.Repeat([]byte{0xff}, attest.MaxEventLogSize)
	b, _ = tdx.Marshal()
	if back, err := attest.ParseEvidence(b); err != nil || !bytes.Equal(back.EventLog, tdx.EventLog) {
		t.Fatalf("tdx evidence with a %d-byte event log: %v", len(tdx.EventLog), err)
	}
	bigLog := &attest.Evidence{TEE: attest.TEETDX, Report: tdxtestdata.RawQuote, EventLog: make([]byte, attest.MaxEventLogSize+1)}
	bigLogJSON, _ := bigLog.Marshal()
	simLog := &attest.Evidence{TEE: attest.TEESim, Report: ev.Report, EventLog: []byte{1}}
	simLogJSON, _ := simLog.Marshal()

	good, _ := ev.Marshal()
	short := &attest.Evidence{TEE: attest.TEESim, Report: ev.Report[:100]}
	shortJSON, _ := short.Marshal()
	bigTable := &attest.Evidence{TEE: attest.TEESNP, Report: ev.Report, CertTable: make([]byte, attest.MaxCertTableSize+1)}
	bigTableJSON, _ := bigTable.Marshal()
	bigCert := &attest.Evidence{TEE: attest.TEESNP, Report: ev.Report, Certs: &attest.CertChain{VCEK: make([]byte, 16<<10+1)}}
	bigCertJSON, _ := bigCert.Marshal()
	for name, tc := range map[string]struct {
		in   []byte
		want string
	}{
		"unknown key":  {append(bytes.Clone(good[:len(good)-1]), `,"extra":1}`...), "unknown key"},
		"trailing":     {append(bytes.Clone(good), `{}`...), "trailing"},
		"oversize":     {make([]byte, attest.MaxEvidenceSize+1), "limit"},
		"bad tee":      {[]byte(`{"tee":"sgx","report":""}`), `"sgx"`},
		"no tee":       {[]byte(`{"report":""}`), `""`},
		"short report": {shortJSON, "100 bytes"},
		"tdx short":    {[]byte(`{"tee":"tdx","report":"AAAA"}`), "tdx quote is 3 bytes"},
		"big table":    {bigTableJSON, "certificate table"},
		"big cert":     {bigCertJSON, "certs.vcek"},
		"big log":      {bigLogJSON, "event log is 1048577 bytes"},
		"sim log":      {simLogJSON, "only tdx evidence has one"},
		"not json":     {[]byte("report"), "JSON"},
		"bad base64":   {[]byte(`{"tee":"sim","report":"!!"}`), "JSON"},
	} {
		_, err := attest.ParseEvidence(tc.in)
		if !errors.Is(err, attest.ErrMalformed) || !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
			t.Errorf("%s: got %v, want attest.ErrMalformed mentioning %q", name, err, tc.want)
		}
	}
	var nilEv *attest.Evidence
	if _, err := nilEv.Marshal(); !errors.Is(err, attest.ErrMalformed) {
		t.Errorf("nil Marshal: %v", err)
	}
}

// tdxMrConfigID reads MRCONFIGID through go-tdx-guest's own parser, the oracle for the
// offsets attest.LaunchDigest uses.
func tdxMrConfigID(t *testing.T, quote []byte) []byte {
	t.Helper()
	q, err := tdxabi.QuoteToProto(quote)
	if err != nil {
		t.Fatalf("go-tdx-guest cannot parse the quote: %v", err)
	}
	switch q := q.(type) {
	case *tdxpb.QuoteV4:
		return q.GetTdQuoteBody().GetMrConfigId()
	case *tdxpb.QuoteV5:
		return q.GetTdQuoteBodyDescriptor().GetTdQuoteBodyV5().GetMrConfigId()
	default:
		t.Fatalf("quote type %T", q)
		return nil
	}
}

func TestLaunchDigestTDX(t *testing.T) {
	for name, sample := range map[string]struct {
		quote  []byte
		offset int
	}{
		"v4": {tdxtestdata.RawQuote, 0xE8},
		"v5": {tdxtestdata.RawQuoteV5, 0xE8 + 6},
	} {
		t.Run(name, func(t *testing.T) {
			// The production sample as it is: its MRCONFIGID (all zero) is the digest.
			quote := bytes.Clone(sample.quote)
			d, err := attest.LaunchDigest(&attest.Evidence{TEE: attest.TEETDX, Report: quote})
			if err != nil {
				t.Fatal(err)
			}
			if mr := tdxMrConfigID(t, quote); !bytes.Equal(d[:], mr[:32]) {
				t.Fatalf("digest %x, MRCONFIGID %x", d, mr)
			}

			// A launch-bound digest placed at MRCONFIGID: both parsers see the same field.
			want := [32]byte{}
			for i := range want {
				want[i] = byte(0xA0 + i)
			}
			copy(quote[sample.offset:], want[:])
			if mr := tdxMrConfigID(t, quote); !bytes.Equal(mr[:32], want[:]) {
				t.Fatalf("go-tdx-guest sees MRCONFIGID %x after writing at 0x%x", mr, sample.offset)
			}
			d, err = attest.LaunchDigest(&attest.Evidence{TEE: attest.TEETDX, Report: quote})
			if err != nil || d != want {
				t.Fatalf("attest.LaunchDigest %x, %v; want %x", d, err, want)
			}

			// The last 16 bytes must be zero.
			quote[sample.offset+40] = 1
			_, err = attest.LaunchDigest(&attest.Evidence{TEE: attest.TEETDX, Report: quote})
			simtest.WantErr(t, err, attest.ErrMalformed, "MRCONFIGID[32:48]")
		})
	}

	bad := func(edit func(q []byte)) []byte {
		q := bytes.Clone(tdxtestdata.RawQuote)
		edit(q)
		return q
	}
	for name, tc := range map[string]struct {
		quote []byte
		want  string
	}{
		"short":       {tdxtestdata.RawQuote[:0x300], "bytes"},
		"version 3":   {bad(func(q []byte) { binary.LittleEndian.PutUint16(q, 3) }), "version is 3"},
		"not tdx":     {bad(func(q []byte) { binary.LittleEndian.PutUint32(q[4:], 0) }), "TEE type"},
		"v5 bad type": {bad(func(q []byte) { binary.LittleEndian.PutUint16(q, 5); binary.LittleEndian.PutUint16(q[0x30:], 9) }), "body type is 9"},
		"v5 bad size": {bad(func(q []byte) {
			binary.LittleEndian.PutUint16(q, 5)
			binary.LittleEndian.PutUint16(q[0x30:], 2)
			binary.LittleEndian.PutUint32(q[0x32:], 1000)
		}), "body size is 1000"},
	} {
		_, err := attest.LaunchDigest(&attest.Evidence{TEE: attest.TEETDX, Report: tc.quote})
		if !errors.Is(err, attest.ErrMalformed) || !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
			t.Errorf("%s: got %v, want attest.ErrMalformed mentioning %q", name, err, tc.want)
		}
	}
}

func TestLaunchDigestSNPAndSim(t *testing.T) {
	sp, _ := simtest.SPs(t)
	rep, err := sp.Report(simtest.Launch(), simtest.ReportData())
	if err != nil {
		t.Fatal(err)
	}
	for _, tee := range []attest.TEE{attest.TEESim, attest.TEESNP} {
		d, err := attest.LaunchDigest(&attest.Evidence{TEE: tee, Report: rep})
		if err != nil || d != simtest.Launch().HostData {
			t.Fatalf("%s: %x, %v", tee, d, err)
		}
	}
	if _, err := attest.LaunchDigest(&attest.Evidence{TEE: attest.TEESim, Report: rep[:0x100]}); !errors.Is(err, attest.ErrMalformed) {
		t.Errorf("short report: %v", err)
	}
	if _, err := attest.LaunchDigest(&attest.Evidence{TEE: "x", Report: rep}); !errors.Is(err, attest.ErrMalformed) {
		t.Errorf("unknown tee: %v", err)
	}
	if _, err := attest.LaunchDigest(nil); !errors.Is(err, attest.ErrMalformed) {
		t.Errorf("nil: %v", err)
	}
}

// Only the three kinds evidence.json, manifests and reference values use are valid; the
// check is exact (no case folding, no "auto").
func TestTEEValid(t *testing.T) {
	for _, tee := range []attest.TEE{attest.TEESNP, attest.TEETDX, attest.TEESim} {
		if !tee.Valid() {
			t.Errorf("%q not valid", tee)
		}
	}
	for _, tee := range []attest.TEE{"", "auto", "SNP", "sgx", "sim "} {
		if tee.Valid() {
			t.Errorf("%q valid", tee)
		}
	}
}
