package kds

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	sevkds "github.com/google/go-sev-guest/kds"
	sevtest "github.com/google/go-sev-guest/testing"
	"github.com/google/go-sev-guest/verify/testdata"
	"github.com/google/go-sev-guest/verify/trust"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/verifier"
)

// fakeKDS is an httptest server answering like AMD's KDS from a go-sev-guest FakeKDS, with
// scripted refusals and a request log.
type fakeKDS struct {
	*httptest.Server
	mu       sync.Mutex
	requests []time.Time
	paths    []string
	// refuse, if set, answers request number n (from 1) instead of the fake.
	refuse func(n int, w http.ResponseWriter) bool
}

func newFakeKDS(t *testing.T, get func(url string) ([]byte, error)) *fakeKDS {
	f := &fakeKDS{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.requests = append(f.requests, time.Now())
		f.paths = append(f.paths, r.URL.RequestURI())
		n := len(f.requests)
		refuse := f.refuse
		f.mu.Unlock()
		if refuse != nil && refuse(n, w) {
			return
		}
		b, err := get(DefaultBaseURL + r.URL.RequestURI())
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Write(b)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeKDS) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.requests)
}

// realMilanKDS serves go-sev-guest's real Milan VCEK (for its real report) and AMD's real
// Milan ASK/ARK.
func realMilanKDS(t *testing.T) *fakeKDS {
	return newFakeKDS(t, func(url string) ([]byte, error) {
		if line, fn, err := sevkds.ParseProductCertChainURL(url); err == nil {
			if line == "Milan" && fn == sevkds.VcekCertFunction {
				return trust.AskArkMilanVcekBytes, nil
			}
			return nil, errors.New("no such chain")
		}
		v, err := sevkds.ParseVCEKCertURL(url)
		if err != nil {
			return nil, err
		}
		r, _ := abi.ReportToProto(testdata.AttestationBytes)
		if v.ProductLine == "Milan" && bytes.Equal(v.HWID, r.GetChipId()) && v.TCB == r.GetReportedTcb() {
			return testdata.VcekBytes, nil
		}
		return nil, errors.New("unknown chip or TCB")
	})
}

func realEvidence() *attest.Evidence {
	return &attest.Evidence{TEE: attest.TEESNP, Report: bytes.Clone(testdata.AttestationBytes)}
}

func TestCompleteRealMilanReportFetchesThenUsesCache(t *testing.T) {
	srv := realMilanKDS(t)
	cache := t.TempDir()
	c := New(Options{CPUInfo: milanHost(t), BaseURL: srv.URL, CacheDir: cache})
	ev := realEvidence()
	if err := c.Complete(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ev.Certs.VCEK, testdata.VcekBytes) {
		t.Error("VCEK is not the real Milan VCEK")
	}
	ask, ark, _ := sevkds.ParseProductCertChain(trust.AskArkMilanVcekBytes)
	if !bytes.Equal(ev.Certs.ASK, ask) || !bytes.Equal(ev.Certs.ARK, ark) {
		t.Error("ASK/ARK are not AMD's Milan certificates")
	}
	if srv.count() != 2 {
		t.Errorf("%d requests, want 2 (VCEK, cert_chain): %q", srv.count(), srv.paths)
	}
	if !strings.HasPrefix(srv.paths[0], "/vcek/v1/Milan/3ac3fe21e13fb099") || !strings.Contains(srv.paths[0], "blSPL=2&teeSPL=0&snpSPL=5&ucodeSPL=68") {
		t.Errorf("VCEK request %q does not name the report's chip and TCB", srv.paths[0])
	}

	// Offline with the cache: the same chain, no request.
	off := New(Options{CPUInfo: milanHost(t), BaseURL: srv.URL, CacheDir: cache, Offline: true})
	ev2 := realEvidence()
	if err := off.Complete(context.Background(), ev2); err != nil {
		t.Fatal(err)
	}
	if srv.count() != 2 {
		t.Errorf("offline completion made %d more requests", srv.count()-2)
	}
	if !bytes.Equal(ev2.Certs.VCEK, ev.Certs.VCEK) || !bytes.Equal(ev2.Certs.ASK, ev.Certs.ASK) || !bytes.Equal(ev2.Certs.ARK, ev.Certs.ARK) {
		t.Error("cached chain differs")
	}

	// The completed evidence passes attest's chain and signature checks against AMD's
	// embedded roots (the real sample's VCEK is valid until 2029) and then stops at the
	// policy check, which comes after them: the sample was taken from a debug guest.
	_, err := verifier.Verify(ev2, verifier.Options{Now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)})
	if !errors.Is(err, attest.ErrPolicy) || !strings.Contains(err.Error(), "debug") {
		t.Errorf("verifier.Verify of the completed real evidence = %v, want it past the chain and signature, rejected for debug", err)
	}
}

