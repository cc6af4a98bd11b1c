package verifier

import (
	"bytes"
	"crypto/sha512"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/attest/simtest"
)

// logEvent is one event of a synthetic TCG crypto-agile event log, as TDVF writes them:
// mr is the CC MR index (1 = RTMR0), digest is SHA-384 of measured (or, when measured is
// nil, of data).
type logEvent struct {
	mr       uint32
	typ      uint32
	data     []byte
	measured []byte
}

func (e logEvent) digest() []byte {
	m := e.measured
	if m == nil {
		m = e.data
	}
	d := sha512.Sum384(m)
	return d[:]
}

// Event types of the TCG PC Client PFP, written down again here.
const (
	evSeparator           = 0x4
	evNoAction            = 0x3
	evPlatformConfigFlags = 0xA
	evVariableDriverCfg   = 0x80000001
	evHandoffTables2      = 0x8000000B
	evFirmwareBlob2       = 0x8000000A
)

// testRTMR0Events are the kinds of events TDVF measures into RTMR0: the TD HOB, the UEFI
// variables, a separator, and QEMU's ACPI tables ("ACPI DATA", digest of the tables);
// one RTMR1 event (the kernel) that an RTMR0 replay ignores.
func testRTMR0Events() []logEvent {
	return []logEvent{
		{mr: 1, typ: evHandoffTables2, data: append([]byte{8}, "TdxTable"...), measured: []byte("the TD HOB")},
		{mr: 1, typ: evVariableDriverCfg, data: []byte("SecureBoot variable data")},
		{mr: 1, typ: evSeparator, data: make([]byte, 4)},
		{mr: 1, typ: evPlatformConfigFlags, data: []byte("ACPI DATA"), measured: []byte("DSDT and the other tables QEMU wrote")},
		{mr: 2, typ: evFirmwareBlob2, data: []byte("kernel"), measured: []byte("the kernel")},
	}
}

// testEventLog builds a CCEL-style log (the SHA-1 format Spec ID event announcing SHA-384,
// then the events in crypto-agile format, then all-ones padding) and the RTMR0 its RTMR0
// events extend to.
func testEventLog(t testing.TB, events ...logEvent) (log, rtmr0 []byte) {
	t.Helper()
	le := binary.LittleEndian
	var spec []byte
	spec = append(spec, "Spec ID Event03\x00"...)
	spec = le.AppendUint32(spec, 0)        // platform class
	spec = append(spec, 0, 2, 0, 2)        // version 2.0, errata 0, UINTN size
	spec = le.AppendUint32(spec, 1)        // one algorithm
	spec = le.AppendUint16(spec, 0x000C)   // TPM_ALG_SHA384
	spec = le.AppendUint16(spec, 48)       // its digest size
	spec = append(spec, 0)                 // no vendor info
	log = le.AppendUint32(log, 0)          // PCR index
	log = le.AppendUint32(log, evNoAction) // EV_NO_ACTION
	log = append(log, make([]byte, 20)...) // SHA-1 digest
	log = le.AppendUint32(log, uint32(len(spec)))
	log = append(log, spec...)
	rtmr0 = make([]byte, 48)
	for _, e := range events {
		d := e.digest()
		log = le.AppendUint32(log, e.mr)
		log = le.AppendUint32(log, e.typ)
		log = le.AppendUint32(log, 1)
		log = le.AppendUint16(log, 0x000C)
		log = append(log, d...)
		log = le.AppendUint32(log, uint32(len(e.data)))
		log = append(log, e.data...)
		if e.mr == 1 {
			h := sha512.New384()
			h.Write(rtmr0)
			h.Write(d)
			rtmr0 = h.Sum(nil)
		}
	}
	return append(log, bytes.Repeat([]byte{0xff}, 512)...), rtmr0
}

