package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/provenance"
)

// cli runs the cloche CLI in-process and returns its exit code, stdout and stderr.
func cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// helloBuild is one real build of examples/hello-c in the VM with the gcc toolchain.
type helloBuild struct {
	state, out, bundle, pub, simRoot, artifact, guest string
	// expect are the source and toolchain expectations a verifier of this build gives.
	expect []string
}

func buildHello(t *testing.T, state string) *helloBuild {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	code, _, stderr := cli(t, "run", "--state-dir", state, "--source", "../../examples/hello-c", "--out", out, "--tee", "sim",
		"--guest-image", testfixture.GuestImage(t), "--toolchain", testfixture.GCCToolchain(t), "--accel", "tcg", "--", "make")
	if code != 0 {
		t.Fatalf("cloche run exited %d:\n%s", code, stderr)
	}
	for _, phase := range []string{`msg="build: started" tee=sim`, `msg="build: packing the source"`, `msg="build: VM running"`,
		`msg="build: collecting, checking and signing the output"`, `msg="build: done" elapsed=`} {
		if !strings.Contains(stderr, phase) {
			t.Errorf("cloche run's progress lacks %q:\n%s", phase, stderr)
		}
	}
	_, root, _ := cli(t, "sim-root", "--state-dir", state)
	return &helloBuild{state: state, out: out, bundle: filepath.Join(out, "provenance.sigstore.json"),
		pub: filepath.Join(state, "signing-key.pem.pub"), simRoot: strings.TrimSpace(root), artifact: filepath.Join(out, "hello"),
		guest: testfixture.GuestImage(t), expect: helloExpect(t, testfixture.GCCToolchain(t))}
}

// helloExpect are the expectations on a build of examples/hello-c with toolchain: its source
// directory and the toolchain's verity root.
func helloExpect(t *testing.T, toolchain string) []string {
	return []string{"--source-dir", "../../examples/hello-c", "--toolchain-digest", testfixture.ToolchainDigest(t, toolchain)}
}

func (h *helloBuild) verifyArgs(bundle string, artifacts ...string) []string {
	if len(artifacts) == 0 {
		artifacts = []string{h.artifact}
	}
	return append(h.verifyFlags(bundle), artifacts...)
}

// verifyFlags is verify of bundle with every trust flag and expectation, no artifact.
func (h *helloBuild) verifyFlags(bundle string) []string {
	return append([]string{"verify", "--bundle", bundle, "--key", h.pub, "--guest-image", h.guest, "--allow-simulated", "--trusted-sim-root", h.simRoot}, h.expect...)
}

