package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/internal/fileio"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
)

// examples/hello-c built in the VM, then rebuilt from its provenance alone (the bundle, the
// same source directory, the toolchain image with the recorded root hash): every artifact
// matches. A bundle that claims another digest for hello (result record and subjects
// altered consistently, re-signed with the host's key) gets the same rebuild, which now
// differs from it, and exit status 1.
func TestRebuildHelloEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("three QEMU boots")
	}
	testfixture.RequireQEMU(t)
	state := t.TempDir()
	h := buildHello(t, state)
	hello, _, err := fileio.SHA256(h.artifact)
	if err != nil {
		t.Fatal(err)
	}
	rebuildArgs := func(bundle string) []string {
		return []string{"rebuild", "--state-dir", state, "--source", "../../examples/hello-c", "--out", filepath.Join(t.TempDir(), "rebuilt"),
			"--guest-image", testfixture.GuestImage(t), "--toolchain", testfixture.GCCToolchain(t), "--accel", "tcg", "--quiet", bundle}
	}

	code, stdout, stderr := cli(t, rebuildArgs(h.bundle)...)
	if code != 0 {
		t.Fatalf("rebuild exited %d:\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	sums := mustSHA256(t, filepath.Join(h.out, provenance.ChecksumsName))
	want := "MATCH SHA256SUMS sha256:" + sums + "\nMATCH hello sha256:" + hello + "\nREBUILD MATCHED\n"
	if stdout != want {
		t.Fatalf("rebuild stdout:\n%s\nwant:\n%s", stdout, want)
	}

	// The host claims another hello: the result record and the subjects agree on it, so
	// the bundle is well formed, and the host's key signs it.
	claimed := strings.Repeat("0", 64)
	stmt := bundlePayload(t, h.bundle)
	old, _ := byproduct(t, stmt, provenance.ResultByproduct, nil)
	r, err := job.ParseResult(old)
	if err != nil {
		t.Fatal(err)
	}
	for i := range r.Artifacts {
		if r.Artifacts[i].Path == "hello" {
			r.Artifacts[i].SHA256 = claimed
		}
	}
	rb, err := job.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	_, stmt = byproduct(t, stmt, provenance.ResultByproduct, rb)
	claimedSums := sha256.Sum256(provenance.Checksums(r.Artifacts))
	stmt = setSubjects(t, stmt, map[string]string{"hello": claimed, provenance.ChecksumsName: hex.EncodeToString(claimedSums[:])})
	tampered := h.resign(t, stmt)

	code, stdout, stderr = cli(t, rebuildArgs(tampered)...)
	if code != exitFailed {
		t.Fatalf("rebuild of the altered bundle exited %d, want %d:\nstdout:\n%s\nstderr:\n%s", code, exitFailed, stdout, stderr)
	}
	want = "DIFFER SHA256SUMS want sha256:" + hex.EncodeToString(claimedSums[:]) + " got sha256:" + sums +
		"\nDIFFER hello want sha256:" + claimed + " got sha256:" + hello + "\nREBUILD DIFFERED\n"
	if stdout != want {
		t.Fatalf("rebuild stdout:\n%s\nwant:\n%s", stdout, want)
	}
}

// setSubjects replaces the digests of the named subjects of a statement.
func setSubjects(t *testing.T, stmt []byte, digests map[string]string) []byte {
	t.Helper()
	var s map[string]any
	if err := json.Unmarshal(stmt, &s); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, sub := range s["subject"].([]any) {
		m := sub.(map[string]any)
		if d, ok := digests[m["name"].(string)]; ok {
			m["digest"] = map[string]any{"sha256": d}
			n++
		}
	}
	if n != len(digests) {
		t.Fatalf("statement has %d of the subjects %v", n, digests)
	}
	out, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func mustSHA256(t *testing.T, path string) string {
	t.Helper()
	sum, _, err := fileio.SHA256(path)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}
