package attest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	"github.com/google/uuid"
)

func vcekGUIDBytes(t *testing.T) []byte {
	t.Helper()
	g := uuid.MustParse(abi.VcekGUID)
	return g[:]
}

func TestSimSPPersistAndReload(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	sp, err := LoadOrCreateSimSP(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, simStateFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, want 0600", st.Mode().Perm())
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("state dir: %v, mode %v, want 0700", err, st.Mode().Perm())
	}
	if sp.RootPath() != filepath.Join(dir, simRootFile) {
		t.Errorf("RootPath %q", sp.RootPath())
	}
	// No temporary files are left behind.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("state dir holds %d entries, want 2 (state and root)", len(entries))
	}
	// The state file holds the VCEK key only, never the ARK or ASK private keys.
	state, _ := os.ReadFile(filepath.Join(dir, simStateFile))
	if n := bytes.Count(state, []byte("PRIVATE KEY-----\nRole")); n != 1 {
		t.Errorf("state file holds %d private keys, want 1", n)
	}

	// The chain is shaped like AMD's: names, algorithms, extensions.
	c := sp.Chain()
	if sp.ark.Subject.CommonName != "ARK-Milan" || sp.ask.Subject.CommonName != "SEV-Milan" || sp.vcek.Subject.CommonName != "SEV-VCEK" {
		t.Errorf("chain names %q, %q, %q", sp.ark.Subject.CommonName, sp.ask.Subject.CommonName, sp.vcek.Subject.CommonName)
	}
	exts, err := kds.VcekCertificateExtensions(sp.vcek)
	if err != nil {
		t.Fatal(err)
	}
	if exts.ProductName != "Milan-B0" || kds.DecomposeTCBVersion(exts.TCBVersion) != simTCB || allZero(exts.HWID) {
		t.Errorf("VCEK extensions: product %q, TCB %+v, HWID %x", exts.ProductName, kds.DecomposeTCBVersion(exts.TCBVersion), exts.HWID)
	}

	again, err := LoadOrCreateSimSP(dir)
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	if !again.Root().Equal(sp.Root()) || !bytes.Equal(again.Chain().VCEK, c.VCEK) || !bytes.Equal(again.Chain().ASK, c.ASK) {
		t.Fatal("reloaded chain differs")
	}
	roots, err := LoadCertificatePEM(again.RootPath())
	if err != nil || len(roots) != 1 || !roots[0].Equal(sp.Root()) {
		t.Fatalf("root file: %v", err)
	}
	// A report of the reloaded SP verifies under the root file written at creation.
	rep, err := again.Report(testLaunch(), testReportData())
	if err != nil {
		t.Fatal(err)
	}
	ev := &Evidence{TEE: TEESim, Report: rep}
	if err := again.Complete(ev); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(ev, VerifyOptions{AllowSimulated: true, SimRoots: roots}); err != nil {
		t.Fatalf("Verify after reload: %v", err)
	}

	// A deleted or altered root file is rewritten from the state.
	if err := os.WriteFile(again.RootPath(), []byte("junk"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateSimSP(dir); err != nil {
		t.Fatal(err)
	}
	if roots, err := LoadCertificatePEM(sp.RootPath()); err != nil || !roots[0].Equal(sp.Root()) {
		t.Fatalf("root file not restored: %v", err)
	}
}

func TestSimSPCorruptState(t *testing.T) {
	sp, other := testSPs(t)
	good, err := os.ReadFile(filepath.Join(sp.dir, simStateFile))
	if err != nil {
		t.Fatal(err)
	}
	otherState, err := os.ReadFile(filepath.Join(other.dir, simStateFile))
	if err != nil {
		t.Fatal(err)
	}
	// Splice the other SP's VCEK key in front of this SP's certificates.
	keyEnd := bytes.Index(otherState, []byte("-----END PRIVATE KEY-----\n")) + len("-----END PRIVATE KEY-----\n")
	certStart := bytes.Index(good, []byte("-----BEGIN CERTIFICATE-----"))
	mixed := append(bytes.Clone(otherState[:keyEnd]), good[certStart:]...)

	for name, state := range map[string][]byte{
		"truncated": good[:len(good)/2],
		"no key":    good[certStart:],
		"mixed key": mixed,
		"trailing":  append(bytes.Clone(good), "junk"...),
		"duplicate": append(bytes.Clone(good), good[certStart:]...),
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, simStateFile), state, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadOrCreateSimSP(dir); err == nil {
			t.Errorf("%s: loaded without error", name)
		}
	}
	loose := t.TempDir()
	if err := os.WriteFile(filepath.Join(loose, simStateFile), good, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateSimSP(loose); err == nil || !bytes.Contains([]byte(err.Error()), []byte("0600")) {
		t.Errorf("world-readable state file: %v, want an error naming the mode", err)
	}
	if _, err := LoadOrCreateSimSP(""); err == nil {
		t.Error("empty dir: no error")
	}
}

func TestSimMeasurement(t *testing.T) {
	dir := t.TempDir()
	kernel, initrd := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd")
	if err := os.WriteFile(kernel, []byte("kernel bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(initrd, []byte("initrd bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	in, err := LaunchInputsFromFiles(kernel, initrd, "console=hvc0", 4, 8192)
	if err != nil {
		t.Fatal(err)
	}
	if in.KernelSHA256 != sha256.Sum256([]byte("kernel bytes")) || in.InitrdSHA256 != sha256.Sum256([]byte("initrd bytes")) {
		t.Fatal("file digests differ")
	}
	// The documented formula, spelled out byte by byte.
	k, i := sha256.Sum256([]byte("kernel bytes")), sha256.Sum256([]byte("initrd bytes"))
	var msg []byte
	msg = append(msg, "cloche-sim-measurement-v1"...)
	msg = append(msg, 0)
	msg = append(msg, k[:]...)
	msg = append(msg, i[:]...)
	msg = append(msg, 12, 0, 0, 0)
	msg = append(msg, "console=hvc0"...)
	msg = append(msg, 4, 0, 0, 0)
	msg = append(msg, 0x00, 0x20, 0, 0, 0, 0, 0, 0)
	if got, want := SimMeasurement(in), sha512.Sum384(msg); got != want {
		t.Fatalf("SimMeasurement %x, want %x", got, want)
	}
	// Every input changes the measurement.
	base := SimMeasurement(in)
	for name, mod := range map[string]func(*LaunchInputs){
		"kernel":  func(l *LaunchInputs) { l.KernelSHA256[0] ^= 1 },
		"initrd":  func(l *LaunchInputs) { l.InitrdSHA256[0] ^= 1 },
		"cmdline": func(l *LaunchInputs) { l.Cmdline += " " },
		"vcpus":   func(l *LaunchInputs) { l.VCPUs++ },
		"memory":  func(l *LaunchInputs) { l.MemoryMiB++ },
	} {
		l := in
		mod(&l)
		if SimMeasurement(l) == base {
			t.Errorf("changing %s leaves the measurement unchanged", name)
		}
	}

	noInitrd, err := LaunchInputsFromFiles(kernel, "", "", 1, 512)
	if err != nil || noInitrd.InitrdSHA256 != sha256.Sum256(nil) {
		t.Fatalf("no initrd: %v", err)
	}
	if _, err := LaunchInputsFromFiles(filepath.Join(dir, "missing"), "", "", 1, 512); err == nil {
		t.Error("missing kernel: no error")
	}
	if _, err := LaunchInputsFromFiles(kernel, "", "", 0, 512); err == nil {
		t.Error("zero vcpus: no error")
	}
}

// serve runs sp.Serve on one end of a pipe and returns the guest end and Serve's result.
func serve(t *testing.T, ctx context.Context, sp *SimSP, launch SimLaunch) (net.Conn, <-chan error) {
	t.Helper()
	host, guest := net.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- sp.Serve(ctx, host, launch)
		host.Close()
	}()
	t.Cleanup(func() { guest.Close() })
	return guest, done
}

func TestServeAndSimProviderRoundTrip(t *testing.T) {
	sp, _ := testSPs(t)
	launch := testLaunch()
	guest, done := serve(t, context.Background(), sp, launch)

	p := NewSimProvider(guest)
	if p.TEE() != TEESim {
		t.Fatalf("TEE %q", p.TEE())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for n := 0; n < 2; n++ {
		rd := testReportData()
		rd[0] = byte(n)
		ev, err := p.GetEvidence(ctx, rd)
		if err != nil {
			t.Fatalf("GetEvidence %d: %v", n, err)
		}
		d, err := LaunchDigest(ev)
		if err != nil || d != launch.HostData {
			t.Fatalf("LaunchDigest %x, %v; want %x", d, err, launch.HostData)
		}
		// Through evidence.json and back, as the output disk carries it.
		b, err := ev.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		ev, err = ParseEvidence(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := sp.Complete(ev); err != nil {
			t.Fatal(err)
		}
		roots, _ := LoadCertificatePEM(sp.RootPath())
		if _, err := Verify(ev, VerifyOptions{
			AllowSimulated:       true,
			SimRoots:             roots,
			ExpectedMeasurements: [][]byte{launch.Measurement[:]},
			ExpectedHostData:     launch.HostData[:],
			ExpectedReportData:   rd[:],
		}); err != nil {
			t.Fatalf("Verify %d: %v", n, err)
		}
	}
	guest.Close()
	if err := <-done; err != nil {
		t.Fatalf("Serve after the guest closed: %v", err)
	}
}

func TestServeStopsOnContext(t *testing.T) {
	sp, _ := testSPs(t)
	ctx, cancel := context.WithCancel(context.Background())
	_, done := serve(t, ctx, sp, testLaunch())
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Serve returned %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancellation")
	}
}

func TestServeRejectsBadRequest(t *testing.T) {
	sp, _ := testSPs(t)
	guest, done := serve(t, context.Background(), sp, testLaunch())
	go guest.Write(append([]byte("GARBAGE!"), make([]byte, 64)...))
	_, _, err := readSimResponse(guest)
	wantErr(t, err, ErrSimProtocol, "status 1", "request magic")
	wantErr(t, <-done, ErrSimProtocol, "GARBAGE!")
}

func TestServeRequestLimit(t *testing.T) {
	sp, _ := testSPs(t)
	guest, done := serve(t, context.Background(), sp, testLaunch())
	p := NewSimProvider(guest)
	ctx := context.Background()
	var err error
	n := 0
	for ; n <= MaxSimRequests && err == nil; n++ {
		_, err = p.GetEvidence(ctx, testReportData())
	}
	if n != MaxSimRequests+1 {
		t.Fatalf("request %d failed first, want %d", n, MaxSimRequests+1)
	}
	wantErr(t, err, ErrSimProtocol, "more than")
	wantErr(t, <-done, ErrSimProtocol)
}

func TestSimProviderContext(t *testing.T) {
	// A host that never answers: the deadline of ctx interrupts the read.
	host, guest := net.Pipe()
	defer host.Close()
	defer guest.Close()
	go io.Copy(io.Discard, host)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := NewSimProvider(guest).GetEvidence(ctx, testReportData())
	wantErr(t, err, context.DeadlineExceeded)

	done, cancel2 := context.WithCancel(context.Background())
	cancel2()
	_, err = NewSimProvider(guest).GetEvidence(done, testReportData())
	wantErr(t, err, context.Canceled)
}

// simResponse builds a raw response for the parser tests.
func simResponse(status uint32, body []byte) []byte {
	b := []byte(simRspMagic)
	b = binary.LittleEndian.AppendUint32(b, status)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(body)))
	return append(b, body...)
}

func simOKBody(report, table []byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(report)))
	b = append(b, report...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(table)))
	return append(b, table...)
}

