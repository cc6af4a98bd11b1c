package build

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/internal/guest"
	"github.com/cloche-dev/cloche/internal/npmlock"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/source"
)

func npmOptions(t *testing.T, src string) *Options {
	t.Helper()
	o := &Options{Spec: job.Spec{Command: []string{"true"}, Deps: job.DepsNPM}, SourceDir: src, OutDir: t.TempDir()}
	o.setDefaults()
	return o
}

func TestNPMDepsLockfileCheckedBeforeAnything(t *testing.T) {
	lock := func(v int, pkg string) string {
		return `{"lockfileVersion": ` + string(rune('0'+v)) + `, "packages": {"": {"name": "x"}` + pkg + `}}`
	}
	integrity := `"integrity": "` + testfixture.NPMPackages["node_modules/ms"][1] + `"`
	for name, c := range map[string]struct {
		files map[string]string
		want  string
	}{
		"no lockfile":     {map[string]string{"package.json": "{}"}, "no package-lock.json"},
		"no package.json": {map[string]string{"package-lock.json": lock(3, "")}, "no package.json"},
		"version 1":       {map[string]string{"package.json": "{}", "package-lock.json": lock(1, "")}, "lockfileVersion is 1, expected 2 or 3"},
		"not json":        {map[string]string{"package.json": "{}", "package-lock.json": "{"}, "package-lock.json"},
		"no resolved":     {map[string]string{"package.json": "{}", "package-lock.json": lock(3, `, "node_modules/ms": {"version": "2.1.3", `+integrity+`}`)}, "node_modules/ms (ms@2.1.3) has no resolved location"},
		"no integrity":    {map[string]string{"package.json": "{}", "package-lock.json": lock(2, `, "node_modules/ms": {"version": "2.1.3", "resolved": "https://example.invalid/ms.tgz"}`)}, "node_modules/ms (ms@2.1.3) has no integrity"},
	} {
		err := npmOptions(t, testfixture.WriteTree(t, c.files)).CheckInput()
		var ie *InputError
		if !errors.As(err, &ie) || ie.Field != "Deps" || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: CheckInput = %v, want an InputError for Deps saying %q", name, err, c.want)
		}
	}
	good := lock(3, `, "node_modules/ms": {"version": "2.1.3", "resolved": "https://example.invalid/ms.tgz", `+integrity+`}, "node_modules/l": {"link": true}, "node_modules/b": {"inBundle": true, "version": "1.0.0"}`)
	if err := npmOptions(t, testfixture.WriteTree(t, map[string]string{"package.json": "{}", "package-lock.json": good})).CheckInput(); err != nil {
		t.Errorf("a good lockfile refused: %v", err)
	}
}

// npmHostFetch runs the host's dependency step for the project in src, with tamper (if
// any) playing a host that alters the fetched cache, and unpacks the archive as the guest
// does, returning the unpacked directory.
func npmHostFetch(t *testing.T, src string, tamper func(dir string) error) (string, error) {
	t.Helper()
	o := npmOptions(t, src)
	if err := o.CheckInput(); err != nil {
		t.Fatal(err)
	}
	o.afterDepsDownload = tamper
	r := &run{o: o, log: o.Logger, work: t.TempDir()}
	deps, archive, err := r.prepareDeps(context.Background())
	if err != nil {
		return "", err
	}
	if deps.Kind != job.DepsNPM || deps.Lockfile != "package-lock.json" {
		t.Errorf("deps = %+v", deps)
	}
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := filepath.Join(t.TempDir(), "deps")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := source.Unpack(context.Background(), f, deps.ArchiveSHA256, deps.ArchiveSize, dir, source.DefaultLimits(), 0, 0, false); err != nil {
		t.Fatal(err)
	}
	return dir, nil
}