func TestCompleteOfflineWithoutCacheNeverTouchesTheNetwork(t *testing.T) {
	srv := realMilanKDS(t)
	c := New(Options{CPUInfo: milanHost(t), BaseURL: srv.URL, CacheDir: t.TempDir(), Offline: true})
	err := c.Complete(context.Background(), realEvidence())
	if !errors.Is(err, ErrOffline) || !strings.Contains(err.Error(), "not in the cache") {
		t.Errorf("Complete = %v, want ErrOffline naming the cache", err)
	}
	if srv.count() != 0 {
		t.Errorf("offline mode made %d requests", srv.count())
	}
}

func TestCompleteOfflineWithChainFile(t *testing.T) {
	var pemBytes bytes.Buffer
	pem.Encode(&pemBytes, &pem.Block{Type: "CERTIFICATE", Bytes: testdata.VcekBytes})
	chain := filepath.Join(t.TempDir(), "chain.pem")
	if err := os.WriteFile(chain, pemBytes.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := realMilanKDS(t)
	// No cache at all: the VCEK comes from the file, ASK/ARK from the embedded bundle.
	c := New(Options{CPUInfo: milanHost(t), BaseURL: srv.URL, Offline: true, ChainFile: chain})
	ev := realEvidence()
	if err := c.Complete(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ev.Certs.VCEK, testdata.VcekBytes) || len(ev.Certs.ASK) == 0 || len(ev.Certs.ARK) == 0 {
		t.Errorf("incomplete chain: %+v", ev.Certs)
	}
	if srv.count() != 0 {
		t.Errorf("offline mode made %d requests", srv.count())
	}

	// A chain file with a certificate that is not AMD's is refused by role.
	bad := filepath.Join(t.TempDir(), "bad.pem")
	var b bytes.Buffer
	pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: testdata.VcekBytes})
	pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: testdata.VcekBytes})
	os.WriteFile(bad, b.Bytes(), 0o644)
	err := New(Options{CPUInfo: milanHost(t), Offline: true, ChainFile: bad}).Complete(context.Background(), realEvidence())
	if err == nil || !strings.Contains(err.Error(), "two VCEK certificates") {
		t.Errorf("duplicate VCEK in the chain file: %v", err)
	}
}

// fakeChip is a go-sev-guest test signer with a real-looking chip id and TCB, and a report
// it signed.
type fakeChip struct {
	signer *sevtest.AmdSigner
	hwid   [64]byte
	tcb    uint64
}

func newFakeChip(t *testing.T) *fakeChip {
	t.Helper()
	fc := &fakeChip{}
	for i := range fc.hwid {
		fc.hwid[i] = byte(i*7 + 1)
	}
	parts := sevkds.TCBParts{BlSpl: 3, TeeSpl: 0, SnpSpl: 8, UcodeSpl: 115}
	tcb, err := sevkds.ComposeTCBParts(parts)
	if err != nil {
		t.Fatal(err)
	}
	fc.tcb = uint64(tcb)
	now := time.Now().Add(-time.Hour)
	b := &sevtest.AmdSignerBuilder{
		Keys: sevtest.DefaultAmdKeys(), ProductName: "Milan-B1", CSPID: "cloche-test",
		ArkCreationTime: now, AskCreationTime: now, AsvkCreationTime: now, VcekCreationTime: now, VlekCreationTime: now,
		HWID: fc.hwid, TCB: tcb,
		VcekCustom: sevtest.CertOverride{Extensions: sevtest.CustomExtensions(parts, fc.hwid[:], "", "Milan-B1")},
	}
	fc.signer, err = b.TestOnlyCertChain()
	if err != nil {
		t.Fatal(err)
	}
	return fc
}