func TestReadSimResponse(t *testing.T) {
	sp, _ := testSPs(t)
	rep, err := sp.Report(testLaunch(), testReportData())
	if err != nil {
		t.Fatal(err)
	}
	good := simResponse(0, simOKBody(rep, sp.certTable))
	r, table, err := readSimResponse(bytes.NewReader(good))
	if err != nil || !bytes.Equal(r, rep) || !bytes.Equal(table, sp.certTable) {
		t.Fatalf("good response: %v", err)
	}

	hugeLen := simResponse(0, nil)
	binary.LittleEndian.PutUint32(hugeLen[12:], 0xFFFFFFFF)
	tableTooLong := simOKBody(rep, nil)
	binary.LittleEndian.PutUint32(tableTooLong[len(tableTooLong)-4:], 10)
	trailing := append(simOKBody(rep, nil), 1)
	oldVersion := bytes.Clone(rep)
	binary.LittleEndian.PutUint32(oldVersion, 1)
	for name, tc := range map[string]struct {
		in   []byte
		want string
	}{
		"magic":          {append([]byte("XSIMRSP1"), good[8:]...), "magic"},
		"huge body":      {hugeLen, "limit"},
		"short body":     {simResponse(0, make([]byte, 100)), "at least"},
		"report length":  {simResponse(0, simOKBody(rep[:1000], make([]byte, 200))), "report length is 1000"},
		"table too long": {simResponse(0, tableTooLong), "certificate table length is 10"},
		"trailing":       {simResponse(0, trailing), "remain"},
		"old version":    {simResponse(0, simOKBody(oldVersion, nil)), "VERSION is 1"},
		"host error":     {simResponse(2, []byte("no\x00way")), "status 2: no?way"},
		"long error":     {simResponse(2, make([]byte, maxSimErrorLen+1)), "message"},
	} {
		_, _, err := readSimResponse(bytes.NewReader(tc.in))
		if !errors.Is(err, ErrSimProtocol) {
			t.Errorf("%s: got %v, want ErrSimProtocol", name, err)
			continue
		}
		if !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
			t.Errorf("%s: error %q does not mention %q", name, err, tc.want)
		}
	}
	if _, _, err := readSimResponse(bytes.NewReader(good[:len(good)-1])); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated: got %v, want unexpected EOF", err)
	}
}