// bundlePayload returns the DSSE payload (the statement) of a bundle file.
func bundlePayload(t *testing.T, path string) []byte {
	t.Helper()
	var b struct {
		MediaType    string `json:"mediaType"`
		DSSEEnvelope struct {
			Payload     string `json:"payload"`
			PayloadType string `json:"payloadType"`
		} `json:"dsseEnvelope"`
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatal(err)
	}
	if b.MediaType != "application/vnd.dev.sigstore.bundle.v0.3+json" || b.DSSEEnvelope.PayloadType != "application/vnd.in-toto+json" {
		t.Fatalf("bundle media type %q payload type %q", b.MediaType, b.DSSEEnvelope.PayloadType)
	}
	p, err := base64.StdEncoding.DecodeString(b.DSSEEnvelope.Payload)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// byproduct gets or replaces the content of a named byproduct in a statement.
func byproduct(t *testing.T, stmt []byte, name string, replace []byte) ([]byte, []byte) {
	t.Helper()
	var s map[string]any
	if err := json.Unmarshal(stmt, &s); err != nil {
		t.Fatal(err)
	}
	rd := s["predicate"].(map[string]any)["runDetails"].(map[string]any)
	for _, bp := range rd["byproducts"].([]any) {
		m := bp.(map[string]any)
		if m["name"] != name {
			continue
		}
		old, err := base64.StdEncoding.DecodeString(m["content"].(string))
		if err != nil {
			t.Fatal(err)
		}
		if replace != nil {
			m["content"] = base64.StdEncoding.EncodeToString(replace)
		}
		out, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		return old, out
	}
	t.Fatalf("no byproduct %q", name)
	return nil, nil
}

// resign signs a (tampered) statement with the build's own key, as a hostile runner host
// that holds the key could.
func (h *helloBuild) resign(t *testing.T, stmt []byte) string {
	t.Helper()
	signer, err := provenance.LoadKeySigner(filepath.Join(h.state, "signing-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := signer.SignStatement(context.Background(), stmt)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "tampered.sigstore.json")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func wantFailed(t *testing.T, args []string, check, reason string) {
	t.Helper()
	code, _, stderr := cli(t, args...)
	if code != 1 {
		t.Fatalf("exit code %d, want 1; stderr:\n%s", code, stderr)
	}
	prefix := "FAILED: " + check + ": "
	if !strings.HasPrefix(stderr, prefix) || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("stderr = %q, want one line starting %q", stderr, prefix)
	}
	if !strings.Contains(stderr, reason) {
		t.Fatalf("stderr = %q, want it to contain %q", stderr, reason)
	}
}

func TestHelloEndToEnd(t *testing.T) {
	testfixture.RequireQEMU(t)
	state := t.TempDir()
	h := buildHello(t, state)

	// The artifact runs on the host.
	out, err := exec.Command(h.artifact).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Hello from a confidential build!") {
		t.Fatalf("out/hello: %v: %q", err, out)
	}
	// The bundle's payload is an in-toto v1 statement with the SLSA v1 predicate and the
	// artifact as subject.
	var stmt struct {
		Type          string `json:"_type"`
		PredicateType string `json:"predicateType"`
		Subject       []struct {
			Name   string            `json:"name"`
			Digest map[string]string `json:"digest"`
		} `json:"subject"`
	}
	payload := bundlePayload(t, h.bundle)
	if err := json.Unmarshal(payload, &stmt); err != nil {
		t.Fatal(err)
	}
	if stmt.Type != "https://in-toto.io/Statement/v1" || stmt.PredicateType != "https://slsa.dev/provenance/v1" {
		t.Fatalf("statement type %q predicate %q", stmt.Type, stmt.PredicateType)
	}
	if len(stmt.Subject) != 2 || stmt.Subject[0].Name != "hello" || len(stmt.Subject[0].Digest["sha256"]) != 64 || stmt.Subject[1].Name != "SHA256SUMS" {
		t.Fatalf("subjects = %+v, want exactly hello with a sha256, then SHA256SUMS", stmt.Subject)
	}

	code, _, stderr := cli(t, h.verifyArgs(h.bundle)...)
	if code != 0 || !strings.HasPrefix(stderr, "PASSED: ") || !strings.Contains(stderr, "SIMULATED") {
		t.Fatalf("verify: exit %d, stderr %q; want PASSED naming the simulated TEE", code, stderr)
	}

	// A second build of the same inputs: its evidence is genuine, but for another run.
	other := buildHello(t, state)

	t.Run("artifact changed by one byte", func(t *testing.T) {
		b, _ := os.ReadFile(h.artifact)
		b[len(b)/2] ^= 0x01
		p := filepath.Join(t.TempDir(), "hello")
		os.WriteFile(p, b, 0o755)
		wantFailed(t, h.verifyArgs(h.bundle, p), "subject", "artifact hash does not match")
	})
	t.Run("statement changed without re-signing", func(t *testing.T) {
		raw, _ := os.ReadFile(h.bundle)
		var b map[string]any
		json.Unmarshal(raw, &b)
		env := b["dsseEnvelope"].(map[string]any)
		changed := bytes.Replace(payload, []byte(`"make"`), []byte(`"mak3"`), 1)
		if bytes.Equal(changed, payload) {
			t.Fatal("test did not change the statement")
		}
		env["payload"] = base64.StdEncoding.EncodeToString(changed)
		raw, _ = json.Marshal(b)
		p := filepath.Join(t.TempDir(), "b.json")
		os.WriteFile(p, raw, 0o644)
		wantFailed(t, h.verifyArgs(p), "signature", "")
	})
	t.Run("wrong key", func(t *testing.T) {
		dir := t.TempDir()
		if err := provenance.GenerateKey(filepath.Join(dir, "k.pem"), filepath.Join(dir, "k.pub")); err != nil {
			t.Fatal(err)
		}
		args := h.verifyArgs(h.bundle)
		args[4] = filepath.Join(dir, "k.pub")
		wantFailed(t, args, "signature", "")
	})
	t.Run("report byte changed", func(t *testing.T) {
		evJSON, _ := byproduct(t, payload, provenance.EvidenceByproduct, nil)
		ev, err := attest.ParseEvidence(evJSON)
		if err != nil {
			t.Fatal(err)
		}
		ev.Report[0x90] ^= 0x01 // one MEASUREMENT bit
		evJSON, _ = ev.Marshal()
		_, stmt := byproduct(t, payload, provenance.EvidenceByproduct, evJSON)
		wantFailed(t, h.verifyArgs(h.resign(t, stmt)), "evidence.signature", "signature")
	})
	t.Run("replayed report from another build", func(t *testing.T) {
		otherEv, _ := byproduct(t, bundlePayload(t, other.bundle), provenance.EvidenceByproduct, nil)
		_, stmt := byproduct(t, payload, provenance.EvidenceByproduct, otherEv)
		wantFailed(t, h.verifyArgs(h.resign(t, stmt)), "binding.host-data", "not launched with this manifest")
	})
	t.Run("manifest changed", func(t *testing.T) {
		m, _ := byproduct(t, payload, provenance.ManifestByproduct, nil)
		m2 := bytes.Replace(m, []byte(`["make"]`), []byte(`["make","all"]`), 1)
		if bytes.Equal(m, m2) {
			t.Fatal("test did not change the manifest")
		}
		_, stmt := byproduct(t, payload, provenance.ManifestByproduct, m2)
		wantFailed(t, h.verifyArgs(h.resign(t, stmt)), "binding.host-data", "not launched with this manifest")
	})
	t.Run("result record changed", func(t *testing.T) {
		r, _ := byproduct(t, payload, provenance.ResultByproduct, nil)
		r2 := bytes.Replace(r, []byte(`"durationMillis":`), []byte(`"durationMillis":1`), 1)
		if bytes.Equal(r, r2) {
			t.Fatal("test did not change the result record")
		}
		_, stmt := byproduct(t, payload, provenance.ResultByproduct, r2)
		wantFailed(t, h.verifyArgs(h.resign(t, stmt)), "binding.report-data", "does not vouch for this result record")
	})
	t.Run("simulated evidence without the opt-in", func(t *testing.T) {
		wantFailed(t, append([]string{"verify", "--bundle", h.bundle, "--key", h.pub, "--guest-image", h.guest, h.artifact}, h.expect...), "evidence.simulated", "--allow-simulated --trusted-sim-root")
	})
	t.Run("no trusted measurement source", func(t *testing.T) {
		wantFailed(t, append([]string{"verify", "--bundle", h.bundle, "--key", h.pub, "--allow-simulated", "--trusted-sim-root", h.simRoot, h.artifact}, h.expect...),
			"measurement", "no trusted source of launch measurements: give signed reference values (--reference-values FILE --reference-key FILE)")
	})
	t.Run("measurement skipped loudly", func(t *testing.T) {
		code, _, stderr := cli(t, append([]string{"verify", "--bundle", h.bundle, "--key", h.pub, "--insecure-skip-measurement", "--allow-simulated", "--trusted-sim-root", h.simRoot, h.artifact}, h.expect...)...)
		if code != 0 || !strings.Contains(stderr, "WARNING: measurement NOT checked") || !strings.Contains(stderr, "NOT checked; source tree") {
			t.Fatalf("--insecure-skip-measurement: exit %d stderr %q", code, stderr)
		}
	})
	t.Run("no source or toolchain expectation", func(t *testing.T) {
		base := []string{"verify", "--bundle", h.bundle, "--key", h.pub, "--guest-image", h.guest, "--allow-simulated", "--trusted-sim-root", h.simRoot, h.artifact}
		wantFailed(t, append(slices.Clone(base), h.expect[2:]...), "expect.source", "--source-commit, --source-tree, --source-dir or keyless --source-uri (--source-tag alone binds no content")
		wantFailed(t, append(slices.Clone(base), h.expect[:2]...), "expect.toolchain", "--toolchain-digest")
		wantFailed(t, append(slices.Clone(base), "--source-dir", "../../examples", "--toolchain-digest", h.expect[3]), "source.tree", "expected")
		code, _, stderr := cli(t, append(slices.Clone(base), "--unsafe-allow-any-source", "--unsafe-allow-any-toolchain")...)
		if code != 0 || !strings.Contains(stderr, "WARNING: source NOT pinned (--unsafe-allow-any-source)") ||
			!strings.Contains(stderr, "WARNING: toolchain NOT pinned (--unsafe-allow-any-toolchain)") {
			t.Fatalf("unsafe opt-outs: exit %d stderr %q, want PASSED with both warnings", code, stderr)
		}
	})
	t.Run("json", func(t *testing.T) {
		code, stdout, _ := cli(t, append(h.verifyArgs(h.bundle), "--json")...)
		var doc struct {
			Passed bool `json:"passed"`
			Checks []struct{ Name, Outcome string }
		}
		if err := json.Unmarshal([]byte(stdout), &doc); err != nil || code != 0 || !doc.Passed || len(doc.Checks) < 8 {
			t.Fatalf("--json: exit %d, %v, %q", code, err, stdout)
		}
	})
	t.Run("opt-in without a trusted root", func(t *testing.T) {
		code, _, stderr := cli(t, "verify", "--bundle", h.bundle, "--key", h.pub, "--guest-image", h.guest, "--allow-simulated", h.artifact)
		if code != 2 || !strings.Contains(stderr, "--trusted-sim-root") {
			t.Fatalf("exit %d stderr %q, want usage error 2 naming --trusted-sim-root", code, stderr)
		}
	})
	t.Run("SHA256SUMS verifies with --checksums", func(t *testing.T) {
		sums := filepath.Join(h.out, "SHA256SUMS")
		b, err := os.ReadFile(sums)
		if err != nil || !strings.HasSuffix(string(b), "  hello\n") || strings.Count(string(b), "\n") != 1 {
			t.Fatalf("SHA256SUMS = %q, %v; want one line for hello", b, err)
		}
		args := append(h.verifyFlags(h.bundle), "--checksums", sums)
		code, _, stderr := cli(t, args...)
		if code != 0 || !strings.HasPrefix(stderr, "PASSED: ") {
			t.Fatalf("verify --checksums SHA256SUMS: exit %d, stderr %q", code, stderr)
		}
	})
	t.Run("tampered SHA256SUMS", func(t *testing.T) {
		// A swapped hello with a SHA256SUMS that lists it: the file list agrees with
		// itself, but SHA256SUMS is no longer the attested subject.
		dir := t.TempDir()
		swapped := []byte("#!/bin/sh\necho swapped\n")
		os.WriteFile(filepath.Join(dir, "hello"), swapped, 0o755)
		sum := sha256.Sum256(swapped)
		os.WriteFile(filepath.Join(dir, "SHA256SUMS"), []byte(hex.EncodeToString(sum[:])+"  hello\n"), 0o644)
		wantFailed(t, append(h.verifyFlags(h.bundle), "--checksums", filepath.Join(dir, "SHA256SUMS")), "subject", "")
	})
	t.Run("file changed beside SHA256SUMS", func(t *testing.T) {
		dir := t.TempDir()
		b, _ := os.ReadFile(filepath.Join(h.out, "SHA256SUMS"))
		os.WriteFile(filepath.Join(dir, "SHA256SUMS"), b, 0o644)
		os.WriteFile(filepath.Join(dir, "hello"), []byte("not hello"), 0o755)
		wantFailed(t, append(h.verifyFlags(h.bundle), "--checksums", filepath.Join(dir, "SHA256SUMS")), "checksums", "lists hello")
	})
	t.Run("measurement pinned", func(t *testing.T) {
		_, m, _ := cli(t, "measure", "--tee", "sim", "--guest-image", testfixture.GuestImage(t), "--vcpus", "2", "--memory", "2048")
		code, _, stderr := cli(t, append(h.verifyArgs(h.bundle), "--measurement", strings.TrimSpace(m))...)
		if code != 0 {
			t.Fatalf("verify with the measurement from `cloche measure`: %s", stderr)
		}
		wantFailed(t, append(h.verifyArgs(h.bundle), "--measurement", strings.Repeat("00", 48)), "measurement", "")
	})
}