// report returns a report signed by the fake chip's VCEK (or VLEK).
func (fc *fakeChip) report(t *testing.T, key abi.ReportSigner) []byte {
	t.Helper()
	raw := sevtest.CreateRawReport(&sevtest.TestReportOptions{Version: 3, FMS: 0x00a00f10, SignerInfo: abi.SignerInfo{SigningKey: key}})
	r := raw[:abi.ReportSize]
	binary.LittleEndian.PutUint64(r[0x08:], abi.SnpPolicyToBytes(abi.SnpPolicy{SMT: true}))
	binary.LittleEndian.PutUint64(r[0x38:], fc.tcb)
	binary.LittleEndian.PutUint64(r[0x180:], fc.tcb)
	binary.LittleEndian.PutUint64(r[0x1E0:], fc.tcb)
	copy(r[0x1A0:], fc.hwid[:])
	rs, ss, err := fc.signer.Sign(abi.SignedComponent(r))
	if err != nil {
		t.Fatal(err)
	}
	if err := abi.SetSignature(rs, ss, r); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(r)
}

func (fc *fakeChip) kds(t *testing.T) *fakeKDS {
	fake, err := sevtest.FakeKDSFromSigner(fc.signer)
	if err != nil {
		t.Fatal(err)
	}
	return newFakeKDS(t, fake.Get)
}

func TestCompleteFakeChipAndRejections(t *testing.T) {
	fc := newFakeChip(t)
	srv := fc.kds(t)
	c := New(Options{BaseURL: srv.URL, CacheDir: t.TempDir()})
	ev := &attest.Evidence{TEE: attest.TEESNP, Report: fc.report(t, abi.VcekReportSigner)}
	if err := c.Complete(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ev.Certs.VCEK, fc.signer.Vcek.Raw) || !bytes.Equal(ev.Certs.ASK, fc.signer.Ask.Raw) || !bytes.Equal(ev.Certs.ARK, fc.signer.Ark.Raw) {
		t.Error("chain is not the fake chip's")
	}

	t.Run("report altered after signing", func(t *testing.T) {
		r := fc.report(t, abi.VcekReportSigner)
		r[0x90] ^= 1 // MEASUREMENT
		err := c.Complete(context.Background(), &attest.Evidence{TEE: attest.TEESNP, Report: r})
		if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "signature") {
			t.Errorf("Complete = %v, want ErrMismatch on the signature", err)
		}
	})
	t.Run("VCEK of another TCB", func(t *testing.T) {
		r := fc.report(t, abi.VcekReportSigner)
		other := &attest.Evidence{TEE: attest.TEESNP, Report: r, Certs: &attest.CertChain{VCEK: fc.signer.Vcek.Raw}}
		binary.LittleEndian.PutUint64(r[0x180:], fc.tcb+1) // REPORTED_TCB differs from the VCEK
		err := c.Complete(context.Background(), other)
		if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "REPORTED_TCB") {
			t.Errorf("Complete = %v, want ErrMismatch on the TCB", err)
		}
	})
	t.Run("ASK from another product", func(t *testing.T) {
		realASK, _, _ := sevkds.ParseProductCertChain(trust.AskArkMilanVcekBytes)
		ev := &attest.Evidence{TEE: attest.TEESNP, Report: fc.report(t, abi.VcekReportSigner), Certs: &attest.CertChain{ASK: realASK}}
		err := c.Complete(context.Background(), ev)
		if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "VCEK (SEV-VCEK) is not signed by ASK") {
			t.Errorf("Complete = %v, want ErrMismatch on the chain", err)
		}
		if ev.Certs.VCEK != nil {
			t.Error("evidence changed although completion failed")
		}
	})
	t.Run("VLEK is never fetched", func(t *testing.T) {
		before := srv.count()
		err := c.Complete(context.Background(), &attest.Evidence{TEE: attest.TEESNP, Report: fc.report(t, abi.VlekReportSigner)})
		if !errors.Is(err, ErrOffline) || !strings.Contains(err.Error(), "VLEK") {
			t.Errorf("Complete = %v, want an error about the missing VLEK", err)
		}
		if srv.count() != before {
			t.Error("a VLEK request went to KDS")
		}
	})
	t.Run("VLEK from the certificate table", func(t *testing.T) {
		table, err := fc.signer.CertTableBytes()
		if err != nil {
			t.Fatal(err)
		}
		ev := &attest.Evidence{TEE: attest.TEESNP, Report: fc.report(t, abi.VlekReportSigner), CertTable: table}
		if err := c.Complete(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ev.Certs.VLEK, fc.signer.Vlek.Raw) {
			t.Error("VLEK not taken from the table")
		}
	})
	t.Run("masked chip id", func(t *testing.T) {
		r := fc.report(t, abi.VcekReportSigner)
		clear(r[0x1A0:0x1E0])
		err := New(Options{BaseURL: srv.URL}).Complete(context.Background(), &attest.Evidence{TEE: attest.TEESNP, Report: r})
		if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "masked") {
			t.Errorf("Complete = %v, want an error about the masked CHIP_ID", err)
		}
	})
	t.Run("not snp", func(t *testing.T) {
		err := c.Complete(context.Background(), &attest.Evidence{TEE: attest.TEETDX, Report: make([]byte, 2000)})
		if !errors.Is(err, ErrUnsupported) {
			t.Errorf("Complete = %v", err)
		}
	})
	t.Run("truncated report", func(t *testing.T) {
		err := c.Complete(context.Background(), &attest.Evidence{TEE: attest.TEESNP, Report: make([]byte, 100)})
		if !errors.Is(err, attest.ErrMalformed) {
			t.Errorf("Complete = %v, want ErrMalformed", err)
		}
	})
}