func TestSimProviderRejectsWrongReportData(t *testing.T) {
	sp, _ := testSPs(t)
	host, guest := net.Pipe()
	defer host.Close()
	defer guest.Close()
	go func() {
		var req [simReqSize]byte
		if _, err := io.ReadFull(host, req[:]); err != nil {
			return
		}
		var other [64]byte // a report for some other request
		rep, _ := sp.Report(testLaunch(), other)
		writeSimResponse(host, rep, nil)
	}()
	_, err := NewSimProvider(guest).GetEvidence(context.Background(), testReportData())
	wantErr(t, err, ErrSimProtocol, "REPORT_DATA")
}

func TestCompleteSim(t *testing.T) {
	sp, other := testSPs(t)
	rep, _ := sp.Report(testLaunch(), testReportData())
	ev := &Evidence{TEE: TEESim, Report: rep}
	if err := other.Complete(ev); !errors.Is(err, ErrCertChain) {
		t.Fatalf("completing with another SP: %v, want ErrCertChain", err)
	}
	if err := sp.Complete(ev); err != nil || !bytes.Equal(ev.Certs.VCEK, sp.vcek.Raw) {
		t.Fatalf("Complete: %v", err)
	}
	if err := sp.Complete(&Evidence{TEE: TEETDX, Report: make([]byte, 0x400)}); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("tdx: %v", err)
	}
	if err := sp.Complete(&Evidence{TEE: TEESim, Report: rep[:10]}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short: %v", err)
	}
}

