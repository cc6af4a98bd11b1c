package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/provenance"
)

// TestRunAttestsCommit: `cloche run --commit HEAD --ref refs/tags/v1.0.0` of a git checkout;
// the verify command it prints pins the commit and tag the guest attested and passes, and
// a statement re-signed by the host with another commit fails source.commit.
func TestRunAttestsCommit(t *testing.T) {
	testfixture.RequireQEMU(t)
	src, sha := gitCheckout(t, map[string]string{"build.sh": "mkdir -p dist && echo attested > dist/out.txt\n"})
	state := t.TempDir()
	code, stdout, stderr := cli(t, "run", "--state-dir", state, "--source", src, "--out", filepath.Join(t.TempDir(), "out"), "--tee", "sim",
		"--guest-image", testfixture.GuestImage(t), "--toolchain", testfixture.BusyboxToolchain(t), "--accel", "tcg",
		"--commit", "HEAD", "--ref", "refs/tags/v1.0.0", "--json", "--", "sh", "build.sh")
	if code != 0 {
		t.Fatalf("cloche run exited %d:\n%s", code, stderr)
	}
	var r runReport
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatal(err)
	}
	if r.SourceCommit != sha || r.SourceTag != "v1.0.0" {
		t.Fatalf("attested commit %q tag %q, want %s v1.0.0", r.SourceCommit, r.SourceTag, sha)
	}
	if !strings.Contains(r.VerifyCommand, "--source-commit "+sha) || !strings.Contains(r.VerifyCommand, "--source-tag v1.0.0") {
		t.Errorf("the printed verify command does not pin the commit and tag: %s", r.VerifyCommand)
	}
	code, _, stderr = cli(t, r.Verify[1:]...)
	if code != 0 || !strings.Contains(stderr, "commit "+sha+", tag v1.0.0") {
		t.Fatalf("printed verify command: exit %d\n%s", code, stderr)
	}

	// The host re-signs a statement naming the commit it wants: only the result record's
	// commit counts.
	h := &helloBuild{state: state}
	payload := bundlePayload(t, r.Bundle)
	forged := bytes.ReplaceAll(payload, []byte(sha), []byte(strings.Repeat("0", 40)))
	args := append([]string{}, r.Verify[1:]...)
	args[2] = h.resign(t, forged)
	// Without the verifier's own commit pin (accepting any source), the statement's commit
	// is still held to the guest's.
	for i, a := range args {
		if a == "--source-commit" {
			args = append(args[:i], args[i+2:]...)
			break
		}
	}
	args = append([]string{args[0], "--unsafe-allow-any-source"}, args[1:]...)
	wantFailed(t, args, "source.commit", `the guest attested "`+sha)
	if _, err := provenance.ParseStatement(forged); err != nil {
		t.Fatalf("the forged statement does not parse: %v", err)
	}
}
