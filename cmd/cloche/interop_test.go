package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sethvargo/go-githubactions"

	"github.com/cloche-dev/cloche/internal/ghfake"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/provenance"
)

// interopToolsEnv names the directory of stock Sigstore verifiers scripts/test-interop.sh
// lays out: cosign-v2/cosign, cosign-v3/cosign, gh/gh and sigstore-js/node_modules.
const interopToolsEnv = "CLOCHE_INTEROP_TOOLS"

// interopTool is one stock verifier: the directory put first on PATH for its commands, and
// the extra environment they need.
type interopTool struct {
	name, dir string
	env       []string
}

// interopTools finds the tools, skipping when the variable is unset and failing when it is
// set but a tool is missing: `make test-interop` sets it, and must not pass vacuously.
func interopTools(t *testing.T) []interopTool {
	t.Helper()
	root := os.Getenv(interopToolsEnv)
	if root == "" {
		t.Skipf("%s is not set: run `make test-interop` to build the stock verifiers (cosign, gh, sigstore-js) and run this test", interopToolsEnv)
	}
	tools := []interopTool{
		{name: "cosign-v2", dir: filepath.Join(root, "cosign-v2")},
		{name: "cosign-v3", dir: filepath.Join(root, "cosign-v3")},
		{name: "gh", dir: filepath.Join(root, "gh")},
		{name: "sigstore-js", dir: filepath.Join(root, "sigstore-js"), env: []string{"SIGSTORE_JS=" + filepath.Join(root, "sigstore-js")}},
	}
	for _, want := range []string{"cosign-v2/cosign", "cosign-v3/cosign", "gh/gh", "sigstore-js/node_modules/@sigstore/verify/package.json"} {
		if _, err := os.Stat(filepath.Join(root, want)); err != nil {
			t.Fatalf("%s=%s lacks %s: %v", interopToolsEnv, root, want, err)
		}
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatalf("the interop test verifies a real simulated build, which needs QEMU: %v", err)
	}
	return tools
}