func TestCompleteSNPFromCertTable(t *testing.T) {
	sp, _ := testSPs(t)
	rep, _ := sp.Report(testLaunch(), testReportData())
	ev := &Evidence{TEE: TEESNP, Report: rep, CertTable: sp.certTable}
	if err := CompleteSNPFromCertTable(ev); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ev.Certs.ARK, sp.ark.Raw) || !bytes.Equal(ev.Certs.ASK, sp.ask.Raw) || !bytes.Equal(ev.Certs.VCEK, sp.vcek.Raw) || ev.Certs.VLEK != nil {
		t.Fatal("certificates not taken from the table")
	}
	// Through SimSP.Complete too.
	ev = &Evidence{TEE: TEESNP, Report: rep, CertTable: sp.certTable}
	if err := sp.Complete(ev); err != nil || ev.Certs == nil {
		t.Fatalf("Complete snp: %v", err)
	}

	// Upstream KVM hands out an empty table: the VCEK is then missing.
	err := CompleteSNPFromCertTable(&Evidence{TEE: TEESNP, Report: rep})
	wantErr(t, err, ErrCertChain, "VCEK", "not implemented")

	// A VLEK-signed report needs the VLEK.
	vlek := bytes.Clone(rep)
	binary.LittleEndian.PutUint32(vlek[0x48:], abi.ComposeSignerInfo(abi.SignerInfo{SigningKey: abi.VlekReportSigner}))
	err = CompleteSNPFromCertTable(&Evidence{TEE: TEESNP, Report: vlek, CertTable: sp.certTable})
	wantErr(t, err, ErrCertChain, "VLEK")

	err = CompleteSNPFromCertTable(&Evidence{TEE: TEESim, Report: rep})
	wantErr(t, err, ErrUnsupported)
	err = CompleteSNPFromCertTable(&Evidence{TEE: TEESNP, Report: rep, CertTable: sp.certTable[:30]})
	wantErr(t, err, ErrMalformed)
}