func TestCacheEntryForAnotherChipIsNotUsed(t *testing.T) {
	fc := newFakeChip(t)
	srv := fc.kds(t)
	cache := t.TempDir()
	c := New(Options{BaseURL: srv.URL, CacheDir: cache})
	// Plant the real Milan VCEK under the fake chip's cache name.
	vcekName := filepath.Join(cache, cacheVCEKName("Milan", fc.hwid[:], fc.tcb))
	os.MkdirAll(filepath.Dir(vcekName), 0o755)
	if err := os.WriteFile(vcekName, testdata.VcekBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := c.VCEK(context.Background(), "Milan", fc.hwid[:], fc.tcb)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, fc.signer.Vcek.Raw) || srv.count() != 1 {
		t.Errorf("a mismatching cache entry was used (requests %d)", srv.count())
	}
	// ... and the fetch replaced it.
	if b, _ := os.ReadFile(vcekName); !bytes.Equal(b, fc.signer.Vcek.Raw) {
		t.Error("cache entry not replaced")
	}
	// Offline, a bad entry is an error, not a silent success.
	os.WriteFile(vcekName, testdata.VcekBytes, 0o644)
	_, err = New(Options{CacheDir: cache, Offline: true}).VCEK(context.Background(), "Milan", fc.hwid[:], fc.tcb)
	if !errors.Is(err, ErrOffline) {
		t.Errorf("offline with a bad cache entry: %v", err)
	}
}

func TestFetchedVCEKMustMatchTheRequest(t *testing.T) {
	fc := newFakeChip(t)
	// A KDS (or a proxy) answering every VCEK request with the real Milan VCEK.
	srv := newFakeKDS(t, func(string) ([]byte, error) { return testdata.VcekBytes, nil })
	cache := t.TempDir()
	_, err := New(Options{BaseURL: srv.URL, CacheDir: cache}).VCEK(context.Background(), "Milan", fc.hwid[:], fc.tcb)
	if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "CHIP_ID") {
		t.Errorf("VCEK = %v, want ErrMismatch about the chip", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(cache, "Milan", "vcek")); len(entries) != 0 {
		t.Errorf("a mismatching certificate was cached: %v", entries)
	}
}