// interopCommands reads the commands docs/interop.md gives for each tool and bundle kind, from
// its code blocks tagged "interop:TOOL:KIND", so the test runs exactly what a user is told.
func interopCommands(t *testing.T) map[string]string {
	t.Helper()
	f, err := os.Open("../../docs/interop.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmds := map[string]string{}
	var key string
	var body strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case key == "" && strings.HasPrefix(line, "```sh interop:"):
			key = strings.TrimPrefix(line, "```sh interop:")
			body.Reset()
		case key != "" && line == "```":
			cmds[key] = body.String()
			key = ""
		case key != "":
			body.WriteString(line + "\n")
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return cmds
}

// interopClaims is the identity the private Sigstore certifies: a tag push of acme/widget.
func interopClaims() ghfake.Claims {
	return ghfake.Claims{
		Repository: "acme/widget", RepositoryID: "101", RepositoryOwner: "acme", RepositoryOwnerID: "7",
		Ref: "refs/tags/v1.0.0", SHA: strings.Repeat("ab", 20),
		WorkflowRef: "acme/widget/.github/workflows/release.yml@refs/tags/v1.0.0", WorkflowSHA: strings.Repeat("ab", 20),
		JobWorkflowRef: "acme/widget/.github/workflows/release.yml@refs/tags/v1.0.0", JobWorkflowSHA: strings.Repeat("ab", 20),
		EventName: "push", RunID: "4242", RunAttempt: "1", RunnerEnvironment: "self-hosted", Visibility: "public",
	}
}

// keylessBundle signs stmt as the build action does in a job: a token from the job's OIDC
// endpoint, a Fulcio certificate, a Rekor entry.
func keylessBundle(t *testing.T, ss *ghfake.Sigstore, stmt []byte, path string) {
	t.Helper()
	env := map[string]string{"ACTIONS_ID_TOKEN_REQUEST_URL": ss.TokenURL(), "ACTIONS_ID_TOKEN_REQUEST_TOKEN": ss.RequestToken}
	a := githubactions.New(githubactions.WithGetenv(func(k string) string { return env[k] }))
	s, err := provenance.NewKeylessSigner(provenance.KeylessOptions{FulcioURL: ss.Fulcio.URL, RekorURL: ss.Rekor.URL, Token: a.GetIDToken, TrustedMaterial: ss.TrustedRoot()})
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.SignStatement(context.Background(), stmt)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// tamperBundle rewrites a bundle's DSSE envelope with edit and writes it next to dir.
func tamperBundle(t *testing.T, src, dst string, edit func(env map[string]any)) {
	t.Helper()
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	var b map[string]any
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatal(err)
	}
	edit(b["dsseEnvelope"].(map[string]any))
	out, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

// alterStatement changes the statement in a way that leaves it a valid SLSA statement (or
// summary) with the same subjects, under the original signature.
func alterStatement(t *testing.T) func(env map[string]any) {
	return func(env map[string]any) {
		p, err := base64.StdEncoding.DecodeString(env["payload"].(string))
		if err != nil {
			t.Fatal(err)
		}
		var s map[string]any
		if err := json.Unmarshal(p, &s); err != nil {
			t.Fatal(err)
		}
		pred := s["predicate"].(map[string]any)
		if bd, ok := pred["buildDefinition"].(map[string]any); ok {
			bd["buildType"] = "https://example.com/tampered"
		} else {
			pred["verificationResult"] = "FAILED" // a verification summary
		}
		p, err = json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		env["payload"] = base64.StdEncoding.EncodeToString(p)
	}
}

// alterSignature flips one bit of the DSSE signature.
func alterSignature(t *testing.T) func(env map[string]any) {
	return func(env map[string]any) {
		sig := env["signatures"].([]any)[0].(map[string]any)
		b, err := base64.StdEncoding.DecodeString(sig["sig"].(string))
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 1
		sig["sig"] = base64.StdEncoding.EncodeToString(b)
	}
}

// interopBuild is a real build of examples/hello-c on the simulated TEE, through the CLI
// with --json, as a user runs it; extra are more `cloche run` flags.
func interopBuild(t *testing.T, state string, extra ...string) *runReport {
	t.Helper()
	args := append([]string{"run", "--json", "--quiet", "--state-dir", state, "--source", "../../examples/hello-c", "--out", filepath.Join(t.TempDir(), "out"),
		"--tee", "sim", "--guest-image", testfixture.GuestImage(t), "--toolchain", testfixture.GCCToolchain(t), "--accel", "tcg"}, extra...)
	code, stdout, stderr := cli(t, append(args, "--", "make")...)
	if code != 0 {
		t.Fatalf("cloche run exited %d:\n%s", code, stderr)
	}
	var r runReport
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatalf("cloche run --json: %v\n%s", err, stdout)
	}
	if len(r.Artifacts) == 0 || len(r.CosignVerify) == 0 {
		t.Fatalf("cloche run --json reports no artifact or no cosign command:\n%s", stdout)
	}
	return &r
}

// TestInterop checks that verifiers nobody here wrote (cosign v2 and v3, sigstore-js, gh)
// accept real simulated builds' key-signed bundles (one also entered in Rekor) and the same
// statement signed keyless through the private Sigstore, with the commands docs/interop.md
// gives and the cosign command `cloche run` prints, and reject three tamperings of each (and
// a keyless bundle expected from another repository).
func TestInterop(t *testing.T) {
	tools := interopTools(t)
	cmds := interopCommands(t)
	state := t.TempDir()
	ss := ghfake.NewSigstore(t, interopClaims())
	plain := interopBuild(t, state)
	logged := interopBuild(t, state, "--rekor-url", ss.Rekor.URL)
	if _, entries := ss.Counts(); entries != 1 {
		t.Fatalf("cloche run --rekor-url entered %d signatures in Rekor, want 1", entries)
	}
	dir := t.TempDir()
	keyless := filepath.Join(dir, "keyless.sigstore.json")
	keylessBundle(t, ss, bundlePayload(t, plain.Bundle), keyless)
	trustedRoot := filepath.Join(dir, "trusted_root.json")
	ss.WriteTrustedRoot(trustedRoot)
	artifact := plain.Artifacts[0].Path

	otherArtifact := filepath.Join(dir, "hello")
	art, err := os.ReadFile(artifact)
	if err != nil {
		t.Fatal(err)
	}
	art[len(art)/2] ^= 1
	if err := os.WriteFile(otherArtifact, art, 0o755); err != nil {
		t.Fatal(err)
	}

	// cloche verify checks the logged bundle's entry against the trusted root's Rekor, and
	// refuses it when no root, or another deployment's, is given.
	verifyLogged := func(extra ...string) (int, string) {
		args := slices.Concat(logged.Verify[1:len(logged.Verify)-1], extra, logged.Verify[len(logged.Verify)-1:])
		code, _, stderr := cli(t, args...)
		return code, stderr
	}
	if code, stderr := verifyLogged("--trusted-root", trustedRoot); code != 0 {
		t.Fatalf("cloche verify rejects the bundle entered in Rekor: %s", stderr)
	}
	if code, stderr := verifyLogged(); code != 1 || !strings.Contains(stderr, "FAILED: bundle.material:") {
		t.Errorf("cloche verify without --trusted-root: exit %d, %s; want bundle.material refusing the unchecked log entry", code, stderr)
	}
	otherRoot := filepath.Join(dir, "other_root.json")
	ghfake.NewSigstore(t, interopClaims()).WriteTrustedRoot(otherRoot)
	if code, stderr := verifyLogged("--trusted-root", otherRoot); code != 1 || !strings.Contains(stderr, "FAILED: signature") {
		t.Errorf("cloche verify with another Rekor's root: exit %d, %s; want a signature failure", code, stderr)
	}

	t.Run("run hint", func(t *testing.T) {
		// The cosign command `cloche run` prints works as printed, with the insecure flag
		// exactly when the bundle has no log entry (a private Rekor needs its root added).
		cosign := tools[1]
		for _, c := range []struct {
			r        *runReport
			insecure bool
			extra    []string
		}{{plain, true, nil}, {logged, false, []string{"--trusted-root", trustedRoot}}} {
			if got := slices.Contains(c.r.CosignVerify, "--insecure-ignore-tlog"); got != c.insecure {
				t.Errorf("cosign hint %q: --insecure-ignore-tlog present %v, want %v", c.r.CosignVerifyCommand, got, c.insecure)
			}
			script := shellLine(append(slices.Clone(c.r.CosignVerify), c.extra...))
			if out, err := runInterop(t, cosign, script, nil); err != nil {
				t.Errorf("%s: %v\n%s", script, err, out)
			}
		}
	})

	// A verification summary of the plain build, signed by a verifier's own key.
	vsa := filepath.Join(dir, "vsa.sigstore.json")
	verifierKey := filepath.Join(dir, "verifier-key.pem")
	if err := provenance.GenerateKey(verifierKey, verifierKey+".pub"); err != nil {
		t.Fatal(err)
	}
	vsaArgs := slices.Concat(plain.Verify[1:len(plain.Verify)-1],
		[]string{"--vsa", vsa, "--vsa-key", verifierKey, "--vsa-resource-uri", "git+https://github.com/acme/widget@refs/tags/v1.0.0"},
		plain.Verify[len(plain.Verify)-1:])
	if code, _, stderr := cli(t, vsaArgs...); code != 0 {
		t.Fatalf("cloche verify --vsa: exit %d: %s", code, stderr)
	}

	bundles := map[string]string{"key": plain.Bundle, "key-logged": logged.Bundle, "keyless": keyless, "vsa": vsa}
	artifacts := map[string]string{"key": artifact, "key-logged": logged.Artifacts[0].Path, "keyless": artifact, "vsa": artifact}
	keys := map[string]string{"vsa": verifierKey + ".pub"}
	for _, kind := range []string{"key", "key-logged", "keyless", "vsa"} {
		for _, tool := range tools {
			script, ok := cmds[tool.name+":"+kind]
			if !ok {
				if tool.name == "gh" && kind != "keyless" {
					continue // gh verifies certificate-signed bundles only (docs/interop.md)
				}
				t.Fatalf("docs/interop.md has no block interop:%s:%s", tool.name, kind)
			}
			t.Run(tool.name+"/"+kind, func(t *testing.T) {
				key := plain.PublicKey
				if k, ok := keys[kind]; ok {
					key = k
				}
				interopCase(t, tool, script, kind, bundles[kind], artifacts[kind], otherArtifact, map[string]string{
					"KEY": key, "TRUSTED_ROOT": trustedRoot,
					"REF": "refs/tags/v1.0.0", "WORKFLOW": ".github/workflows/release.yml",
				})
			})
		}
	}
}

// interopCase runs one docs/interop.md block on the genuine bundle, which must pass, and on
// the tamperings, each of which must be rejected with a verdict.
func interopCase(t *testing.T, tool interopTool, script, kind, bundle, artifact, otherArtifact string, vars map[string]string) {
	t.Helper()
	tampered := func(name string, edit func(map[string]any)) string {
		p := filepath.Join(t.TempDir(), name+".sigstore.json")
		tamperBundle(t, bundle, p, edit)
		return p
	}
	runAs := func(repo, bundle, artifact string) (string, error) {
		v := maps.Clone(vars)
		v["BUNDLE"], v["ARTIFACT"], v["REPO"] = bundle, artifact, repo
		return runInterop(t, tool, script, v)
	}
	out, err := runAs("acme/widget", bundle, artifact)
	if err != nil {
		t.Fatalf("rejects the %s bundle: %v\n%s", kind, err, out)
	}
	t.Logf("accepted: %s", lastLine(out))
	cases := []struct{ name, repo, bundle, artifact string }{
		{"altered statement", "acme/widget", tampered("statement", alterStatement(t)), artifact},
		{"altered signature", "acme/widget", tampered("signature", alterSignature(t)), artifact},
		{"artifact not a subject", "acme/widget", bundle, otherArtifact},
	}
	if kind == "keyless" {
		// The identity flags are enforced: the same bundle, expected from another repository.
		cases = append(cases, struct{ name, repo, bundle, artifact string }{"another repository expected", "acme/gadget", bundle, artifact})
	}
	for _, c := range cases {
		out, err := runAs(c.repo, c.bundle, c.artifact)
		// A verdict is exit status 1; anything else (a missing command's 127, a timeout, a
		// usage error's 2) is no rejection of the tampering.
		var exit *exec.ExitError
		switch {
		case err == nil:
			t.Errorf("accepts the %s bundle with an %s:\n%s", kind, c.name, out)
		case !errors.As(err, &exit) || exit.ExitCode() != 1:
			t.Errorf("%s: failed without a verdict (%v):\n%s", c.name, err, out)
		default:
			t.Logf("%s: rejected: %s", c.name, lastLine(out))
		}
	}
}

// runInterop runs a docs/interop.md block with bash from the repository root, the tool's
// directory first on PATH and the block's variables set.
func runInterop(t *testing.T, tool interopTool, script string, vars map[string]string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = filepath.Join("..", "..")
	cmd.Env = append(os.Environ(), "PATH="+tool.dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	cmd.Env = append(cmd.Env, tool.env...)
	// Offline, as in CI: no tool may fetch a trust root or an attestation from the network
	// to reach its verdict, and gh needs no login for a bundle on disk.
	cmd.Env = append(cmd.Env, "GH_TOKEN=", "GH_NO_UPDATE_NOTIFIER=1", "TUF_ROOT="+t.TempDir(), "HOME="+t.TempDir())
	for k, v := range vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("timed out: %w", ctx.Err())
	}
	return string(out), err
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