func TestParseCertTable(t *testing.T) {
	sp, _ := testSPs(t)
	tab, err := parseCertTable(sp.certTable)
	if err != nil || len(tab) != 3 || !bytes.Equal(tab[abi.VcekGUID], sp.vcek.Raw) {
		t.Fatalf("parse: %v, %d entries", err, len(tab))
	}
	if tab, err := parseCertTable(nil); err != nil || len(tab) != 0 {
		t.Fatalf("empty: %v", err)
	}
	entry := func(guid []byte, off, length uint32) []byte {
		e := append(bytes.Clone(guid), make([]byte, 8)...)
		binary.LittleEndian.PutUint32(e[16:], off)
		binary.LittleEndian.PutUint32(e[20:], length)
		return e
	}
	g := vcekGUIDBytes(t)
	zero := make([]byte, certTableEntrySize)
	for name, tc := range map[string]struct {
		in   []byte
		want string
	}{
		"no terminator": {entry(g, 24, 0), "terminating"},
		"wrap":          {append(append(entry(g, 0xFFFFFFF0, 0x20), zero...), make([]byte, 64)...), "outside"},
		"into header":   {append(append(entry(g, 0, 8), zero...), make([]byte, 64)...), "outside"},
		"past end":      {append(append(entry(g, 48, 100), zero...), make([]byte, 64)...), "outside"},
		"duplicate":     {append(append(append(entry(g, 72, 1), entry(g, 72, 1)...), zero...), 1), "twice"},
		"too many":      {bytes.Repeat(entry(g, 0, 0), maxCertTableEntries+2), "more than"},
		"oversize":      {make([]byte, MaxCertTableSize+1), "limit"},
	} {
		_, err := parseCertTable(tc.in)
		if !errors.Is(err, ErrMalformed) || !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
			t.Errorf("%s: got %v, want ErrMalformed mentioning %q", name, err, tc.want)
		}
	}
}