// RTMR0 is checked through the event log: a forged quote (test PCK chain, Intel's QE
// identity) whose RTMR0 is the replay of a synthetic log passes with that log and fails
// with any log that does not replay to it, or with none.
func TestTDXEventLog(t *testing.T) {
	good, rtmr0 := testEventLog(t, testRTMR0Events()...)
	f := qeForgery{mrSigner: tdQEMrSigner, prodID: tdQEIsvProdID, attr0: 0x11, body: func(b []byte) { copy(b[tdxBodyOffRtmr0:], rtmr0) }}
	q, root := f.forge(t)
	opts := Options{Now: tdxNow, fakeIntelRoot: root}
	verifyLog := func(log []byte) (*Claims, error) {
		return Verify(&attest.Evidence{TEE: attest.TEETDX, Report: q, EventLog: log}, opts)
	}

	claims, err := verifyLog(good)
	if err != nil {
		t.Fatalf("the log that replays to the quote's RTMR0: %v", err)
	}
	if len(claims.RTMR0Events) != 4 {
		t.Fatalf("%d RTMR0 events, want the 4 the log extends RTMR0 with", len(claims.RTMR0Events))
	}
	acpi := claims.RTMR0Events[3]
	if want := testRTMR0Events()[3].digest(); !bytes.Equal(acpi.Digest, want) || acpi.DataBound || acpi.Label() != `Platform Config Flags "ACPI DATA"` {
		t.Errorf("ACPI event %s digest %x bound %v, want %x unbound", acpi.Label(), acpi.Digest, acpi.DataBound, want)
	}
	if !claims.RTMR0Events[2].DataBound {
		t.Error("the separator's data hashes to its digest but is not marked bound")
	}
	if w := strings.Join(claims.Warnings, "\n"); strings.Contains(w, "event log") {
		t.Errorf("warnings %q", w)
	}

	other := testRTMR0Events()
	other[3].measured = []byte("tables the host rewrote")
	otherLog, _ := testEventLog(t, other...)
	// Tampered: one bit of the ACPI event's digest, as a host editing evidence.json would.
	digestAt := bytes.Index(good, testRTMR0Events()[3].digest())
	flipped := bytes.Clone(good)
	flipped[digestAt] ^= 1
	// Tampered: the separator's data, whose digest is of the data.
	sepData := bytes.Clone(good)
	sepAt := bytes.Index(sepData, append(binary.LittleEndian.AppendUint32(nil, 4), make([]byte, 4)...)) + 4
	sepData[sepAt] = 1
	noRTMR0 := testRTMR0Events()[4:]
	noRTMR0Log, _ := testEventLog(t, noRTMR0...)
	specOnly, _ := testEventLog(t)
	rtmr1Only := []logEvent{{mr: 1, typ: evNoAction, data: []byte("not a measurement")}, noRTMR0[0]}
	rtmr1OnlyLog, _ := testEventLog(t, rtmr1Only...)
	for _, c := range []struct {
		name string
		log  []byte
		want string
	}{
		{"no log", nil, "carries no event log"},
		{"a log of another RTMR0 (other ACPI tables)", otherLog, "does not replay to the quote's RTMR0"},
		{"a flipped digest bit", flipped, "does not replay"},
		{"separator data altered", sepData, "RTMR0 event 2 (Separator): its data does not hash to its digest"},
		{"no RTMR0 event", noRTMR0Log, "no event of the event log extends RTMR0"},
		{"the Spec ID event alone", specOnly, "no event of the event log extends RTMR0"},
		{"only an EV_NO_ACTION on RTMR0", rtmr1OnlyLog, "no event of the event log extends RTMR0"},
		{"garbage", []byte("garbage, not an event log"), "parsing the event log"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := verifyLog(c.log)
			simtest.WantErr(t, err, attest.ErrEventLog, c.want)
		})
	}
	// The shape check refuses an oversize log before anything parses it.
	_, err = verifyLog(append(bytes.Clone(good), make([]byte, attest.MaxEventLogSize)...))
	simtest.WantErr(t, err, attest.ErrMalformed, "event log is", "limit 1048576")
	// A log with SHA-1 digests only (no Spec ID event) cannot replay an RTMR.
	sha1Log := make([]byte, 32)
	binary.LittleEndian.PutUint32(sha1Log[0:], 1)
	binary.LittleEndian.PutUint32(sha1Log[4:], evSeparator)
	_, err = verifyLog(sha1Log)
	simtest.WantErr(t, err, attest.ErrEventLog, "no SHA-384 digests")
}

// A real TDVF log (Google's COS 113 on Intel TDX, from go-eventlog's testdata) replays to
// its RTMR0; its ACPI tables are three "ACPI DATA" events; the same log does not replay to
// another RTMR0.
func TestTDXEventLogRealTDVF(t *testing.T) {
	dir, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/google/go-eventlog").Output()
	if err != nil {
		t.Fatalf("locating go-eventlog's module: %v", err)
	}
	log, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(dir)), "testdata", "eventlogs", "ccel", "cos-113-intel-tdx.bin"))
	if err != nil {
		t.Fatal(err)
	}
	rtmr0 := mustHex("3fa2f61f395b7f5feefb4ec2df61297f109ad8abcd6410c1b7df60f21f37b19297fc35e544039c7e1edece752afd17f6")
	events, err := checkTDXEventLog(log, rtmr0)
	if err != nil {
		t.Fatalf("real TDVF log: %v", err)
	}
	var acpi []string
	for _, e := range events {
		if e.Type == evPlatformConfigFlags && string(e.Data) == "ACPI DATA" {
			acpi = append(acpi, e.Label())
		}
	}
	if len(events) != 16 || len(acpi) != 3 || !strings.Contains(events[0].Label(), "TdxTable") {
		t.Errorf("%d RTMR0 events (want 16), ACPI events %q (want 3), first %s", len(events), acpi, events[0].Label())
	}
	other := bytes.Clone(rtmr0)
	other[0] ^= 1
	_, err = checkTDXEventLog(log, other)
	simtest.WantErr(t, err, attest.ErrEventLog, "does not replay")
}

// The event log is the host's to write: parsing any bytes must not panic.
func FuzzTDXEventLog(f *testing.F) {
	good, rtmr0 := testEventLog(f, testRTMR0Events()...)
	f.Add(good)
	f.Add(good[:100])
	f.Fuzz(func(t *testing.T, log []byte) {
		events, err := checkTDXEventLog(log, rtmr0)
		if err == nil && len(events) == 0 {
			t.Fatal("a log with no RTMR0 event passed")
		}
	})
}
