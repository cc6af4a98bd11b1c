package main

import (
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/verify"
	"github.com/cloche-dev/cloche/verify/verifytest"
)

// verify --vsa writes a VSA signed by the verifier's key on PASSED only, and refuses, before
// verifying, a summary signed by the build host's key.
func TestVerifyWritesVSA(t *testing.T) {
	dir := t.TempDir()
	k, err := verifytest.NewKit(filepath.Join(dir, "kit"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := k.Build(filepath.Join(dir, "build"), verifytest.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	simRoot := filepath.Join(dir, "sim-root.pem")
	if err := os.WriteFile(simRoot, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: k.SimRoot().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	verifierKey := filepath.Join(dir, "verifier-key.pem")
	if err := provenance.GenerateKey(verifierKey, verifierKey+".pub"); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "vsa.sigstore.json")
	args := func(extra ...string) []string {
		a := []string{"verify", "--bundle", f.BundlePath, "--key", k.HostKeyPath, "--allow-simulated", "--trusted-sim-root", simRoot,
			"--reference-values", f.ReferencePath, "--reference-key", k.ReleaseKeyPath, "--vsa", out,
			"--source-tree", verifytest.SourceTree, "--toolchain-digest", verifytest.ToolchainDigest}
		return append(append(a, extra...), f.Artifact)
	}
	uri := "git+https://github.com/example/hello@refs/tags/v1"

	for name, c := range map[string][]string{
		"host key":            {"--vsa-key", strings.TrimSuffix(k.HostKeyPath, ".pub"), "--vsa-resource-uri", uri},
		"no resource uri":     {"--vsa-key", verifierKey},
		"failed (wrong tree)": {"--vsa-key", verifierKey, "--vsa-resource-uri", uri, "--source-tree", strings.Repeat("0", 40)},
	} {
		code, _, stderr := cli(t, args(c...)...)
		if code == 0 {
			t.Errorf("%s: exit 0", name)
		}
		if _, err := os.Stat(out); err == nil {
			t.Fatalf("%s: a summary was written (%s)", name, stderr)
		}
		if name != "failed (wrong tree)" && (code != exitUsage || !strings.Contains(stderr, "--vsa")) {
			t.Errorf("%s: exit %d, want %d naming the flag: %s", name, code, exitUsage, stderr)
		}
	}

	code, stdout, stderr := cli(t, args("--vsa-key", verifierKey, "--vsa-resource-uri", uri, "--json")...)
	if code != 0 {
		t.Fatalf("verify --vsa: exit %d\n%s", code, stderr)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := provenance.LoadPublicKey(verifierKey + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	st, err := provenance.VerifyBundle(b, provenance.VerifyOptions{PublicKey: pub})
	if err != nil {
		t.Fatalf("the summary does not verify with the verifier's key: %v", err)
	}
	var doc struct {
		PredicateType string `json:"predicateType"`
		Predicate     struct {
			Verifier struct {
				ID string `json:"id"`
			} `json:"verifier"`
			ResourceURI        string   `json:"resourceUri"`
			VerificationResult string   `json:"verificationResult"`
			VerifiedLevels     []string `json:"verifiedLevels"`
		} `json:"predicate"`
	}
	if err := json.Unmarshal(st, &doc); err != nil {
		t.Fatal(err)
	}
	var res struct {
		Policy *verify.VSAPolicy `json:"policy"`
	}
	if err := json.Unmarshal([]byte(stdout), &res); err != nil || res.Policy == nil {
		t.Errorf("verify --json does not show the policy the summary digested: %v", err)
	}
	if doc.PredicateType != verify.VSAPredicateType || doc.Predicate.VerificationResult != "PASSED" || doc.Predicate.ResourceURI != uri ||
		doc.Predicate.Verifier.ID != verify.VerifierID(version) || len(doc.Predicate.VerifiedLevels) != 1 {
		t.Errorf("summary: %s", st)
	}
}
