package guest

import (
	"archive/zip"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/job"
)

const (
	uuidZipH1 = "h1:NIvaJDMOsjHA8n1jAhLSgzrAzy1Hgr+hNrb57e+94F0="
	uuidModH1 = "h1:TIyPZe4MgqvfeYDBFedMoGGpEw/LqOeaOT+nhxU+yHo="
)

// uuidProxyTree copies github.com/google/uuid v1.6.0 (one of this module's dependencies)
// from the host's module cache into a fresh module proxy tree.
func uuidProxyTree(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatal(err)
	}
	from := filepath.Join(strings.TrimSpace(string(out)), "cache", "download", "github.com", "google", "uuid", "@v")
	dir := t.TempDir()
	to := filepath.Join(dir, "github.com", "google", "uuid", "@v")
	if err := os.MkdirAll(to, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"v1.6.0.mod", "v1.6.0.zip", "v1.6.0.info"} {
		b, err := os.ReadFile(filepath.Join(from, name))
		if err != nil {
			t.Skipf("module cache lacks uuid: %v", err)
		}
		if err := os.WriteFile(filepath.Join(to, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func uuidSums() map[string]string {
	return map[string]string{
		"github.com/google/uuid v1.6.0":        uuidZipH1,
		"github.com/google/uuid v1.6.0/go.mod": uuidModH1,
	}
}

func TestVerifyGoModulesAcceptsGoSum(t *testing.T) {
	mods, err := VerifyGoModules(uuidProxyTree(t), uuidSums())
	if err != nil {
		t.Fatal(err)
	}
	if len(mods) != 1 || mods[0].Path != "github.com/google/uuid" || mods[0].Version != "v1.6.0" ||
		mods[0].ZipH1 != uuidZipH1 || mods[0].ModH1 != uuidModH1 || len(mods[0].ZipSHA256) != 64 {
		t.Fatalf("modules = %+v", mods)
	}
}

// rewriteZipFile replaces one file's content in a module zip, keeping every other entry.
func rewriteZipFile(t *testing.T, zipPath, suffix string, content []byte) {
	t.Helper()
	r, err := zip.OpenReader(zipPath)
	if err != nil {
		t.Fatal(err)
	}
	out := zipPath + ".new"
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	w := zip.NewWriter(f)
	changed := false
	for _, zf := range r.File {
		dst, err := w.Create(zf.Name)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(zf.Name, suffix) && !changed {
			changed = true
			dst.Write(content)
			continue
		}
		src, err := zf.Open()
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(dst, src)
		src.Close()
	}
	r.Close()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if !changed {
		t.Fatalf("no entry ending in %s in %s", suffix, zipPath)
	}
	if err := os.Rename(out, zipPath); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyGoModulesRefusesAlteredModule(t *testing.T) {
	for name, alter := range map[string]func(t *testing.T, dir string){
		"zip": func(t *testing.T, dir string) {
			rewriteZipFile(t, filepath.Join(dir, "github.com/google/uuid/@v/v1.6.0.zip"), "/version7.go", []byte("package uuid\n"))
		},
		"mod": func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "github.com/google/uuid/@v/v1.6.0.mod"), []byte("module github.com/google/uuid\nrequire example.com/evil v1.0.0\n"), 0o644)
		},
	} {
		t.Run(name, func(t *testing.T) {
			dir := uuidProxyTree(t)
			alter(t, dir)
			_, err := VerifyGoModules(dir, uuidSums())
			if !errors.Is(err, ErrModuleMismatch) || !strings.Contains(err.Error(), "github.com/google/uuid@v1.6.0") {
				t.Fatalf("VerifyGoModules = %v, want ErrModuleMismatch naming github.com/google/uuid@v1.6.0", err)
			}
		})
	}
}

func TestVerifyGoModulesRefusesModuleNotInGoSum(t *testing.T) {
	sums := uuidSums()
	delete(sums, "github.com/google/uuid v1.6.0")
	_, err := VerifyGoModules(uuidProxyTree(t), sums)
	if !errors.Is(err, ErrModuleMismatch) || !strings.Contains(err.Error(), "not in go.sum") {
		t.Fatalf("VerifyGoModules = %v, want a refusal of a module go.sum does not name", err)
	}
}

func TestVerifyGoModulesRefusesStrayFile(t *testing.T) {
	dir := uuidProxyTree(t)
	os.WriteFile(filepath.Join(dir, "github.com/google/uuid/@v/list"), []byte("v1.6.0\n"), 0o644)
	if _, err := VerifyGoModules(dir, uuidSums()); err == nil || !strings.Contains(err.Error(), "no module proxy file") {
		t.Fatalf("VerifyGoModules = %v, want a refusal of the stray file", err)
	}
}

func TestBuildEnvPointsGoAtTheDependencyDisk(t *testing.T) {
	m := &job.Manifest{Deps: &job.Deps{Kind: job.DepsGo}}
	env := strings.Join(BuildEnv(m), "\n")
	for _, want := range []string{"GOPROXY=file:///deps/cache/download", "GOFLAGS=-mod=readonly", "GOSUMDB=off", "GOTOOLCHAIN=local", "GOMODCACHE=/tmp/gomodcache"} {
		if !strings.Contains(env, want+"\n") && !strings.HasSuffix(env, want) {
			t.Errorf("build env lacks %s:\n%s", want, env)
		}
	}
	if env := strings.Join(BuildEnv(&job.Manifest{}), "\n"); strings.Contains(env, "GOPROXY") {
		t.Errorf("build env without deps sets GOPROXY:\n%s", env)
	}
}

// Only the module proxy tree, which is checked against go.sum, may be on the dependency
// disk: anything beside it would reach the build unchecked.
func TestDependencyArchiveHoldsOnlyTheModuleCache(t *testing.T) {
	ok := testfixture.WriteTree(t, map[string]string{"cache/download/example.com/m/@v/v1.0.0.mod": "module example.com/m\n"})
	if err := onlyModuleCache(ok); err != nil {
		t.Fatalf("the module cache alone: %v", err)
	}
	if err := onlyModuleCache(t.TempDir()); err != nil {
		t.Fatalf("no modules: %v", err)
	}
	for _, stray := range []string{"proxy/example.com/m/@v/list", "cache/vcs/x", "go.mod"} {
		dir := testfixture.WriteTree(t, map[string]string{"cache/download/example.com/m/@v/v1.0.0.mod": "x", stray: "x"})
		if err := onlyModuleCache(dir); !errors.Is(err, ErrModuleMismatch) || !strings.Contains(err.Error(), strings.SplitN(stray, "/", 3)[0]) {
			t.Errorf("%s beside the cache: %v", stray, err)
		}
	}
}
