package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/internal/ghfake"
	"github.com/cloche-dev/cloche/internal/testfixture"
)

// TestActionBuildThroughAgent is the `uses:` path through the agent, keyless: the build
// action submits the job to a real agent, which builds it in a VM (simulated TEE) and
// returns the statement unsigned; the action signs it with the workflow's OIDC identity
// (local Fulcio and Rekor), publishes to the release (local GitHub API), and the verify
// action passes the release.
func TestActionBuildThroughAgent(t *testing.T) {
	testfixture.RequireQEMU(t)
	state, err := os.MkdirTemp("", "cca")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) }) // after the agent stopped
	guest := testfixture.GuestImage(t)
	socket, agentErr := startAgent(t, state, guest, testfixture.BusyboxToolchain(t))

	src, sha := gitCheckout(t, map[string]string{"README": "widget sources\n"})
	claims := widgetClaims(sha)
	ss := ghfake.NewSigstore(t, claims)
	gh := ghfake.NewGitHub(t, "acme/widget")
	trustedRoot := filepath.Join(t.TempDir(), "trusted_root.json")
	ss.WriteTrustedRoot(trustedRoot)
	outputs, summary := jobEnv(t, ss, gh, sha)
	out := filepath.Join(t.TempDir(), "out")
	setInputs(t, map[string]string{
		"run":          "mkdir -p dist && cp README dist/widget.txt && echo built-on-the-agent >> dist/widget.txt",
		"source":       src,
		"artifacts":    "dist/*",
		"tee":          "sim",
		"timeout":      "2m",
		"fulcio-url":   ss.Fulcio.URL,
		"rekor-url":    ss.Rekor.URL,
		"github-token": gh.Token,
		"agent-socket": socket,
		"out":          out,
	})
	// The action's own state directory is empty: no images, keys or simulated TEE there.
	code, stdout, stderr := cli(t, "action", "build", "--state-dir", t.TempDir())
	if code != 0 {
		t.Fatalf("action build exited %d\nstdout:\n%s\nstderr:\n%s\nagent:\n%s", code, stdout, stderr, agentErr.String())
	}
	checkAgentBuildLog(t, stdout, socket)
	checkAgentBuildOutputs(t, readFile(t, outputs), readFile(t, summary), out, sha)
	checkAgentJob(t, socket)
	bundle := checkKeylessRelease(t, gh)

	_, simRoot, _ := cli(t, "sim-root", "--state-dir", state)
	for _, k := range []string{"run", "source", "artifacts", "tee", "timeout", "fulcio-url", "rekor-url", "agent-socket", "out"} {
		t.Setenv("INPUT_"+strings.ToUpper(strings.ReplaceAll(k, "-", "_")), "")
	}
	setInputs(t, map[string]string{"repository": "acme/widget", "tag": "v1.0.0", "trusted-root": trustedRoot, "allow-simulated": "true",
		"trusted-sim-root": strings.TrimSpace(simRoot), "github-token": gh.Token, "guest-image": guest,
		"toolchain-digest": testfixture.ToolchainDigest(t, testfixture.BusyboxToolchain(t))})
	_, vsummary := jobEnv(t, ss, gh, sha)
	code, vout, verr := cli(t, "action", "verify", "--state-dir", t.TempDir())
	if sum := readFile(t, vsummary); code != 0 || !strings.Contains(sum, "PASSED") || !strings.Contains(sum, "| widget.txt |") {
		t.Fatalf("verify action exited %d\nsummary:\n%s\nstdout:\n%s\nstderr:\n%s", code, sum, vout, verr)
	}

	t.Run("the statement's invocation is the workflow run", func(t *testing.T) {
		if st := bundlePayload(t, bundle); !strings.Contains(string(st), `"invocationId":"https://github.com/acme/widget/actions/runs/4242/attempts/1"`) {
			t.Errorf("the signed statement does not name the workflow run: %.3000s", st)
		}
	})
	t.Run("signing key is the agent's key", func(t *testing.T) {
		keyOut := filepath.Join(t.TempDir(), "out")
		setInputs(t, map[string]string{"run": "mkdir -p dist && cp README dist/widget.txt", "source": src, "artifacts": "dist/*",
			"agent-socket": socket, "signing": "key", "out": keyOut, "github-token": "", "guest-image": ""})
		jobEnv(t, ss, gh, sha)
		t.Setenv("GITHUB_REF", "refs/heads/main") // no release
		code, stdout, stderr := cli(t, "action", "build", "--state-dir", t.TempDir())
		if code != 0 {
			t.Fatalf("action build, signing key, exited %d\n%s\n%s", code, stdout, stderr)
		}
		b := readFile(t, filepath.Join(keyOut, "provenance.sigstore.json"))
		if !strings.Contains(b, `"publicKey"`) || strings.Contains(b, `"certificate"`) {
			t.Errorf("the bundle is not signed with the agent's key: %.300s", b)
		}
		if _, err := os.Stat(filepath.Join(keyOut, "provenance.intoto.json")); !os.IsNotExist(err) {
			t.Errorf("an unsigned statement came back with signing key: %v", err)
		}
	})
	t.Run("inputs the agent sets are refused", func(t *testing.T) {
		setInputs(t, map[string]string{"run": "true", "source": src, "agent-socket": socket, "guest-image": guest})
		jobEnv(t, ss, gh, sha)
		code, stdout, _ := cli(t, "action", "build", "--state-dir", t.TempDir())
		if code == 0 || !strings.Contains(stdout, "input guest-image is set by the configuration of the cloche agent") {
			t.Errorf("guest-image through the agent: exit %d\n%s", code, stdout)
		}
	})
}

