package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	sevtestdata "github.com/google/go-sev-guest/verify/testdata"
	tdxabi "github.com/google/go-tdx-guest/abi"
	tdxpb "github.com/google/go-tdx-guest/proto/tdx"
	tdxtestdata "github.com/google/go-tdx-guest/testing/testdata"
)

func writeSamples(t *testing.T) (milan, vcek, tdx string) {
	t.Helper()
	dir := t.TempDir()
	milan, vcek, tdx = filepath.Join(dir, "milan.bin"), filepath.Join(dir, "vcek.der"), filepath.Join(dir, "quote.dat")
	for p, b := range map[string][]byte{milan: sevtestdata.AttestationBytes, vcek: sevtestdata.VcekBytes, tdx: tdxtestdata.RawQuote} {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return milan, vcek, tdx
}

// The acceptance samples through the CLI: real vendor evidence, offline.
func TestEvidenceVerifyRealSamples(t *testing.T) {
	milan, vcek, tdx := writeSamples(t)

	// The Milan sample is a debug guest: rejected by default, accepted for samples.
	code, stdout, stderr := cli(t, "evidence", "verify", "--tee", "snp", "--certs", vcek, "--at", "2022-09-24T01:00:00Z", milan)
	if code != exitFailed || !strings.HasPrefix(stderr, "FAILED: evidence.policy: ") || !strings.Contains(stderr, "DEBUG") || stdout != "" {
		t.Fatalf("debug Milan without --allow-debug: code %d stderr %q stdout %q", code, stderr, stdout)
	}
	// Its 2022 firmware is below the embedded Milan minimum TCB.
	code, _, stderr = cli(t, "evidence", "verify", "--tee", "snp", "--certs", vcek, "--at", "2022-09-24T01:00:00Z", "--allow-debug", milan)
	if code != exitFailed || !strings.HasPrefix(stderr, "FAILED: evidence.tcb: ") || !strings.Contains(stderr, "minimum 3") {
		t.Fatalf("Milan below the default minimum TCB: code %d stderr %q", code, stderr)
	}
	code, stdout, stderr = cli(t, "evidence", "verify", "--tee", "snp", "--certs", vcek, "--at", "2022-09-24T01:00:00Z", "--allow-debug", "--no-default-min-tcb",
		"--measurement", "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01", milan)
	if code != 0 || !strings.Contains(stderr, "WARNING: revocation not checked") || !strings.Contains(stderr, "PASSED: snp evidence verified offline") || stdout != "" {
		t.Fatalf("Milan with --allow-debug: code %d stderr %q stdout %q", code, stderr, stdout)
	}
	code, _, stderr = cli(t, "evidence", "verify", "--tee", "snp", "--certs", vcek, "--at", "2022-09-24T01:00:00Z", "--allow-debug", "--min-tcb", "microcode=255", milan)
	if code != exitFailed || !strings.HasPrefix(stderr, "FAILED: evidence.tcb: ") || !strings.Contains(stderr, "microcode SPL is") {
		t.Fatalf("--min-tcb: code %d stderr %q", code, stderr)
	}

	// The TDX production quote comes without its event log: refused unless the replay is
	// skipped, or given a log, which does not replay to the quote's RTMR0.
	code, _, stderr = cli(t, "evidence", "verify", "--tee", "tdx", "--at", "2023-07-01T01:00:00Z", tdx)
	if code != exitFailed || !strings.HasPrefix(stderr, "FAILED: evidence.event-log: ") || !strings.Contains(stderr, "carries no event log") {
		t.Fatalf("TDX quote without an event log: code %d stderr %q", code, stderr)
	}
	eventLog := filepath.Join(t.TempDir(), "CCEL")
	if err := os.WriteFile(eventLog, []byte("not a TCG event log"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = cli(t, "evidence", "verify", "--tee", "tdx", "--at", "2023-07-01T01:00:00Z", "--event-log", eventLog, tdx)
	if code != exitFailed || !strings.HasPrefix(stderr, "FAILED: evidence.event-log: ") || !strings.Contains(stderr, "parsing the event log") {
		t.Fatalf("TDX quote with a garbage --event-log: code %d stderr %q", code, stderr)
	}
	// stdout stays empty (go-tdx-guest's logger writes there).
	code, stdout, stderr = cli(t, "evidence", "verify", "--tee", "tdx", "--at", "2023-07-01T01:00:00Z", "--insecure-skip-event-log", tdx)
	if code != 0 || !strings.Contains(stderr, "PASSED: tdx") || !strings.Contains(stderr, "WARNING: the TDX event log was NOT replayed") || stdout != "" {
		t.Fatalf("TDX quote: code %d stderr %q stdout %q", code, stderr, stdout)
	}
	code, _, stderr = cli(t, "evidence", "verify", "--tee", "tdx", "--at", "2023-07-01T01:00:00Z", "--insecure-skip-event-log", "--host-data", strings.Repeat("ab", 32), tdx)
	if code != exitFailed || !strings.HasPrefix(stderr, "FAILED: binding.host-data: ") || !strings.Contains(stderr, "MRCONFIGID") {
		t.Fatalf("TDX --host-data: code %d stderr %q", code, stderr)
	}

	// Usage errors exit 2 and name the flag.
	for _, args := range [][]string{
		{"evidence", "verify", milan},
		{"evidence", "verify", "--tee", "sgx", milan},
		{"evidence", "verify", "--tee", "snp", "--min-tcb", "fmc=1", milan},
		{"evidence", "verify", "--tee", "snp", "--host-data", "abcd", milan},
		{"evidence", "verify", "--tee", "snp", "--at", "yesterday", milan},
		{"evidence", "verify", "--tee", "tdx", "--event-log", milan, "--insecure-skip-event-log", tdx},
	} {
		code, _, stderr := cli(t, args...)
		if code != exitUsage || !strings.HasPrefix(stderr, "FAILED: options: ") {
			t.Errorf("%v: code %d stderr %q", args, code, stderr)
		}
	}
	// Evidence of the wrong kind fails as evidence.
	code, _, stderr = cli(t, "evidence", "verify", "--tee", "tdx", milan)
	if code != exitFailed || !strings.HasPrefix(stderr, "FAILED: evidence.parse: ") {
		t.Errorf("SNP report as tdx: code %d stderr %q", code, stderr)
	}
}

func TestEvidenceShow(t *testing.T) {
	milan, _, tdx := writeSamples(t)
	code, stdout, stderr := cli(t, "evidence", "show", tdx)
	if code != 0 || !strings.Contains(stdout, "MRTD: 6363b804") || !strings.Contains(stdout, "RTMR2: ") || stderr != "" {
		t.Fatalf("show quote: code %d stdout %q stderr %q", code, stdout, stderr)
	}
	if code, stdout, _ := cli(t, "evidence", "show", milan); code != 0 || !strings.Contains(stdout, "PRODUCT_LINE: unknown (a VERSION 2 report") {
		t.Fatalf("show Milan report: code %d stdout %q, want the product line", code, stdout)
	}
	code, stdout, _ = cli(t, "evidence", "show", "--json", milan)
	var doc struct {
		TEE    string `json:"tee"`
		Fields []struct{ Name, Value string }
	}
	if code != 0 || json.Unmarshal([]byte(stdout), &doc) != nil || doc.TEE != "snp" {
		t.Fatalf("show --json: code %d stdout %q", code, stdout)
	}
	found := false
	for _, f := range doc.Fields {
		found = found || (f.Name == "POLICY" && strings.HasPrefix(f.Value, "0xb0000 "))
	}
	if !found {
		t.Errorf("no POLICY field in %q", stdout)
	}
	bad := filepath.Join(t.TempDir(), "bad")
	if err := os.WriteFile(bad, []byte("not evidence"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := cli(t, "evidence", "show", bad); code != exitFailed || !strings.Contains(stderr, "neither evidence JSON") {
		t.Errorf("show garbage: code %d stderr %q", code, stderr)
	}
}

// --tdx-rtmr0 pins RTMR0 (which covers the host's ACPI tables) on Intel's real quote: its
// own value passes, any other fails naming RTMR0, a malformed one is a usage error.
func TestEvidenceVerifyTDXRTMR0(t *testing.T) {
	_, _, tdx := writeSamples(t)
	q, err := tdxabi.QuoteToProto(tdxtestdata.RawQuote)
	if err != nil {
		t.Fatal(err)
	}
	rtmr0 := q.(*tdxpb.QuoteV4).GetTdQuoteBody().GetRtmrs()[0]
	at := []string{"evidence", "verify", "--tee", "tdx", "--at", "2023-07-01T01:00:00Z", "--insecure-skip-event-log"}
	if code, _, stderr := cli(t, append(at, "--tdx-rtmr0", hex.EncodeToString(rtmr0), tdx)...); code != 0 {
		t.Fatalf("the quote's own RTMR0: exit %d %s", code, stderr)
	}
	other := bytes.Clone(rtmr0)
	other[0] ^= 1
	code, _, stderr := cli(t, append(at, "--tdx-rtmr0", hex.EncodeToString(other), tdx)...)
	if code != exitFailed || !strings.Contains(stderr, "RTMR0") {
		t.Errorf("another RTMR0: exit %d %s", code, stderr)
	}
	code, _, stderr = cli(t, append(at, "--tdx-rtmr0", "abcd", tdx)...)
	if code != exitUsage || !strings.Contains(stderr, "--tdx-rtmr0") {
		t.Errorf("short RTMR0: exit %d %s", code, stderr)
	}
}

// A PASSED evidence verify says which bindings it did not check.
func TestEvidenceVerifyWarnsUncheckedBindings(t *testing.T) {
	_, _, tdx := writeSamples(t)
	code, _, stderr := cli(t, "evidence", "verify", "--tee", "tdx", "--at", "2023-07-01T01:00:00Z", "--insecure-skip-event-log", tdx)
	for _, w := range []string{"WARNING: measurement not checked", "WARNING: HOST_DATA / MRCONFIGID not checked", "WARNING: REPORT_DATA not checked"} {
		if code != 0 || !strings.Contains(stderr, w) {
			t.Errorf("exit %d, missing %q in:\n%s", code, w, stderr)
		}
	}
}
