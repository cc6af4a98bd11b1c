package guest

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/internal/npmlock"
	"github.com/cloche-dev/cloche/job"
)

// npmCache writes contents into a fresh cache directory as npm's cacache keeps them
// (_cacache/content-v2/sha512/...) and returns it with each content's sha512 integrity.
func npmCache(t *testing.T, contents ...string) (string, []string) {
	t.Helper()
	dir := t.TempDir()
	var sris []string
	for _, c := range contents {
		sum := sha512.Sum512([]byte(c))
		h := npmlock.Hash{Algorithm: "sha512", Digest: sum[:]}
		writeContent(t, dir, h, c)
		sris = append(sris, h.SRI())
	}
	return dir, sris
}

func writeContent(t *testing.T, dir string, h npmlock.Hash, c string) {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(h.ContentPath()))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
		t.Fatal(err)
	}
}

func lockfile(t *testing.T, entries string) *npmlock.Lockfile {
	t.Helper()
	lf, err := npmlock.Parse([]byte(`{"lockfileVersion": 3, "packages": {"": {"name": "root"}` + entries + `}}`))
	if err != nil {
		t.Fatal(err)
	}
	return lf
}

func TestVerifyNPMPackagesCases(t *testing.T) {
	dir, sris := npmCache(t, "tarball a", "tarball b")
	entry := func(path, version, sri, extra string) string {
		return `, "` + path + `": {"version": "` + version + `", "resolved": "https://example.invalid/` + version + `.tgz", "integrity": "` + sri + `"` + extra + `}`
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	// The same package at two places is listed once; an optional package npm skipped
	// here may be missing.
	lf := lockfile(t, entry("node_modules/a", "1.0.0", sris[0], "")+entry("node_modules/x/node_modules/a", "1.0.0", sris[0], "")+
		entry("node_modules/b", "2.0.0", sris[1], "")+entry("node_modules/opt", "3.0.0", "sha512-"+strings.Repeat("A", 86)+"==", `, "optional": true`))
	pkgs, err := VerifyNPMPackages(dir, lf, log)
	if err != nil {
		t.Fatal(err)
	}
	if len(pkgs) != 2 || pkgs[0].Name != "a" || pkgs[0].Integrity != sris[0] || pkgs[0].Resolved != "https://example.invalid/1.0.0.tgz" || pkgs[1].Name != "b" {
		t.Errorf("packages = %+v", pkgs)
	}

	// A lockfile that gives only sha1 is checked against it, with a warning.
	sha1Dir := t.TempDir()
	sum1 := sha1.Sum([]byte("old tarball"))
	h1 := npmlock.Hash{Algorithm: "sha1", Digest: sum1[:]}
	writeContent(t, sha1Dir, h1, "old tarball")
	logs.Reset()
	if pkgs, err := VerifyNPMPackages(sha1Dir, lockfile(t, entry("node_modules/old", "0.1.0", h1.SRI(), "")), log); err != nil || len(pkgs) != 1 || pkgs[0].Integrity != h1.SRI() {
		t.Errorf("sha1 only: %+v, %v", pkgs, err)
	}
	if !strings.Contains(logs.String(), "only a sha1") {
		t.Errorf("sha1 only: no warning in %q", logs.String())
	}

	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	other := sha512.Sum512([]byte("other"))
	for name, c := range map[string]struct {
		entries, want string
	}{
		"no integrity":    {`, "node_modules/g": {"version": "1.0.0", "resolved": "git+https://example.invalid/g.git#abc"}`, "node_modules/g (g@1.0.0) is resolved from git+https://example.invalid/g.git#abc with no integrity"},
		"missing":         {entry("node_modules/a", "1.0.0", sris[0], "") + entry("node_modules/c", "1.0.0", "sha512-"+base64.StdEncoding.EncodeToString(other[:]), ""), "node_modules/c (c@1.0.0): its content _cacache/content-v2/sha512/"},
		"malformed":       {entry("node_modules/a", "1.0.0", "sha512-AAAA", ""), "node_modules/a (a@1.0.0): integrity"},
		"twice different": {entry("node_modules/a", "1.0.0", sris[0], "") + entry("node_modules/x/node_modules/a", "1.0.0", sris[1], ""), "a@1.0.0 is in the lockfile twice"},
		"unchecked file":  {entry("node_modules/a", "1.0.0", sris[0], ""), "holds _cacache/content-v2/sha512/"},
	} {
		_, err := VerifyNPMPackages(dir, lockfile(t, c.entries), quiet)
		if !errors.Is(err, ErrPackageMismatch) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrPackageMismatch saying %q", name, err, c.want)
		}
	}

	// A content file that is a symlink to the right bytes is refused all the same.
	linkDir := t.TempDir()
	h := func() npmlock.Hash { x, _ := npmlock.Strongest(sris[0]); return x }()
	target := filepath.Join(t.TempDir(), "t")
	if err := os.WriteFile(target, []byte("tarball a"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(linkDir, filepath.FromSlash(h.ContentPath()))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyNPMPackages(linkDir, lockfile(t, entry("node_modules/a", "1.0.0", sris[0], "")), quiet); !errors.Is(err, ErrPackageMismatch) || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("symlink: %v", err)
	}
}

func TestBuildEnvPointsNPMAtTheCheckedCacheOffline(t *testing.T) {
	// the manifest of an npm build: BuildEnv sets the cache and offline mode, and no go
	// settings.
	env := strings.Join(BuildEnv(&job.Manifest{Deps: &job.Deps{Kind: job.DepsNPM}}), "\n")
	for _, want := range []string{"npm_config_cache=" + DepsDir, "npm_config_offline=true"} {
		if !strings.Contains(env, want+"\n") && !strings.HasSuffix(env, want) {
			t.Errorf("BuildEnv lacks %s:\n%s", want, env)
		}
	}
	if strings.Contains(env, "GOPROXY") {
		t.Errorf("an npm build's env sets go's proxy:\n%s", env)
	}
}