// checkAgentBuildLog: the build log streams into the job log, grouped, with workflow
// commands off, and the simulated TEE is announced.
func checkAgentBuildLog(t *testing.T, stdout, socket string) {
	t.Helper()
	gi, si, ei := strings.Index(stdout, "::group::"), strings.Index(stdout, "::stop-commands::"), strings.Index(stdout, "::endgroup::")
	if gi < 0 || si < gi || ei < si || !strings.Contains(stdout, "through the cloche agent at "+socket) {
		t.Errorf("job log lacks the group / stop-commands framing around the build log:\n%s", stdout)
	}
	if li := strings.Index(stdout, `msg="running the command"`); li < si || li > ei {
		t.Errorf("the build log is outside the group:\n%s", stdout)
	}
	if !strings.Contains(stdout, "::warning::SIMULATED TEE") {
		t.Errorf("job log does not warn of the simulated TEE:\n%s", stdout)
	}
}

// checkAgentBuildOutputs: the step's outputs and summary are a local build's, and the
// output directory holds the artifacts and the keyless bundle, not the unsigned statement.
func checkAgentBuildOutputs(t *testing.T, outputs, summary, out, sha string) {
	t.Helper()
	for _, want := range []string{"bundle-path<<", filepath.Join(out, "provenance.sigstore.json"), "artifacts<<", `"path":"` + filepath.Join(out, "dist/widget.txt"),
		"tee<<", "sim", "measurement<<", "release-url<<"} {
		if !strings.Contains(outputs, want) {
			t.Errorf("GITHUB_OUTPUT lacks %q:\n%s", want, outputs)
		}
	}
	for _, want := range []string{"| TEE | sim (SIMULATED", "| measurement |", sha, "dist/widget.txt"} {
		if !strings.Contains(summary, want) {
			t.Errorf("step summary lacks %q:\n%s", want, summary)
		}
	}
	if b, err := os.ReadFile(filepath.Join(out, "dist", "widget.txt")); err != nil || string(b) != "widget sources\nbuilt-on-the-agent\n" {
		t.Errorf("artifact: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(out, "provenance.intoto.json")); !os.IsNotExist(err) {
		t.Errorf("the unsigned statement is left in the output directory: %v", err)
	}
}

// checkAgentJob: the agent ran the job, asked to leave the signing to its client, and
// has no bundle of its own for it.
func checkAgentJob(t *testing.T, socket string) {
	t.Helper()
	code, stdout, _ := cli(t, "agent", "status", "--socket", socket, "--json")
	var st struct {
		Counts map[string]int `json:"counts"`
	}
	if code != 0 || json.Unmarshal([]byte(stdout), &st) != nil || st.Counts["succeeded"] != 1 {
		t.Fatalf("the agent did not run the job: status %d %s", code, stdout)
	}
}

// checkKeylessRelease: the release holds the artifact and a keyless bundle with a log
// entry; it returns the bundle's path.
func checkKeylessRelease(t *testing.T, gh *ghfake.GitHub) string {
	t.Helper()
	rel := gh.Release("acme/widget", "v1.0.0")
	// The artifact, its SHA256SUMS and the bundle.
	if rel == nil || len(rel.Assets) != 3 {
		t.Fatalf("release after the build: %+v", rel)
	}
	var bundle []byte
	for _, a := range rel.Assets {
		if a.Name == "provenance.sigstore.json" {
			bundle = a.Content
		}
	}
	if !strings.Contains(string(bundle), `"certificate"`) || !strings.Contains(string(bundle), `"tlogEntries"`) {
		t.Fatalf("the published bundle is not a keyless bundle with a log entry: %.300s", bundle)
	}
	p := filepath.Join(t.TempDir(), "provenance.sigstore.json")
	if err := os.WriteFile(p, bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
