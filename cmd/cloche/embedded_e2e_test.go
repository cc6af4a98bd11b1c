package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/internal/ghfake"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/reference"
)

// A cloche built as a release builds it, with its guest image's reference values embedded,
// verifies a build made with that guest image with no measurement flag, lists the values,
// and refuses a launch they do not list; a development cloche (none embedded) refuses to
// verify without a measurement source.
func TestEmbeddedReferenceValues(t *testing.T) {
	testfixture.RequireQEMU(t)
	dir := t.TempDir()
	gimg := testfixture.GuestImage(t)
	releaseKey := filepath.Join(dir, "release-key.pem")
	if err := provenance.GenerateKey(releaseKey, releaseKey+".pub"); err != nil {
		t.Fatal(err)
	}
	refs := filepath.Join(dir, "reference-values.sigstore.json")
	if code, _, stderr := cli(t, "reference", "create", "--guest-image", gimg, "--key", releaseKey, "--out", refs, "--vcpus", "2"); code != 0 {
		t.Fatalf("reference create: exit %d: %s", code, stderr)
	}
	released := buildWithEmbedded(t, refs, filepath.Join(dir, "cloche"))

	out, err := exec.Command(released, "reference", "list").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "sim   2 vCPUs") || !strings.Contains(string(out), "reference-values.sigstore.json") {
		t.Fatalf("reference list: %v\n%s", err, out)
	}
	if code, stdout, _ := cli(t, "reference", "list"); code != 0 || !strings.Contains(stdout, "no reference values are embedded") {
		t.Errorf("a development cloche lists embedded values: %s", stdout)
	}

	state := t.TempDir()
	gccDigest := testfixture.ToolchainDigest(t, testfixture.GCCToolchain(t))
	verifyArgs := func(r *runReport) []string {
		return []string{"verify", "--bundle", r.Bundle, "--key", r.PublicKey, "--allow-simulated", "--trusted-sim-root", r.SimRoot,
			"--source-dir", "../../examples/hello-c", "--toolchain-digest", gccDigest, r.Artifacts[0].Path}
	}
	r := interopBuild(t, state, "--vcpus", "2")
	cmd := exec.Command(released, verifyArgs(r)...)
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "PASSED") || !strings.Contains(string(out), "embedded reference values") {
		t.Fatalf("the released cloche does not verify with its embedded values: %v\n%s", err, out)
	}
	// A pinned measurement means that value only: the embedded values do not widen it.
	pinned := append([]string{"verify", "--measurement", strings.Repeat("00", 48)}, verifyArgs(r)[1:]...)
	if out, err := exec.Command(released, pinned...).CombinedOutput(); err == nil || !strings.Contains(string(out), "FAILED: measurement") {
		t.Errorf("a pin the launch does not match passed through the embedded values: %v\n%s", err, out)
	}
	if code, _, stderr := cli(t, verifyArgs(r)...); code == 0 || !strings.Contains(stderr, "measurement") {
		t.Errorf("a development cloche verified with no measurement source: exit %d %s", code, stderr)
	}
	// The host fetches the released guest image (the released cloche trusts it through its
	// embedded values), builds with it, and the provenance names the release, which the
	// verifier binds to the embedded values.
	gh := ghfake.NewGitHub(t, "acme/cloche")
	assets := map[string][]byte{reference.BundleFileName: []byte(readFile(t, refs))}
	for _, name := range reference.GuestReleaseAssets()[:3] {
		assets[name] = []byte(readFile(t, filepath.Join(gimg, name)))
	}
	tag := "v" + version
	gh.AddRelease("acme/cloche", tag, assets)
	t.Setenv("GITHUB_TOKEN", gh.Token)
	fetched := filepath.Join(dir, "released-image")
	if out, err := exec.Command(released, "image", "guest", "--release", tag, "--repo", "acme/cloche", "--github-api-url", gh.URL(), "--out", fetched).CombinedOutput(); err != nil {
		t.Fatalf("image guest --release: %v\n%s", err, out)
	}
	if code, _, stderr := cli(t, "image", "guest", "--release", tag, "--repo", "acme/cloche", "--github-api-url", gh.URL(), "--out", filepath.Join(dir, "dev-fetch")); code == 0 ||
		!strings.Contains(stderr, "trusted root") {
		t.Errorf("a development cloche fetched a release with nothing to trust it by: exit %d %s", code, stderr)
	}
	if code, _, stderr := cli(t, "image", "guest", "--release", "latest"); code == 0 || !strings.Contains(stderr, "--release") {
		t.Errorf("--release latest: exit %d %s", code, stderr)
	}
	rr := interopBuild(t, state, "--vcpus", "2", "--guest-image", fetched)
	out, err = exec.Command(released, append(verifyArgs(rr)[:len(verifyArgs(rr))-1], "--json", rr.Artifacts[0].Path)...).Output()
	var vr struct {
		GuestImageRelease string `json:"guestImageRelease"`
	}
	if err != nil || json.Unmarshal(out, &vr) != nil || vr.GuestImageRelease != "release "+tag {
		t.Errorf("a build with the released image: %v, guestImageRelease %q\n%s", err, vr.GuestImageRelease, out)
	}

	// The verify action of the released cloche, given no measurement input, uses its
	// embedded values too.
	summary := filepath.Join(dir, "summary.md")
	action := exec.Command(released, "action", "verify")
	action.Env = append(os.Environ(), "GITHUB_ACTIONS=true", "GITHUB_STEP_SUMMARY="+summary, "GITHUB_OUTPUT="+filepath.Join(dir, "output"),
		"RUNNER_TEMP="+dir, "INPUT_ARTIFACTS="+rr.Artifacts[0].Path, "INPUT_BUNDLE="+rr.Bundle, "INPUT_KEY="+rr.PublicKey,
		"INPUT_ALLOW_SIMULATED=true", "INPUT_TRUSTED_SIM_ROOT="+rr.SimRoot, "INPUT_TOOLCHAIN_DIGEST="+gccDigest,
		// A key-signed bundle of an untagged build: the action's only source pin is an annotated tag.
		"INPUT_UNSAFE_ALLOW_ANY_SOURCE=true")
	if out, err := action.CombinedOutput(); err != nil || !strings.Contains(readFile(t, summary), "PASSED") {
		t.Errorf("the released verify action with no measurement input: %v\n%s\n%s", err, out, readFile(t, summary))
	}

	// Another launch (1 vCPU) has a measurement the embedded values do not list.
	r1 := interopBuild(t, state, "--vcpus", "1")
	if out, err := exec.Command(released, verifyArgs(r1)...).CombinedOutput(); err == nil || !strings.Contains(string(out), "FAILED: measurement") {
		t.Errorf("a launch the embedded values do not list: %v\n%s", err, out)
	}
}

// buildWithEmbedded builds cloche from a copy of this tree with refs embedded, as the
// release workflow does before its attested build.
func buildWithEmbedded(t *testing.T, refs, out string) string {
	t.Helper()
	src := filepath.Join(t.TempDir(), "src")
	testfixture.CopyRepo(t, src)
	b, err := os.ReadFile(refs)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "reference", "embedded", filepath.Base(refs)), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(refs, reference.EmbeddedBundleSuffix) {
		t.Fatalf("%s is not named *%s", refs, reference.EmbeddedBundleSuffix)
	}
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./cmd/cloche")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false", "GOTOOLCHAIN=local")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build with embedded reference values: %v\n%s", err, b)
	}
	return out
}
