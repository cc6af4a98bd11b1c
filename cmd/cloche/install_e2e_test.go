package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/cloche-dev/cloche/internal/ghfake"
)

// The install step of both actions (scripts/install-cloche.sh) on a runner without Go:
// the GitHub fake serves a release of a cloche built here, and the script runs with no go
// (nor cloche, nor gh but a stand-in) on PATH.

const installRepo, installTag = "acme/cloche", "v9.9.9"

// installRelease is a release of cloche served by the GitHub fake.
type installRelease struct {
	g      *ghfake.GitHub
	root   string // this repository
	asset  string // cloche-OS-ARCH for this machine
	binary []byte
	stubs  string // the stand-in gh (and, per test, go and make)
	ghLog  string // the arguments gh was called with
}

func newInstallRelease(t *testing.T) *installRelease {
	t.Helper()
	if runtime.GOOS != "linux" || (runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64") {
		t.Skipf("the release publishes cloche for linux-amd64 and linux-arm64, not %s-%s", runtime.GOOS, runtime.GOARCH)
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	r := &installRelease{root: root, asset: "cloche-" + runtime.GOOS + "-" + runtime.GOARCH, stubs: t.TempDir()}
	r.binary = buildVersioned(t, root, installTag)
	r.ghLog = filepath.Join(t.TempDir(), "gh.log")
	writeStub(t, r.stubs, "gh", `printf '%s\n' "$@" >"$GH_STUB_LOG"; exit "${GH_STUB_EXIT:-0}"`)
	// Another platform's asset, listed too: the script must pick this machine's.
	other := []byte("#!/bin/sh\necho not this platform\n")
	checksums := fmt.Sprintf("%s  %s\n%s  cloche-linux-riscv64\n", hexSHA256(r.binary), r.asset, hexSHA256(other))
	r.g = ghfake.NewGitHub(t, installRepo)
	r.g.AddRelease(installRepo, installTag, map[string][]byte{
		r.asset:                    r.binary,
		"cloche-linux-riscv64":     other,
		"checksums.txt":            []byte(checksums),
		"provenance.sigstore.json": []byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}`),
	})
	return r
}

// buildVersioned builds cloche as a release does, with its version set to tag.
func buildVersioned(t *testing.T, root, tag string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "cloche")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version="+tag, "-o", out, "./cmd/cloche")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false", "GOTOOLCHAIN=local")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/cloche: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func hexSHA256(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func writeStub(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

// runnerPath is PATH without any directory holding go, cloche or gh (a runner without Go
// and without cloche installed), with the stand-ins first.
func runnerPath(t *testing.T, stubs string) string {
	t.Helper()
	dirs := []string{stubs}
	for _, d := range filepath.SplitList(os.Getenv("PATH")) {
		keep := d != ""
		for _, tool := range []string{"go", "cloche", "gh"} {
			if _, err := os.Stat(filepath.Join(d, tool)); err == nil {
				keep = false
			}
		}
		if keep {
			dirs = append(dirs, d)
		}
	}
	return strings.Join(dirs, string(os.PathListSeparator))
}

// install runs the script as the action runs it; extra entries (NAME=value) override.
func (r *installRelease) install(t *testing.T, cache string, extra ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command("bash", filepath.Join(r.root, "scripts", "install-cloche.sh"))
	cmd.Env = append([]string{
		"PATH=" + runnerPath(t, r.stubs), "HOME=" + t.TempDir(),
		"GITHUB_API_URL=" + r.g.URL(), "GITHUB_SERVER_URL=https://github.com", "GITHUB_TOKEN=" + r.g.Token,
		"RUNNER_TOOL_CACHE=" + cache, "CLOCHE_REF=" + installTag, "CLOCHE_REPOSITORY=" + installRepo,
		"CLOCHE_SOURCE=" + r.root, "GH_STUB_LOG=" + r.ghLog,
	}, extra...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return strings.TrimSpace(o.String()), e.String(), err
}

func TestInstallFromReleaseWithoutGo(t *testing.T) {
	r := newInstallRelease(t)
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatal("the test builds the release binary with go, so go must be on this PATH")
	}
	cache := t.TempDir()
	bin, stderr, err := r.install(t, cache)
	if err != nil {
		t.Fatalf("install: %v\n%s", err, stderr)
	}
	want := filepath.Join(cache, "cloche", installTag, runtime.GOOS+"-"+runtime.GOARCH, "cloche")
	if bin != want {
		t.Fatalf("installed at %q, want %q\n%s", bin, want, stderr)
	}
	if got, err := os.ReadFile(bin); err != nil || !bytes.Equal(got, r.binary) {
		t.Fatalf("the installed binary is not the release's %s (%v)", r.asset, err)
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "cloche "+installTag+"\n") {
		t.Fatalf("%s version: %v\n%s", bin, err, out)
	}
	for _, s := range []string{"path: release " + installTag + " of " + installRepo, "SHA-256 " + hexSHA256(r.binary) + " matches checksums.txt", "provenance verified"} {
		if !strings.Contains(stderr, s) {
			t.Errorf("the log does not say %q:\n%s", s, stderr)
		}
	}
	// The provenance is checked with gh, for this asset, this repository's release workflow
	// and the tag.
	ghArgs, err := os.ReadFile(r.ghLog)
	if err != nil {
		t.Fatalf("gh was not run: %v", err)
	}
	for _, a := range []string{"attestation\nverify\n", "/" + r.asset + "\n--bundle\n", "/provenance.sigstore.json\n",
		"--repo\n" + installRepo + "\n", "--signer-workflow\ngithub.com/" + installRepo + "/.github/workflows/release.yml\n",
		"--source-ref\nrefs/tags/" + installTag + "\n"} {
		if !strings.Contains(string(ghArgs), a) {
			t.Errorf("gh arguments lack %q:\n%s", a, ghArgs)
		}
	}
	// The assets came through the API (GET releases/assets/{id}, redirected to the bytes).
	if n := r.g.Count("GET", "/releases/assets/"); n != 3 {
		t.Errorf("%d asset downloads through the API, want 3 (checksums, bundle, binary)", n)
	}

	// Again: the cache answers, with no request at all.
	before := len(r.g.Requests())
	bin2, stderr, err := r.install(t, cache)
	if err != nil || bin2 != bin || !strings.Contains(stderr, "path: cached release "+installTag) {
		t.Fatalf("second install: %v, %q\n%s", err, bin2, stderr)
	}
	if n := len(r.g.Requests()) - before; n != 0 {
		t.Errorf("the cached install made %d requests", n)
	}
	// A cached binary changed behind the cache's back is not used: it is installed again.
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho cloche "+installTag+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := r.install(t, cache); err != nil || !strings.Contains(stderr, "path: release ") {
		t.Fatalf("install over a changed cache: %v\n%s", err, stderr)
	}
	if got, _ := os.ReadFile(bin); !bytes.Equal(got, r.binary) {
		t.Error("the changed cached binary was not replaced by the release's")
	}
}

func TestInstallRefusesTamperedRelease(t *testing.T) {
	r := newInstallRelease(t)
	refused := func(t *testing.T, why string, extra ...string) {
		t.Helper()
		cache := t.TempDir()
		bin, stderr, err := r.install(t, cache, extra...)
		if err == nil || bin != "" || !strings.Contains(stderr, why) {
			t.Fatalf("install: %v, %q; want a refusal saying %q\n%s", err, bin, why, stderr)
		}
		if _, err := os.Stat(filepath.Join(cache, "cloche", installTag, runtime.GOOS+"-"+runtime.GOARCH)); err == nil {
			t.Error("a refused binary is in the cache")
		}
	}
	t.Run("provenance", func(t *testing.T) {
		refused(t, "its provenance in provenance.sigstore.json does not verify", "GH_STUB_EXIT=1")
	})
	t.Run("no gh", func(t *testing.T) {
		if err := os.Remove(filepath.Join(r.stubs, "gh")); err != nil {
			t.Fatal(err)
		}
		defer writeStub(t, r.stubs, "gh", `printf '%s\n' "$@" >"$GH_STUB_LOG"; exit "${GH_STUB_EXIT:-0}"`)
		refused(t, "needs gh")
		// With checksums alone it installs, and warns what that does not cover.
		cache := t.TempDir()
		bin, stderr, err := r.install(t, cache, "CLOCHE_PROVENANCE=checksums")
		if err != nil || bin == "" || !strings.Contains(stderr, "warning: "+r.asset+": provenance not checked") {
			t.Fatalf("install with checksums only: %v, %q\n%s", err, bin, stderr)
		}
		// That cached binary is not taken for one whose provenance was checked.
		if bin, stderr, err := r.install(t, cache); err == nil || !strings.Contains(stderr, "needs gh") {
			t.Fatalf("install over a checksums-only cache: %v, %q\n%s", err, bin, stderr)
		}
	})
	t.Run("bad token", func(t *testing.T) {
		// Not taken for "no release": a build from source would hide the broken install.
		refused(t, "HTTP 401", "GITHUB_TOKEN=ghs_wrong")
	})
	t.Run("checksum", func(t *testing.T) {
		tampered := append(append([]byte(nil), r.binary...), 0)
		r.g.SetAssetContent(installRepo, installTag, r.asset, tampered)
		refused(t, fmt.Sprintf("SHA-256 mismatch: checksums.txt lists %s, the download is %s", hexSHA256(r.binary), hexSHA256(tampered)))
	})
	t.Run("wrong version", func(t *testing.T) {
		// The right checksum, for a binary of another version: its version is checked.
		other := buildVersioned(t, r.root, "v0.0.1")
		r.g.SetAssetContent(installRepo, installTag, r.asset, other)
		r.g.SetAssetContent(installRepo, installTag, "checksums.txt", []byte(hexSHA256(other)+"  "+r.asset+"\n"))
		refused(t, `it says it is "cloche v0.0.1", not "cloche `+installTag+`"`)
	})
}

// Without a release for the ref, cloche is built from the action's source with the Go
// release internal/image/guestimage/GO_TOOLCHAIN pins, whatever Go the runner has.
func TestInstallBuildsFromSourceWithPinnedGo(t *testing.T) {
	r := newInstallRelease(t)
	pinned, err := os.ReadFile(filepath.Join(r.root, "internal", "image", "guestimage", "GO_TOOLCHAIN"))
	if err != nil {
		t.Fatal(err)
	}
	toolchain := strings.TrimSpace(string(pinned))

	// No Go at all: a clear error, naming what is missing.
	_, stderr, err := r.install(t, t.TempDir(), "CLOCHE_REF=main")
	if err == nil || !strings.Contains(stderr, "release main of "+installRepo+" does not exist") ||
		!strings.Contains(stderr, "building from source needs Go") {
		t.Fatalf("no release and no Go: %v\n%s", err, stderr)
	}

	// A Go and make (stand-ins recording what they are asked) on PATH: make is run with the
	// pinned toolchain.
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "internal", "image", "guestimage"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "internal", "image", "guestimage", "GO_TOOLCHAIN"), pinned, 0o644); err != nil {
		t.Fatal(err)
	}
	makeLog := filepath.Join(t.TempDir(), "make.log")
	writeStub(t, r.stubs, "go", `echo "go version ${GOTOOLCHAIN:-the runner's} linux/amd64"`)
	writeStub(t, r.stubs, "make", `printf '%s\n' "$@" >"$MAKE_LOG"; mkdir -p "$2/bin"; touch "$2/bin/cloche"`)
	for _, c := range []struct{ ref, why, target string }{
		{"main", "release main of " + installRepo + " does not exist", "bin/cloche"},
		{"0123456789abcdef0123456789abcdef01234567", "is a commit", "bin/cloche"},
		{"", "no release ref given", "build"},
	} {
		extra := []string{"CLOCHE_REF=" + c.ref, "CLOCHE_SOURCE=" + src, "MAKE_LOG=" + makeLog}
		if c.target == "build" {
			extra = append(extra, "CLOCHE_GUEST_AGENT=1")
		}
		bin, stderr, err := r.install(t, t.TempDir(), extra...)
		if err != nil || bin != filepath.Join(src, "bin", "cloche") {
			t.Fatalf("ref %q: %v, %q\n%s", c.ref, err, bin, stderr)
		}
		if !strings.Contains(stderr, c.why) || !strings.Contains(stderr, "path: building from source in "+src+" with GOTOOLCHAIN="+toolchain+" (go version "+toolchain) {
			t.Errorf("ref %q: the log does not say why and with which Go it builds:\n%s", c.ref, stderr)
		}
		args, err := os.ReadFile(makeLog)
		if want := "-C\n" + src + "\n" + c.target + "\nGOTOOLCHAIN=" + toolchain + "\n"; err != nil || string(args) != want {
			t.Errorf("ref %q: make ran with %q (%v), want %q", c.ref, args, err, want)
		}
	}
}

// The install step of both action.yml files, run as the runner runs it (bash -eo pipefail,
// its env evaluated from the action's inputs and the github context), on a runner without
// Go: it installs the action's release and hands the binary on through GITHUB_OUTPUT, and a
// refused install fails the step.
func TestActionsInstallStep(t *testing.T) {
	r := newInstallRelease(t)
	agent := []byte("guest init")
	r.g.AddAsset(installRepo, installTag, "cloche-guest", agent)
	checksums := fmt.Sprintf("%s  %s\n%s  cloche-guest\n", hexSHA256(r.binary), r.asset, hexSHA256(agent))
	r.g.SetAssetContent(installRepo, installTag, "checksums.txt", []byte(checksums))
	for _, c := range []struct{ action, dir string }{{"action.yml", "."}, {"verify/action.yml", "verify"}} {
		t.Run(c.action, func(t *testing.T) {
			step := r.installStep(t, c.action)
			ctx := map[string]string{
				"github.action_ref": installTag, "github.action_repository": installRepo,
				"github.repository": "someone/else", "github.action_path": filepath.Join(r.root, c.dir),
				"inputs.github-token": r.g.Token,
			}
			for name, in := range step.inputs {
				if _, set := ctx["inputs."+name]; !set {
					ctx["inputs."+name] = in.Default
				}
			}
			cache := t.TempDir()
			out, stderr, err := r.runStep(t, step, ctx, cache)
			if err != nil {
				t.Fatalf("install step: %v\n%s", err, stderr)
			}
			bin := filepath.Join(cache, "cloche", installTag, runtime.GOOS+"-"+runtime.GOARCH, "cloche")
			if out != "bin="+bin+"\n" {
				t.Fatalf("GITHUB_OUTPUT is %q, want bin=%s\n%s", out, bin, stderr)
			}
			if b, err := exec.Command(bin, "version").CombinedOutput(); err != nil || !strings.HasPrefix(string(b), "cloche "+installTag+"\n") {
				t.Fatalf("%s version: %v\n%s", bin, err, b)
			}
			// The build action installs the guest init beside cloche; verify does not need it.
			_, err = os.Stat(filepath.Join(filepath.Dir(bin), "cloche-guest"))
			if wantAgent := c.action == "action.yml"; (err == nil) != wantAgent {
				t.Errorf("cloche-guest installed: %v, want %v", err == nil, wantAgent)
			}
			// A refused install fails the step, and hands on no binary.
			ctx["inputs.github-token"] = "ghs_wrong"
			out, stderr, err = r.runStep(t, step, ctx, t.TempDir())
			if err == nil || out != "" || !strings.Contains(stderr, "HTTP 401") {
				t.Fatalf("a refused install: %v, GITHUB_OUTPUT %q\n%s", err, out, stderr)
			}
		})
	}
}

type actionInput struct {
	Default string `yaml:"default"`
}

type actionStep struct {
	inputs map[string]actionInput
	env    map[string]string
	run    string
}

// installStep reads the step with id cloche (the install) from an action.yml.
func (r *installRelease) installStep(t *testing.T, action string) actionStep {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(r.root, action))
	if err != nil {
		t.Fatal(err)
	}
	var meta struct {
		Inputs map[string]actionInput `yaml:"inputs"`
		Runs   struct {
			Steps []struct {
				ID    string            `yaml:"id"`
				Shell string            `yaml:"shell"`
				Env   map[string]string `yaml:"env"`
				Run   string            `yaml:"run"`
			} `yaml:"steps"`
		} `yaml:"runs"`
	}
	if err := yaml.Unmarshal(b, &meta); err != nil {
		t.Fatalf("%s: %v", action, err)
	}
	for _, s := range meta.Runs.Steps {
		if s.ID == "cloche" {
			if s.Shell != "bash" {
				t.Fatalf("%s: the install step's shell is %q, want bash", action, s.Shell)
			}
			return actionStep{inputs: meta.Inputs, env: s.Env, run: s.Run}
		}
	}
	t.Fatalf("%s has no step with id cloche", action)
	return actionStep{}
}

var expression = regexp.MustCompile(`\$\{\{\s*(.*?)\s*\}\}`)

// evaluate expands the ${{ a }} and ${{ a || b }} expressions of s from ctx; any other
// expression fails the test, so a new one is added here knowingly.
func evaluate(t *testing.T, s string, ctx map[string]string) string {
	t.Helper()
	return expression.ReplaceAllStringFunc(s, func(m string) string {
		for _, operand := range strings.Split(expression.FindStringSubmatch(m)[1], "||") {
			v, ok := ctx[strings.TrimSpace(operand)]
			if !ok {
				t.Fatalf("the install step uses %s, which this test does not evaluate", m)
			}
			if v != "" {
				return v
			}
		}
		return ""
	})
}

// runStep runs the step's script as the runner does for shell: bash, with GITHUB_OUTPUT.
func (r *installRelease) runStep(t *testing.T, step actionStep, ctx map[string]string, cache string) (output, stderr string, err error) {
	t.Helper()
	if strings.Contains(step.run, "${{") {
		t.Fatal("the install step's script has an expression: inputs go through env")
	}
	dir := t.TempDir()
	script, out := filepath.Join(dir, "step.sh"), filepath.Join(dir, "output")
	if err := os.WriteFile(script, []byte(step.run), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "--noprofile", "--norc", "-eo", "pipefail", script)
	cmd.Env = []string{"PATH=" + runnerPath(t, r.stubs), "HOME=" + t.TempDir(), "GITHUB_OUTPUT=" + out,
		"GITHUB_API_URL=" + r.g.URL(), "GITHUB_SERVER_URL=https://github.com", "RUNNER_TOOL_CACHE=" + cache,
		"RUNNER_TEMP=" + t.TempDir(), "GH_STUB_LOG=" + r.ghLog}
	for k, v := range step.env {
		cmd.Env = append(cmd.Env, k+"="+evaluate(t, v, ctx))
	}
	var e bytes.Buffer
	cmd.Stderr = &e
	err = cmd.Run()
	b, _ := os.ReadFile(out)
	return string(b), e.String(), err
}
