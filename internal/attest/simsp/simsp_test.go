package simsp_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-sev-guest/kds"
	sevtestdata "github.com/google/go-sev-guest/verify/testdata"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/verifier"
	"github.com/cloche-dev/cloche/internal/attest/client"
	"github.com/cloche-dev/cloche/internal/attest/simsp"
	"github.com/cloche-dev/cloche/internal/attest/simtest"
	"github.com/cloche-dev/cloche/internal/attest/simwire"
)

func TestSimSPPersistAndReload(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	sp, err := simsp.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, simsp.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, want 0600", st.Mode().Perm())
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("state dir: %v, mode %v, want 0700", err, st.Mode().Perm())
	}
	if sp.RootPath() != filepath.Join(dir, simsp.RootFile) {
		t.Errorf("RootPath %q", sp.RootPath())
	}
	// No temporary files are left behind.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("state dir holds %d entries, want 2 (state and root)", len(entries))
	}
	// The state file holds the VCEK key only, never the ARK or ASK private keys.
	state, _ := os.ReadFile(filepath.Join(dir, simsp.StateFile))
	if n := bytes.Count(state, []byte("PRIVATE KEY-----\nRole")); n != 1 {
		t.Errorf("state file holds %d private keys, want 1", n)
	}

	// The chain is shaped like AMD's: names, algorithms, extensions.
	c := sp.Chain()
	if arkOf(sp).Subject.CommonName != "ARK-Milan" || askOf(sp).Subject.CommonName != "SEV-Milan" || vcekOf(sp).Subject.CommonName != "SEV-VCEK" {
		t.Errorf("chain names %q, %q, %q", arkOf(sp).Subject.CommonName, askOf(sp).Subject.CommonName, vcekOf(sp).Subject.CommonName)
	}
	exts, err := kds.VcekCertificateExtensions(vcekOf(sp))
	if err != nil {
		t.Fatal(err)
	}
	if exts.ProductName != "Milan-B0" || kds.DecomposeTCBVersion(exts.TCBVersion) != simsp.SimTCB || allZero(exts.HWID) {
		t.Errorf("VCEK extensions: product %q, TCB %+v, HWID %x", exts.ProductName, kds.DecomposeTCBVersion(exts.TCBVersion), exts.HWID)
	}

	again, err := simsp.LoadOrCreate(dir)
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	if !again.Root().Equal(sp.Root()) || !bytes.Equal(again.Chain().VCEK, c.VCEK) || !bytes.Equal(again.Chain().ASK, c.ASK) {
		t.Fatal("reloaded chain differs")
	}
	roots, err := verifier.LoadCertificatePEM(again.RootPath())
	if err != nil || len(roots) != 1 || !roots[0].Equal(sp.Root()) {
		t.Fatalf("root file: %v", err)
	}
	// A report of the reloaded SP verifies under the root file written at creation.
	rep, err := again.Report(simtest.Launch(), simtest.ReportData())
	if err != nil {
		t.Fatal(err)
	}
	ev := &attest.Evidence{TEE: attest.TEESim, Report: rep}
	if err := again.Complete(ev); err != nil {
		t.Fatal(err)
	}
	if _, err := verifier.Verify(ev, verifier.Options{AllowSimulated: true, SimRoots: roots}); err != nil {
		t.Fatalf("Verify after reload: %v", err)
	}

	// A deleted or altered root file is rewritten from the state.
	if err := os.WriteFile(again.RootPath(), []byte("junk"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := simsp.LoadOrCreate(dir); err != nil {
		t.Fatal(err)
	}
	if roots, err := verifier.LoadCertificatePEM(sp.RootPath()); err != nil || !roots[0].Equal(sp.Root()) {
		t.Fatalf("root file not restored: %v", err)
	}
}

func TestSimSPCorruptState(t *testing.T) {
	sp, other := simtest.SPs(t)
	good, err := os.ReadFile(filepath.Join(simsp.Dir(sp), simsp.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	otherState, err := os.ReadFile(filepath.Join(simsp.Dir(other), simsp.StateFile))
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
		if err := os.WriteFile(filepath.Join(dir, simsp.StateFile), state, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := simsp.LoadOrCreate(dir); err == nil {
			t.Errorf("%s: loaded without error", name)
		}
	}
	loose := t.TempDir()
	if err := os.WriteFile(filepath.Join(loose, simsp.StateFile), good, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := simsp.LoadOrCreate(loose); err == nil || !bytes.Contains([]byte(err.Error()), []byte("0600")) {
		t.Errorf("world-readable state file: %v, want an error naming the mode", err)
	}
	if _, err := simsp.LoadOrCreate(""); err == nil {
		t.Error("empty dir: no error")
	}
}

// serve runs sp.Serve on one end of a pipe and returns the guest end and Serve's result.
func serve(t *testing.T, ctx context.Context, sp *simsp.SP, launch simsp.Launch) (net.Conn, <-chan error) {
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
	sp, _ := simtest.SPs(t)
	launch := simtest.Launch()
	guest, done := serve(t, context.Background(), sp, launch)

	p := client.NewSimProvider(guest)
	if p.TEE() != attest.TEESim {
		t.Fatalf("TEE %q", p.TEE())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for n := 0; n < 2; n++ {
		rd := simtest.ReportData()
		rd[0] = byte(n)
		ev, err := p.GetEvidence(ctx, rd)
		if err != nil {
			t.Fatalf("GetEvidence %d: %v", n, err)
		}
		d, err := attest.LaunchDigest(ev)
		if err != nil || d != launch.HostData {
			t.Fatalf("LaunchDigest %x, %v; want %x", d, err, launch.HostData)
		}
		// Through evidence.json and back, as the output disk carries it.
		b, err := ev.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		ev, err = attest.ParseEvidence(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := sp.Complete(ev); err != nil {
			t.Fatal(err)
		}
		roots, _ := verifier.LoadCertificatePEM(sp.RootPath())
		if _, err := verifier.Verify(ev, verifier.Options{
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
	sp, _ := simtest.SPs(t)
	ctx, cancel := context.WithCancel(context.Background())
	_, done := serve(t, ctx, sp, simtest.Launch())
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
	sp, _ := simtest.SPs(t)
	guest, done := serve(t, context.Background(), sp, simtest.Launch())
	go guest.Write(append([]byte("GARBAGE!"), make([]byte, 64)...))
	_, _, err := simwire.ReadResponse(guest)
	simtest.WantErr(t, err, attest.ErrSimProtocol, "status 1", "request magic")
	simtest.WantErr(t, <-done, attest.ErrSimProtocol, "GARBAGE!")
}

func TestServeRequestLimit(t *testing.T) {
	sp, _ := simtest.SPs(t)
	guest, done := serve(t, context.Background(), sp, simtest.Launch())
	p := client.NewSimProvider(guest)
	ctx := context.Background()
	var err error
	n := 0
	for ; n <= simwire.MaxRequests && err == nil; n++ {
		_, err = p.GetEvidence(ctx, simtest.ReportData())
	}
	if n != simwire.MaxRequests+1 {
		t.Fatalf("request %d failed first, want %d", n, simwire.MaxRequests+1)
	}
	simtest.WantErr(t, err, attest.ErrSimProtocol, "more than")
	simtest.WantErr(t, <-done, attest.ErrSimProtocol)
}

func TestSimProviderContext(t *testing.T) {
	// A host that never answers: the deadline of ctx interrupts the read.
	host, guest := net.Pipe()
	defer host.Close()
	defer guest.Close()
	go io.Copy(io.Discard, host)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := client.NewSimProvider(guest).GetEvidence(ctx, simtest.ReportData())
	simtest.WantErr(t, err, context.DeadlineExceeded)

	done, cancel2 := context.WithCancel(context.Background())
	cancel2()
	_, err = client.NewSimProvider(guest).GetEvidence(done, simtest.ReportData())
	simtest.WantErr(t, err, context.Canceled)
}

// simResponse builds a raw response for the parser tests.
func simResponse(status uint32, body []byte) []byte {
	b := []byte(simwire.RspMagic)
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
	sp, _ := simtest.SPs(t)
	rep, err := sp.Report(simtest.Launch(), simtest.ReportData())
	if err != nil {
		t.Fatal(err)
	}
	good := simResponse(0, simOKBody(rep, sp.CertTable()))
	r, table, err := simwire.ReadResponse(bytes.NewReader(good))
	if err != nil || !bytes.Equal(r, rep) || !bytes.Equal(table, sp.CertTable()) {
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
		"long error":     {simResponse(2, make([]byte, simwire.MaxErrorLen+1)), "message"},
	} {
		_, _, err := simwire.ReadResponse(bytes.NewReader(tc.in))
		if !errors.Is(err, attest.ErrSimProtocol) {
			t.Errorf("%s: got %v, want ErrSimProtocol", name, err)
			continue
		}
		if !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
			t.Errorf("%s: error %q does not mention %q", name, err, tc.want)
		}
	}
	if _, _, err := simwire.ReadResponse(bytes.NewReader(good[:len(good)-1])); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated: got %v, want unexpected EOF", err)
	}
}

func TestSimProviderRejectsWrongReportData(t *testing.T) {
	sp, _ := simtest.SPs(t)
	host, guest := net.Pipe()
	defer host.Close()
	defer guest.Close()
	go func() {
		var req [simwire.ReqSize]byte
		if _, err := io.ReadFull(host, req[:]); err != nil {
			return
		}
		var other [64]byte // a report for some other request
		rep, _ := sp.Report(simtest.Launch(), other)
		simwire.WriteResponse(host, rep, nil)
	}()
	_, err := client.NewSimProvider(guest).GetEvidence(context.Background(), simtest.ReportData())
	simtest.WantErr(t, err, attest.ErrSimProtocol, "REPORT_DATA")
}

func TestCompleteSim(t *testing.T) {
	sp, other := simtest.SPs(t)
	rep, _ := sp.Report(simtest.Launch(), simtest.ReportData())
	ev := &attest.Evidence{TEE: attest.TEESim, Report: rep}
	if err := other.Complete(ev); !errors.Is(err, attest.ErrCertChain) {
		t.Fatalf("completing with another simsp.SP: %v, want ErrCertChain", err)
	}
	if err := sp.Complete(ev); err != nil || !bytes.Equal(ev.Certs.VCEK, vcekOf(sp).Raw) {
		t.Fatalf("Complete: %v", err)
	}
	if err := sp.Complete(&attest.Evidence{TEE: attest.TEETDX, Report: make([]byte, 0x400)}); !errors.Is(err, attest.ErrUnsupported) {
		t.Fatalf("tdx: %v", err)
	}
	if err := sp.Complete(&attest.Evidence{TEE: attest.TEESim, Report: rep[:10]}); !errors.Is(err, attest.ErrMalformed) {
		t.Fatalf("short: %v", err)
	}
}

// FuzzSimResponse: the guest's parser of host responses never panics, never allocates beyond
// its limits and only returns a report of the exact SNP size.
func FuzzSimResponse(f *testing.F) {
	f.Add(simResponse(0, simOKBody(sevtestdata.AttestationBytes, nil)))
	f.Add(simResponse(0, simOKBody(sevtestdata.AttestationBytes, []byte{1, 2, 3})))
	f.Add(simResponse(1, []byte("bad request")))
	f.Add([]byte(simwire.RspMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		report, table, err := simwire.ReadResponse(bytes.NewReader(b))
		if err != nil {
			return
		}
		if len(report) != attest.SNPReportSize {
			t.Fatalf("accepted a %d-byte report", len(report))
		}
		if len(table) > attest.MaxCertTableSize {
			t.Fatalf("accepted a %d-byte table", len(table))
		}
		if len(b) < simwire.RspHdrSize+4+attest.SNPReportSize+4+len(table) {
			t.Fatal("returned more bytes than it read")
		}
	})
}

func allZero(b []byte) bool { return bytes.Count(b, []byte{0}) == len(b) }

func arkOf(sp *simsp.SP) *x509.Certificate  { a, _, _ := simsp.Certs(sp); return a }
func askOf(sp *simsp.SP) *x509.Certificate  { _, a, _ := simsp.Certs(sp); return a }
func vcekOf(sp *simsp.SP) *x509.Certificate { _, _, v := simsp.Certs(sp); return v }