func readLockfile(t *testing.T, dir string) *npmlock.Lockfile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, npmlock.Name))
	if err != nil {
		t.Fatal(err)
	}
	lf, err := npmlock.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	return lf
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// The host fetches the lockfile's packages with real npm; the guest's check passes on what
// it packed, and npm installs the project offline from exactly that.
func TestNPMHostFetchGuestVerifiesAndNPMInstallsOffline(t *testing.T) {
	src := testfixture.NPMProject(t)
	dir, err := npmHostFetch(t, src, nil)
	if err != nil {
		t.Fatal(err)
	}
	lf := readLockfile(t, src)
	pkgs, err := guest.VerifyNPMPackages(dir, lf, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if len(pkgs) != len(testfixture.NPMPackages) {
		t.Fatalf("checked %d packages, want %d: %+v", len(pkgs), len(testfixture.NPMPackages), pkgs)
	}
	for _, p := range pkgs {
		want := testfixture.NPMPackages["node_modules/"+p.Name]
		if p.Name+"@"+p.Version != want[0] || p.Integrity != want[1] || p.Resolved == "" || p.Resolved != lf.Packages["node_modules/"+p.Name].Resolved {
			t.Errorf("checked %+v, want %s %s resolved as the lockfile says", p, want[0], want[1])
		}
	}
	if err := (&job.Result{Type: job.ResultType, ManifestSHA256: strings.Repeat("a", 64), Packages: pkgs}).Validate(); err != nil {
		t.Errorf("the checked packages do not make a valid result record: %v", err)
	}

	// npm, pointed at the checked cache offline as the guest points it, installs from it.
	proj := t.TempDir()
	for _, name := range npmLockfiles {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(proj, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("npm", "ci", "--ignore-scripts")
	cmd.Dir = proj
	for _, e := range guest.BuildEnv(&job.Manifest{Deps: &job.Deps{Kind: job.DepsNPM}}) {
		if k, v, _ := strings.Cut(e, "="); strings.HasPrefix(k, "npm_config_") {
			if k == "npm_config_cache" {
				v = dir
			}
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	cmd.Env = append(cmd.Env, "PATH="+os.Getenv("PATH"), "HOME="+t.TempDir())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("offline npm ci from the checked cache: %v\n%s", err, out)
	}
	pj, err := os.ReadFile(filepath.Join(proj, "node_modules", "is-number", "package.json"))
	var meta struct{ Version string }
	if err != nil || json.Unmarshal(pj, &meta) != nil || meta.Version != "7.0.0" {
		t.Errorf("offline install: is-number's package.json %q, %v", pj, err)
	}
}

// contentOf is the content file of a package of the fixture in a fetched tree.
func contentOf(t *testing.T, dir, pkgPath string) string {
	t.Helper()
	h, err := npmlock.Strongest(testfixture.NPMPackages[pkgPath][1])
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, filepath.FromSlash(h.ContentPath()))
}

// A host that alters one byte of a package's tarball, drops one, or adds a file is
// refused by the guest's check, naming the package (or the file).
func TestNPMGuestRefusesWhatTheHostAltered(t *testing.T) {
	src := testfixture.NPMProject(t)
	lf := readLockfile(t, src)
	for name, c := range map[string]struct {
		tamper func(dir string) error
		want   string
	}{
		"one byte": {func(dir string) error {
			p := contentOf(t, dir, "node_modules/left-pad")
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			b[len(b)/2] ^= 1
			return os.WriteFile(p, b, 0o644)
		}, "package node_modules/left-pad (left-pad@1.3.0): its content on the dependency disk hashes to"},
		"removed": {func(dir string) error {
			return os.Remove(contentOf(t, dir, "node_modules/ms"))
		}, "package node_modules/ms (ms@2.1.3): its content _cacache/content-v2/sha512/e8/59/"},
		"index added": {func(dir string) error {
			p := filepath.Join(dir, "_cacache", "index-v5", "00", "00", "x")
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			return os.WriteFile(p, []byte("{}"), 0o644)
		}, "holds _cacache/index-v5/00/00/x"},
	} {
		dir, err := npmHostFetch(t, src, c.tamper)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		_, err = guest.VerifyNPMPackages(dir, lf, quietLog())
		if !errors.Is(err, guest.ErrPackageMismatch) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: VerifyNPMPackages = %v, want ErrPackageMismatch saying %q", name, err, c.want)
		}
	}
}

// A lockfile entry npm cannot fetch (a version that does not exist) is an error naming
// the entry, with npm's message.
func TestNPMFetchNamesUnfetchablePackage(t *testing.T) {
	src := testfixture.NPMProject(t)
	p := filepath.Join(src, npmlock.Name)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var lock map[string]any
	if err := json.Unmarshal(b, &lock); err != nil {
		t.Fatal(err)
	}
	ms := lock["packages"].(map[string]any)["node_modules/ms"].(map[string]any)
	ms["version"] = "2.1.99"
	ms["resolved"] = strings.Replace(ms["resolved"].(string), "2.1.3", "2.1.99", 1)
	if b, err = json.Marshal(lock); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = npmHostFetch(t, src, nil)
	if !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), "fetching npm package node_modules/ms (ms@2.1.99)") || !strings.Contains(err.Error(), "404") {
		t.Fatalf("prepareDeps = %v, want ErrInput naming node_modules/ms (ms@2.1.99) with npm's 404", err)
	}
	t.Log(err)
	if bytes.Contains([]byte(err.Error()), []byte("is-number")) {
		t.Errorf("the error names another package: %v", err)
	}
}
