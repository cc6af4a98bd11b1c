package build

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/job"
)

// hostModuleProxy makes the host's own module cache the GOPROXY of this test, so the
// dependency path is tested without a network: it holds this module's dependencies.
func hostModuleProxy(t *testing.T) {
	t.Helper()
	out, err := runGo(t, "env", "GOMODCACHE")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("GOPROXY", "file://"+filepath.Join(strings.TrimSpace(out), "cache", "download"))
	t.Setenv("GONOSUMDB", "*")
	t.Setenv("GOSUMDB", "off")
}

func runGo(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("go", args...)
	b, err := cmd.Output()
	return string(b), err
}

func TestDepsWithoutLockfileNamesTheFile(t *testing.T) {
	for _, missing := range []string{"go.mod", "go.sum"} {
		files := map[string]string{"go.mod": "module example.com/m\n\ngo 1.22\n", "go.sum": ""}
		delete(files, missing)
		src := testfixture.WriteTree(t, files)
		o := Options{Spec: job.Spec{Command: []string{"true"}, Deps: job.DepsGo}, SourceDir: src, OutDir: t.TempDir()}
		o.setDefaults()
		err := o.CheckInput()
		var ie *InputError
		if !errors.As(err, &ie) || ie.Field != "Deps" || !strings.Contains(err.Error(), "no "+missing) {
			t.Errorf("without %s: CheckInput = %v, want an InputError for Deps naming %s", missing, err, missing)
		}
	}
}

func TestDepsUnknownKindRefused(t *testing.T) {
	src := testfixture.WriteTree(t, map[string]string{"go.mod": "module m\n", "go.sum": ""})
	o := Options{Spec: job.Spec{Command: []string{"true"}, Deps: "cargo"}, SourceDir: src, OutDir: t.TempDir()}
	o.setDefaults()
	if err := o.CheckInput(); err == nil || !strings.Contains(err.Error(), `"cargo"`) {
		t.Errorf("CheckInput = %v, want a refusal of kind cargo", err)
	}
}

func TestGoModDownloadNamesUnfetchableModule(t *testing.T) {
	hostModuleProxy(t)
	src := testfixture.WriteTree(t, map[string]string{
		"go.mod":  "module example.com/m\n\ngo 1.22\n\nrequire example.com/not-in-the-proxy v1.2.3\n",
		"go.sum":  "",
		"main.go": "package main\n\nimport _ \"example.com/not-in-the-proxy\"\n\nfunc main() {}\n",
	})
	err := goModDownload(context.Background(), src, filepath.Join(t.TempDir(), "modcache"))
	if !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), "example.com/not-in-the-proxy@v1.2.3") {
		t.Fatalf("goModDownload = %v, want ErrInput naming example.com/not-in-the-proxy@v1.2.3", err)
	}
}

func TestPrepareDepsPacksTheProxyTree(t *testing.T) {
	hostModuleProxy(t)
	src := testfixture.WriteTree(t, goDepsSource())
	o := Options{Spec: job.Spec{Command: []string{"true"}, Deps: job.DepsGo}, SourceDir: src, OutDir: t.TempDir()}
	o.setDefaults()
	r := &run{o: &o, log: o.Logger, work: t.TempDir()}
	var files []string
	o.afterDepsDownload = func(dir string) error {
		return filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				rel, _ := filepath.Rel(dir, p)
				files = append(files, filepath.ToSlash(rel))
			}
			return err
		})
	}
	deps, archive, err := r.prepareDeps(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if deps.Lockfile != "go.sum" || deps.Kind != job.DepsGo || deps.ArchiveSize <= 0 {
		t.Errorf("deps = %+v", deps)
	}
	if _, err := os.Stat(archive); err != nil {
		t.Error(err)
	}
	want := "cache/download/github.com/google/uuid/@v/v1.6.0.zip"
	found := false
	for _, f := range files {
		found = found || f == want
		if !proxyFile(strings.TrimPrefix(f, "cache/download/")) {
			t.Errorf("packed %s, which is no module proxy file", f)
		}
	}
	if !found {
		t.Errorf("packed %v, want %s among them", files, want)
	}
}

// goDepsSource is a Go module with one dependency, in the host's module cache.
func goDepsSource() map[string]string {
	return map[string]string{
		"go.mod":  "module example.com/m\n\ngo 1.22\n\nrequire github.com/google/uuid v1.6.0\n",
		"go.sum":  "github.com/google/uuid v1.6.0 h1:NIvaJDMOsjHA8n1jAhLSgzrAzy1Hgr+hNrb57e+94F0=\ngithub.com/google/uuid v1.6.0/go.mod h1:TIyPZe4MgqvfeYDBFedMoGGpEw/LqOeaOT+nhxU+yHo=\n",
		"main.go": "package main\n\nimport (\n\t\"fmt\"\n\n\t\"github.com/google/uuid\"\n)\n\nfunc main() { fmt.Println(uuid.NewSHA1(uuid.NameSpaceURL, []byte(\"cloche\"))) }\n",
	}
}