func TestRateLimitHonoursRetryAfter(t *testing.T) {
	fc := newFakeChip(t)
	srv := fc.kds(t)
	srv.refuse = func(n int, w http.ResponseWriter) bool {
		if n == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return true
		}
		if n == 2 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		}
		return false
	}
	c := New(Options{BaseURL: srv.URL, InitialBackoff: 50 * time.Millisecond})
	if _, err := c.VCEK(context.Background(), "Milan", fc.hwid[:], fc.tcb); err != nil {
		t.Fatal(err)
	}
	if srv.count() != 3 {
		t.Fatalf("%d requests, want 3", srv.count())
	}
	if gap := srv.requests[1].Sub(srv.requests[0]); gap < time.Second {
		t.Errorf("retried %s after a 429 with Retry-After: 1", gap)
	}
	if gap := srv.requests[2].Sub(srv.requests[1]); gap < 100*time.Millisecond {
		t.Errorf("second retry after %s, want the doubled backoff (100ms)", gap)
	}
}

func TestRateLimitGivesUp(t *testing.T) {
	fc := newFakeChip(t)
	t.Run("attempts exhausted", func(t *testing.T) {
		srv := fc.kds(t)
		srv.refuse = func(n int, w http.ResponseWriter) bool { w.WriteHeader(http.StatusTooManyRequests); return true }
		c := New(Options{BaseURL: srv.URL, InitialBackoff: time.Millisecond, MaxAttempts: 3})
		_, err := c.VCEK(context.Background(), "Milan", fc.hwid[:], fc.tcb)
		if !errors.Is(err, ErrRateLimited) || !strings.Contains(err.Error(), "after 3 attempts") {
			t.Errorf("VCEK = %v", err)
		}
		if srv.count() != 3 {
			t.Errorf("%d requests, want exactly 3", srv.count())
		}
	})
	t.Run("Retry-After beyond the limit", func(t *testing.T) {
		srv := fc.kds(t)
		srv.refuse = func(n int, w http.ResponseWriter) bool {
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(http.StatusTooManyRequests)
			return true
		}
		c := New(Options{BaseURL: srv.URL, MaxRetryWait: time.Minute})
		start := time.Now()
		_, err := c.VCEK(context.Background(), "Milan", fc.hwid[:], fc.tcb)
		if !errors.Is(err, ErrRateLimited) || !strings.Contains(err.Error(), "wait 1h0m0s") {
			t.Errorf("VCEK = %v", err)
		}
		if srv.count() != 1 || time.Since(start) > 30*time.Second {
			t.Errorf("%d requests in %s: it waited instead of failing", srv.count(), time.Since(start))
		}
	})
	t.Run("not found is not retried", func(t *testing.T) {
		srv := fc.kds(t)
		var other [64]byte
		other[0] = 9
		_, err := New(Options{BaseURL: srv.URL, InitialBackoff: time.Millisecond}).VCEK(context.Background(), "Milan", other[:], fc.tcb)
		if !errors.Is(err, ErrNotFound) || srv.count() != 1 {
			t.Errorf("VCEK = %v after %d requests", err, srv.count())
		}
	})
	t.Run("context cancelled while waiting", func(t *testing.T) {
		srv := fc.kds(t)
		srv.refuse = func(n int, w http.ResponseWriter) bool { w.WriteHeader(http.StatusServiceUnavailable); return true }
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := New(Options{BaseURL: srv.URL, InitialBackoff: 10 * time.Second}).VCEK(ctx, "Milan", fc.hwid[:], fc.tcb)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("VCEK = %v", err)
		}
	})
	t.Run("oversized body", func(t *testing.T) {
		srv := newFakeKDS(t, func(string) ([]byte, error) { return make([]byte, maxCertSize+1), nil })
		_, err := New(Options{BaseURL: srv.URL}).VCEK(context.Background(), "Milan", fc.hwid[:], fc.tcb)
		if err == nil || !strings.Contains(err.Error(), "larger than") {
			t.Errorf("VCEK = %v", err)
		}
	})
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Duration{
		"":                              0,
		"5":                             5 * time.Second,
		"-3":                            0,
		"soon":                          0,
		"999999999":                     24 * time.Hour,
		"Thu, 01 Jan 2026 12:00:30 GMT": 30 * time.Second,
		"Thu, 01 Jan 2026 11:00:00 GMT": 0,
	} {
		if got := retryAfter(in, now); got != want {
			t.Errorf("retryAfter(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestUnsupportedProductLines(t *testing.T) {
	c := New(Options{Offline: true})
	for _, line := range []string{"Turin", "Unknown", ""} {
		if _, err := c.VCEK(context.Background(), line, make([]byte, 64), 0); !errors.Is(err, ErrUnsupported) {
			t.Errorf("VCEK(%q) = %v", line, err)
		}
		if _, _, err := c.ProductChain(context.Background(), line, abi.VcekReportSigner); !errors.Is(err, ErrUnsupported) {
			t.Errorf("ProductChain(%q) = %v", line, err)
		}
	}
}

// cpuinfo of one processor of each kind, as /proc/cpuinfo shows it (trimmed).
const (
	milanCPUInfo   = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC 7763 64-Core Processor\n\nprocessor\t: 1\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
	genoaCPUInfo   = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC 9654 96-Core Processor\n"
	bergamoCPUInfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 160\n"
	turinCPUInfo   = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
	intelCPUInfo   = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
	romeCPUInfo    = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 49\n"
)

func writeCPUInfo(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cpuinfo")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// milanHost is the cpuinfo of the Milan host the real Milan sample comes from.
func milanHost(t *testing.T) string { return writeCPUInfo(t, milanCPUInfo) }

// The product line of the host's own CPU, from the first processor only.
func TestHostProductLine(t *testing.T) {
	for _, tc := range []struct{ cpuinfo, want, err string }{
		{milanCPUInfo, "Milan", ""},
		{genoaCPUInfo, "Genoa", ""},
		{bergamoCPUInfo, "Genoa", ""},
		{turinCPUInfo, "Turin", ""},
		{intelCPUInfo, "", `"GenuineIntel", not an AMD CPU`},
		{romeCPUInfo, "", "family 0x17 model 0x31 is no SEV-SNP product line"},
		{"processor\t: 0\n", "", "names no vendor_id"},
		{"vendor_id\t: AuthenticAMD\ncpu family\t: x\nmodel\t: 1\n", "", `cpu family "x"`},
	} {
		got, err := HostProductLine(strings.NewReader(tc.cpuinfo))
		if got != tc.want || (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%q: %q, %v; want %q, error with %q", tc.cpuinfo, got, err, tc.want, tc.err)
		}
	}
}

// A VERSION 2 report carries no CPU family and model: its VCEK is asked for under the
// product line of the host's own CPU, not under Milan by default. A Genoa host asks KDS's
// Genoa path; a host whose CPU is no SNP product fails naming it, before any request.
func TestVersion2ReportUsesTheHostsProductLine(t *testing.T) {
	srv := realMilanKDS(t)
	if r, _ := abi.ReportToProto(testdata.AttestationBytes); r.GetVersion() != 2 {
		t.Fatalf("the sample is a version %d report, want 2", r.GetVersion())
	}
	_ = New(Options{BaseURL: srv.URL, CPUInfo: writeCPUInfo(t, genoaCPUInfo)}).Complete(context.Background(), realEvidence())
	if srv.count() == 0 || !strings.HasPrefix(srv.paths[0], "/vcek/v1/Genoa/") {
		t.Errorf("a Genoa host's requests: %q, want the VCEK under /vcek/v1/Genoa/", srv.paths)
	}
	n := srv.count()
	err := New(Options{BaseURL: srv.URL, CPUInfo: writeCPUInfo(t, intelCPUInfo)}).Complete(context.Background(), realEvidence())
	if err == nil || !strings.Contains(err.Error(), "not an AMD CPU") || srv.count() != n {
		t.Errorf("an Intel host: %v after %d requests", err, srv.count()-n)
	}
	// An explicit product line wins over the host's CPU.
	if err := New(Options{BaseURL: srv.URL, CPUInfo: writeCPUInfo(t, intelCPUInfo), ProductLine: "Milan"}).Complete(context.Background(), realEvidence()); err != nil {
		t.Errorf("ProductLine Milan on an Intel host: %v", err)
	}
}
