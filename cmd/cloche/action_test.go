package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/internal/ghfake"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/reference"
)

// gitCheckout makes a git repository with one commit, as actions/checkout leaves it, and
// returns its directory and commit id.
func gitCheckout(t *testing.T, files map[string]string) (string, string) {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	git := func(args ...string) string {
		cmd := exec.Command("git", append([]string{"-C", dir}, args...)...)
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=t",
			"GIT_COMMITTER_EMAIL=t@example.com", "GIT_CONFIG_GLOBAL=/dev/null")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	git("init", "-q")
	git("add", "-A")
	git("commit", "-q", "-m", "release")
	git("tag", "-a", "-m", "release", "v1.0.0")
	return dir, git("rev-parse", "HEAD")
}

// jobEnv sets what the runner gives a job step for a tag push of acme/widget.
func jobEnv(t *testing.T, ss *ghfake.Sigstore, gh *ghfake.GitHub, sha string) (outputs, summary string) {
	t.Helper()
	tmp := t.TempDir()
	outputs, summary = filepath.Join(tmp, "output"), filepath.Join(tmp, "summary")
	for k, v := range map[string]string{
		"GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "acme/widget", "GITHUB_REPOSITORY_OWNER": "acme",
		"GITHUB_REF": "refs/tags/v1.0.0", "GITHUB_REF_NAME": "v1.0.0", "GITHUB_REF_TYPE": "tag", "GITHUB_SHA": sha,
		"GITHUB_RUN_ID": "4242", "GITHUB_RUN_ATTEMPT": "1", "GITHUB_RUN_NUMBER": "7", "GITHUB_EVENT_NAME": "push",
		"GITHUB_SERVER_URL": "https://github.com", "GITHUB_API_URL": gh.URL(),
		"GITHUB_WORKFLOW_REF": "acme/widget/.github/workflows/release.yml@refs/tags/v1.0.0",
		"GITHUB_OUTPUT":       outputs, "GITHUB_STEP_SUMMARY": summary, "RUNNER_TEMP": tmp,
		"ACTIONS_ID_TOKEN_REQUEST_URL": ss.TokenURL(), "ACTIONS_ID_TOKEN_REQUEST_TOKEN": ss.RequestToken,
	} {
		t.Setenv(k, v)
	}
	return outputs, summary
}

func setInputs(t *testing.T, inputs map[string]string) {
	t.Helper()
	for k, v := range inputs {
		t.Setenv("INPUT_"+strings.ToUpper(strings.ReplaceAll(k, "-", "_")), v)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

// widgetClaims are the OIDC claims of acme/widget's release workflow run for tag v1.0.0
// at commit sha, as the GitHub fake's token service issues them.
func widgetClaims(sha string) ghfake.Claims {
	return ghfake.Claims{
		Repository: "acme/widget", RepositoryID: "101", RepositoryOwner: "acme", RepositoryOwnerID: "7",
		Ref: "refs/tags/v1.0.0", SHA: sha, EventName: "push", RunID: "4242", RunAttempt: "1",
		WorkflowRef:       "acme/widget/.github/workflows/release.yml@refs/tags/v1.0.0",
		JobWorkflowRef:    "acme/widget/.github/workflows/release.yml@refs/tags/v1.0.0",
		RunnerEnvironment: "self-hosted", Visibility: "public",
	}
}

// TestActionBuildPublishVerify runs the build action's entry point as the runner does (a
// real VM build on the simulated TEE, keyless signing against a local Fulcio and Rekor,
// publishing to a local GitHub API), then the verify action's entry point against the
// release, and checks that verification fails for a wrong repository, a wrong tag, a wrong
// workflow and a swapped asset.
func TestActionBuildPublishVerify(t *testing.T) {
	testfixture.RequireQEMU(t)
	src, sha := gitCheckout(t, map[string]string{
		"README":     "widget sources\n",
		"lib/part.c": "int part(void) { return 1; }\n",
	})
	claims := widgetClaims(sha)
	ss := ghfake.NewSigstore(t, claims)
	gh := ghfake.NewGitHub(t, "acme/widget", "acme/gadget", "acme/cloche")
	state := t.TempDir()
	// The guest image comes from a published release (acme/cloche v0.9.0), its reference
	// values signed keyless by that repository's release workflow.
	trustedRoot := filepath.Join(t.TempDir(), "trusted_root.json")
	ss.WriteTrustedRoot(trustedRoot)
	publishGuestRelease(t, ss, gh, "acme/cloche", "v0.9.0")
	ss.SetClaims(claims)
	outputs, summary := jobEnv(t, ss, gh, sha)
	t.Setenv("CLOCHE_ACCEL", "tcg")
	setInputs(t, map[string]string{
		"run":                    "mkdir -p dist && cp README dist/widget.txt && echo built >> dist/widget.txt && echo '::set-output name=tee::forged'",
		"source":                 src,
		"artifacts":              "dist/*",
		"tee":                    "sim",
		"timeout":                "2m",
		"toolchain":              testfixture.BusyboxToolchain(t),
		"guest-image-release":    "v0.9.0",
		"guest-image-repository": "acme/cloche",
		"trusted-root":           trustedRoot,
		"fulcio-url":             ss.Fulcio.URL,
		"rekor-url":              ss.Rekor.URL,
		"github-token":           gh.Token,
		"push-attestation":       "true",
	})
	// The API fails the first upload; the action must retry it.
	gh.FailNext("POST", "/uploads/", 502, 1)

	code, stdout, stderr := cli(t, "action", "build", "--state-dir", state)
	if code != 0 {
		t.Fatalf("action build exited %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}

	// The job log: the build grouped, workflow commands off while the build log streams.
	gi, si, ei := strings.Index(stdout, "::group::"), strings.Index(stdout, "::stop-commands::"), strings.Index(stdout, "::endgroup::")
	if gi < 0 || si < gi || ei < si || !strings.Contains(stdout, "::set-output name=tee::forged") {
		t.Errorf("job log lacks the group / stop-commands framing around the build log:\n%s", stdout)
	}
	if !strings.Contains(stdout, "SIMULATED") {
		t.Errorf("job log does not say SIMULATED")
	}
	out := readFile(t, outputs)
	for _, want := range []string{"bundle-path<<", "artifacts<<", "tee<<", "measurement<<", "release-url<<", `"path":`, `"sha256":`,
		"attestation-id<<", "/acme/widget/attestations/"} {
		if !strings.Contains(out, want) {
			t.Errorf("GITHUB_OUTPUT lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "forged") {
		t.Errorf("the build log set an output:\n%s", out)
	}
	sum := readFile(t, summary)
	for _, want := range []string{"| TEE | sim (SIMULATED", "| measurement |", sha, "dist/widget.txt", "| SHA256SUMS |", "provenance.sigstore.json"} {
		if !strings.Contains(sum, want) {
			t.Errorf("step summary lacks %q:\n%s", want, sum)
		}
	}
	rel := gh.Release("acme/widget", "v1.0.0")
	if rel == nil || len(rel.Assets) != 3 {
		t.Fatalf("release after the build (want widget.txt, SHA256SUMS and the bundle): %+v", rel)
	}
	var bundle []byte
	for _, a := range rel.Assets {
		if a.Name == "provenance.sigstore.json" {
			bundle = a.Content
		}
	}
	if !strings.Contains(string(bundle), `"certificate"`) || !strings.Contains(string(bundle), `"tlogEntries"`) {
		t.Errorf("the published bundle is not a keyless bundle with a log entry: %.300s", bundle)
	}
	bundlePath := filepath.Join(t.TempDir(), "provenance.sigstore.json")
	os.WriteFile(bundlePath, bundle, 0o644)
	if st := bundlePayload(t, bundlePath); !strings.Contains(string(st), `"uri":"https://github.com/acme/cloche/releases/tag/v0.9.0"`) {
		t.Errorf("the provenance does not name the guest image release launched: %.2000s", st)
	}
	if atts := gh.Attestations("acme/widget"); len(atts) != 1 {
		t.Errorf("%d attestations pushed, want 1", len(atts))
	}
	var uploads []int
	for _, r := range gh.Requests() {
		if r.Method == "POST" && strings.HasPrefix(r.Path, "/uploads/") {
			uploads = append(uploads, r.Status)
		}
	}
	if len(uploads) != 4 || uploads[0] != 502 {
		t.Errorf("upload answers %v, want a 502 then three 201s", uploads)
	}

	_, simRoot, _ := cli(t, "sim-root", "--state-dir", state)
	simRoot = strings.TrimSpace(simRoot)
	busyboxDigest := testfixture.ToolchainDigest(t, testfixture.BusyboxToolchain(t))

	// verifyAction runs the verify action's entry point with the given inputs.
	verifyAction := func(t *testing.T, inputs map[string]string) (int, string, string) {
		t.Helper()
		for _, k := range []string{"run", "source", "artifacts", "tee", "timeout", "toolchain", "guest-image", "guest-image-release", "guest-image-repository", "fulcio-url", "rekor-url", "push-attestation", "source-tag", "signer-workflow", "repository", "tag"} {
			t.Setenv("INPUT_"+strings.ToUpper(strings.ReplaceAll(k, "-", "_")), "")
		}
		in := map[string]string{"trusted-root": trustedRoot, "allow-simulated": "true", "trusted-sim-root": simRoot, "github-token": gh.Token,
			"guest-image": testfixture.GuestImage(t), "toolchain-digest": busyboxDigest}
		for k, v := range inputs {
			in[k] = v
		}
		setInputs(t, in)
		o, s := jobEnv(t, ss, gh, sha)
		code, stdout, _ := cli(t, "action", "verify", "--state-dir", state)
		return code, readFile(t, s), stdout + readFile(t, o)
	}

	t.Run("re-run publishes nothing new", func(t *testing.T) {
		before := gh.Count("POST", "/uploads/")
		if code, stdout, stderr := cli(t, "action", "build", "--state-dir", state); code != 0 {
			t.Fatalf("second run exited %d\n%s\n%s", code, stdout, stderr)
		}
		if n := gh.Count("POST", "/uploads/") - before; n != 0 {
			t.Errorf("re-run uploaded %d assets", n)
		}
	})

	t.Run("verify action passes", func(t *testing.T) {
		code, sum, log := verifyAction(t, map[string]string{"repository": "acme/widget", "tag": "v1.0.0"})
		if code != 0 {
			t.Fatalf("verify exited %d\n%s\n%s", code, sum, log)
		}
		if !strings.Contains(sum, "| widget.txt |") || !strings.Contains(sum, "PASSED") || !strings.Contains(sum, sha) || !strings.Contains(sum, "SIMULATED") {
			t.Errorf("summary:\n%s", sum)
		}
		for _, want := range []string{"subjects<<", `"name":"dist/widget.txt"`, "builder-id<<", "https://cloche.dev/builders/sim", "tee<<", "measurement<<"} {
			if !strings.Contains(log, want) {
				t.Errorf("verify outputs lack %q:\n%s", want, log)
			}
		}
	})

	t.Run("verify action warnings are annotations", func(t *testing.T) {
		code, sum, log := verifyAction(t, map[string]string{"repository": "acme/widget", "tag": "v1.0.0", "insecure-skip-measurement": "true", "guest-image": ""})
		if code != 0 {
			t.Fatalf("verify exited %d\n%s\n%s", code, sum, log)
		}
		// One annotation per verified asset (widget.txt and SHA256SUMS).
		if n := strings.Count(log, "::warning::"); n != 2 || !strings.Contains(log, "::warning::widget.txt: measurement NOT checked") {
			t.Errorf("%d warning annotations, want the skipped measurement on both assets:\n%s", n, log)
		}
	})

	t.Run("cloche verify --repo --tag passes", func(t *testing.T) {
		t.Setenv("GITHUB_TOKEN", gh.Token)
		code, stdout, stderr := cli(t, "verify", "--repo", "acme/widget", "--tag", "v1.0.0", "--github-api-url", gh.URL(),
			"--trusted-root", trustedRoot, "--allow-simulated", "--trusted-sim-root", simRoot, "--guest-image", testfixture.GuestImage(t), "--toolchain-digest", busyboxDigest,
			"--signer-workflow", "acme/widget/.github/workflows/release.yml", "--builder-id", "https://cloche.dev/builders/sim")
		if code != 0 || !strings.Contains(stderr, "PASSED:") || !strings.Contains(stderr, "signed by https://github.com/acme/widget/.github/workflows/release.yml@refs/tags/v1.0.0") {
			t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
		}
		// The commit and the annotated tag, as the guest attested them.
		if !strings.Contains(stderr, "commit "+sha+", tag v1.0.0") {
			t.Errorf("PASSED line does not name the attested commit and tag:\n%s", stderr)
		}
		code, _, stderr = cli(t, "verify", "--repo", "acme/widget", "--tag", "v1.0.0", "--github-api-url", gh.URL(),
			"--trusted-root", trustedRoot, "--allow-simulated", "--trusted-sim-root", simRoot, "--guest-image", testfixture.GuestImage(t), "--toolchain-digest", busyboxDigest,
			"--source-commit", strings.Repeat("0", 40))
		if code != exitFailed || !strings.Contains(stderr, "FAILED: source.commit:") {
			t.Fatalf("another commit expected: exit %d\n%s", code, stderr)
		}
		code, _, stderr = cli(t, "verify", "--repo", "acme/widget", "--tag", "v1.0.0", "--github-api-url", gh.URL(),
			"--trusted-root", trustedRoot, "--allow-simulated", "--trusted-sim-root", simRoot, "--guest-image", testfixture.GuestImage(t), "--toolchain-digest", busyboxDigest, "--builder-id", "https://cloche.dev/builders/snp")
		if code != exitFailed || !strings.Contains(stderr, "FAILED: builder.id:") {
			t.Fatalf("wrong builder id: exit %d\n%s", code, stderr)
		}
	})

	// A copy of the release under another repository or tag, as someone republishing it
	// would make.
	assets := map[string][]byte{}
	for _, a := range gh.Release("acme/widget", "v1.0.0").Assets {
		assets[a.Name] = a.Content
	}
	gh.AddRelease("acme/gadget", "v1.0.0", assets)
	gh.AddRelease("acme/widget", "v2.0.0", assets)

	for _, c := range []struct {
		name   string
		inputs map[string]string
		want   string
	}{
		{"wrong repository", map[string]string{"repository": "acme/gadget", "tag": "v1.0.0"}, "signer.identity"},
		{"wrong tag (release copied to v2.0.0)", map[string]string{"repository": "acme/widget", "tag": "v2.0.0"}, "signer.identity"},
		{"wrong tag expected", map[string]string{"repository": "acme/widget", "tag": "v1.0.0", "source-tag": "v1.0.1"}, "signer.identity"},
		{"wrong workflow identity", map[string]string{"repository": "acme/widget", "tag": "v1.0.0", "signer-workflow": "acme/widget/.github/workflows/other.yml"}, "signer.identity"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, sum, log := verifyAction(t, c.inputs)
			if code == 0 {
				t.Fatalf("verify passed:\n%s", sum)
			}
			if !strings.Contains(sum, "FAILED: "+c.want) || !strings.Contains(log, "::error::") {
				t.Errorf("summary or log does not name %q:\n%s\n%s", c.want, sum, log)
			}
		})
	}

	t.Run("swapped asset", func(t *testing.T) {
		gh.SetAssetContent("acme/widget", "v1.0.0", "widget.txt", []byte("widget sources\nbackdoored\n"))
		code, sum, _ := verifyAction(t, map[string]string{"repository": "acme/widget", "tag": "v1.0.0"})
		if code == 0 || !strings.Contains(sum, "FAILED: subject") {
			t.Fatalf("swapped asset: exit %d\n%s", code, sum)
		}
	})
}

// TestActionBuildRefusesDirtyCheckout: the source must be the commit's tree, checked before
// any VM boots.
func TestActionBuildRefusesDirtyCheckout(t *testing.T) {
	src, sha := gitCheckout(t, map[string]string{"README": "x\n"})
	if err := os.WriteFile(filepath.Join(src, "untracked"), []byte("y"), 0o644); err != nil {
		t.Fatal(err)
	}
	ss := ghfake.NewSigstore(t, ghfake.Claims{})
	gh := ghfake.NewGitHub(t, "acme/widget")
	jobEnv(t, ss, gh, sha)
	setInputs(t, map[string]string{"run": "true", "source": src, "tee": "sim", "toolchain": "/nonexistent", "guest-image": "/nonexistent",
		"fulcio-url": ss.Fulcio.URL, "rekor-url": ss.Rekor.URL, "github-token": gh.Token})
	code, stdout, _ := cli(t, "action", "build", "--state-dir", t.TempDir())
	if code == 0 || !strings.Contains(stdout, "::error::") || !strings.Contains(stdout, "differs from commit") {
		t.Fatalf("exit %d\n%s", code, stdout)
	}
	if n := len(gh.Requests()); n != 0 {
		t.Errorf("%d API requests for a refused build", n)
	}
}

// TestActionInputErrors: missing runner files, inputs and permissions fail with annotations
// that say what to fix.
func TestActionInputErrors(t *testing.T) {
	src, sha := gitCheckout(t, map[string]string{"README": "x\n"})
	ss := ghfake.NewSigstore(t, ghfake.Claims{})
	gh := ghfake.NewGitHub(t, "acme/widget")
	cases := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"no run input", map[string]string{"INPUT_RUN": ""}, "input run"},
		{"bad timeout", map[string]string{"INPUT_TIMEOUT": "soon"}, "input timeout"},
		{"bad signing", map[string]string{"INPUT_SIGNING": "magic"}, "expected keyless or key"},
		{"no id-token permission", map[string]string{"ACTIONS_ID_TOKEN_REQUEST_URL": ""}, "id-token: write"},
		{"not in a job", map[string]string{"GITHUB_OUTPUT": ""}, "GITHUB_OUTPUT is not set"},
		{"publishing without a token", map[string]string{"INPUT_GITHUB_TOKEN": ""}, "github-token"},
		{"bad subject-digest", map[string]string{"INPUT_SUBJECT_DIGEST": strings.Repeat("a", 64)}, "input subject-digest"},
		{"subject-checksums with subject-name", map[string]string{"INPUT_SUBJECT_CHECKSUMS": "dist/sums", "INPUT_SUBJECT_NAME": "a"}, "input subject-checksums"},
		{"subject-checksums outside the source", map[string]string{"INPUT_SUBJECT_CHECKSUMS": "../sums"}, "input subject-checksums"},
		{"bad show-summary", map[string]string{"INPUT_SHOW_SUMMARY": "sometimes"}, "input show-summary"},
		{"unknown deps", map[string]string{"INPUT_DEPS": "cargo"}, `input deps: build input Deps "cargo": expected`},
		{"deps without its lockfile", map[string]string{"INPUT_DEPS": "go"}, "input deps: build input Deps \"go\": the source has no go.mod"},
		{"npm deps without its lockfile", map[string]string{"INPUT_DEPS": "npm"}, "input deps: build input Deps \"npm\": the source has no package.json"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			jobEnv(t, ss, gh, sha)
			setInputs(t, map[string]string{"run": "true", "source": src, "tee": "sim", "fulcio-url": ss.Fulcio.URL, "rekor-url": ss.Rekor.URL,
				"github-token": gh.Token, "toolchain": "/nonexistent", "guest-image": "/nonexistent"})
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			code, stdout, stderr := cli(t, "action", "build", "--state-dir", t.TempDir())
			if code == 0 || !strings.Contains(stdout+stderr, c.want) {
				t.Fatalf("exit %d, want an error naming %q\n%s\n%s", code, c.want, stdout, stderr)
			}
		})
	}
}

// TestActionVerifyKeyRefusesUnboundInputs: with input key, the repository, branch and
// workflow inputs are refused (a key-signed bundle binds none of them) before anything is
// downloaded.
func TestActionVerifyKeyRefusesUnboundInputs(t *testing.T) {
	ss := ghfake.NewSigstore(t, ghfake.Claims{})
	gh := ghfake.NewGitHub(t, "acme/widget")
	dir := t.TempDir()
	if err := provenance.GenerateKey(filepath.Join(dir, "k.pem"), filepath.Join(dir, "k.pub")); err != nil {
		t.Fatal(err)
	}
	for _, in := range []string{"source-uri", "source-branch", "signer-workflow"} {
		t.Run(in, func(t *testing.T) {
			jobEnv(t, ss, gh, strings.Repeat("a", 40))
			setInputs(t, map[string]string{"key": filepath.Join(dir, "k.pub"), "tag": "v1.0.0", "github-token": gh.Token, "measurement": strings.Repeat("00", 48),
				"source-uri": "", "source-branch": "", "signer-workflow": ""})
			value := map[string]string{"source-uri": "github.com/acme/widget", "source-branch": "main", "signer-workflow": "acme/widget/.github/workflows/r.yml"}[in]
			setInputs(t, map[string]string{in: value})
			code, stdout, _ := cli(t, "action", "verify", "--state-dir", t.TempDir())
			if code == 0 || !strings.Contains(stdout, "::error::") || !strings.Contains(stdout, "need keyless verification") {
				t.Fatalf("exit %d\n%s", code, stdout)
			}
			if n := len(gh.Requests()); n != 0 {
				t.Errorf("%d API requests before the inputs were refused", n)
			}
		})
	}
}

// publishGuestRelease publishes the fixture guest image as repo's release tag does: the
// image files and its reference values signed keyless by repo's release workflow.
func publishGuestRelease(t *testing.T, ss *ghfake.Sigstore, gh *ghfake.GitHub, repo, tag string) {
	t.Helper()
	img := testfixture.GuestImage(t)
	doc, err := reference.Create(context.Background(), reference.CreateOptions{GuestImageDir: img, ToolVersion: strings.TrimPrefix(tag, "v"), VCPUs: []int{2}})
	if err != nil {
		t.Fatal(err)
	}
	wf := repo + "/.github/workflows/release.yml@refs/tags/" + tag
	ss.SetClaims(ghfake.Claims{Repository: repo, RepositoryID: "102", RepositoryOwner: strings.Split(repo, "/")[0], RepositoryOwnerID: "7",
		Ref: "refs/tags/" + tag, SHA: strings.Repeat("cd", 20), EventName: "push", RunID: "1", RunAttempt: "1",
		WorkflowRef: wf, JobWorkflowRef: wf, RunnerEnvironment: "self-hosted", Visibility: "public"})
	path := filepath.Join(t.TempDir(), reference.BundleFileName)
	stmt, err := doc.Statement()
	if err != nil {
		t.Fatal(err)
	}
	keylessBundle(t, ss, stmt, path)
	assets := map[string][]byte{reference.BundleFileName: []byte(readFile(t, path))}
	for _, name := range reference.GuestReleaseAssets()[:3] {
		assets[name] = []byte(readFile(t, filepath.Join(img, name)))
	}
	gh.AddRelease(repo, tag, assets)
}

// TestActionSubjects: subject-path is the artifact patterns; subject-checksums
// publishes the checksums file the build made and the files it lists (each checked against
// what the guest attested), and nothing else; show-summary false writes no summary.
func TestActionSubjects(t *testing.T) {
	testfixture.RequireQEMU(t)
	src, sha := gitCheckout(t, map[string]string{"README": "widget\n"})
	claims := widgetClaims(sha)
	ss := ghfake.NewSigstore(t, claims)
	gh := ghfake.NewGitHub(t, "acme/widget")
	t.Setenv("CLOCHE_ACCEL", "tcg")
	build := func(t *testing.T, run string) (int, string, string, string) {
		outputs, summary := jobEnv(t, ss, gh, sha)
		setInputs(t, map[string]string{
			"run": run, "source": src, "tee": "sim", "timeout": "2m", "toolchain": testfixture.BusyboxToolchain(t),
			"guest-image": testfixture.GuestImage(t), "fulcio-url": ss.Fulcio.URL, "rekor-url": ss.Rekor.URL, "github-token": gh.Token,
			"subject-path": "dist/*", "subject-checksums": "dist/checksums.txt", "show-summary": "false",
		})
		code, stdout, stderr := cli(t, "action", "build", "--state-dir", t.TempDir())
		return code, stdout + stderr, readFile(t, outputs), readFile(t, summary)
	}
	const made = "mkdir -p dist && cd dist && echo a > a.txt && echo b > b.txt && echo other > other.txt && sha256sum a.txt b.txt > checksums.txt"

	t.Run("listed", func(t *testing.T) {
		code, log, outputs, summary := build(t, made)
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, log)
		}
		if summary != "" {
			t.Errorf("show-summary false wrote a summary:\n%s", summary)
		}
		var names []string
		for _, a := range gh.Release("acme/widget", "v1.0.0").Assets {
			names = append(names, a.Name)
		}
		slices.Sort(names)
		if want := []string{"a.txt", "b.txt", "checksums.txt", "provenance.sigstore.json"}; !slices.Equal(names, want) {
			t.Errorf("release assets %v, want %v", names, want)
		}
		if !strings.Contains(outputs, "dist/a.txt") || strings.Contains(outputs, "other.txt") {
			t.Errorf("artifacts output does not list exactly the selected subjects:\n%s", outputs)
		}
	})
	t.Run("unattested", func(t *testing.T) {
		code, log, _, _ := build(t, made+" && echo '0000000000000000000000000000000000000000000000000000000000000000  other.txt' >> checksums.txt")
		if code == 0 || !strings.Contains(log, "::error::") || !strings.Contains(log, "input subject-checksums dist/checksums.txt lists dist/other.txt with sha256 0000") {
			t.Fatalf("exit %d, want the listed digest refused\n%s", code, log)
		}
	})
}
