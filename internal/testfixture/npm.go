package testfixture

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/internal/image/toolchain"
)

// NPMPackages are the packages of NPMProject, by lockfile path: NAME@VERSION and the
// sha512 integrity the registry publishes for each.
var NPMPackages = map[string][2]string{
	"node_modules/is-number": {"is-number@7.0.0", "sha512-41Cifkg6e8TylSpdtTpeLVMqvSBEVzTttHvERD741+pnZ8ANv0004MRL43QKPDlK9cGvNp6NZWZUBlbGXYxxng=="},
	"node_modules/left-pad":  {"left-pad@1.3.0", "sha512-XI5MPzVNApjAyhQzphX8BkmKsKUxD4LdyK24iZeQGinBN9yTQT3bFlCBy/aVx2HrNcqQGsdot8ghrjyrvMCoEA=="},
	"node_modules/ms":        {"ms@2.1.3", "sha512-6FlzubTLZG3J2a/NVCAleEhjzq5oxgHyaCU9yYXvcLsvoVaHJq/s5xXI6/XXP6tz7R9xAOtHnSO/tXtF3WRTlA=="},
}

// NPMPackageJSON is the package.json of NPMProject: three tiny packages at exact versions.
const NPMPackageJSON = `{
  "name": "cloche-npm-fixture",
  "version": "1.0.0",
  "private": true,
  "dependencies": {"is-number": "7.0.0", "left-pad": "1.3.0", "ms": "2.1.3"}
}
`

// NPMProject makes a temporary npm project of NPMPackageJSON whose package-lock.json the
// machine's npm writes (NPMLock) and returns its directory. It skips without npm.
func NPMProject(tb testing.TB) string {
	tb.Helper()
	dir := tb.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "package.json"), []byte(NPMPackageJSON), 0o644); err != nil {
		tb.Fatal(err)
	}
	NPMLock(tb, dir)
	return dir
}

// NPMLock has the machine's npm write the package-lock.json of the package.json in dir,
// from its configured registry, with each package's resolved location (which an offline
// install needs). It skips without npm.
func NPMLock(tb testing.TB, dir string) {
	tb.Helper()
	if _, err := exec.LookPath("npm"); err != nil {
		tb.Skipf("no npm: %v", err)
	}
	cmd := exec.Command("npm", "install", "--package-lock-only", "--ignore-scripts", "--omit-lockfile-registry-resolved=false",
		"--no-audit", "--no-fund", "--no-update-notifier", "--cache", filepath.Join(tb.TempDir(), "npmcache"))
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("npm writing the lockfile: %v\n%s", err, out)
	}
}

// NodePackages are the Debian packages of NodeToolchain.
var NodePackages = []string{"nodejs", "npm"}

var nodeOnce once[string]

// NodeToolchain returns a Debian toolchain image with node and npm (NodePackages), built
// with mmdebstrap on first use (minutes) and cached, as `cloche image toolchain --package
// nodejs --package npm` makes it.
func NodeToolchain(tb testing.TB) string {
	tb.Helper()
	p, err := nodeOnce.get(func() (string, error) {
		fixtureLock.Lock()
		defer fixtureLock.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		defer cancel()
		_, path, err := toolchain.Build(ctx, toolchain.Options{Packages: NodePackages, StateDir: CacheDir(tb), Name: "node"})
		return path, err
	})
	if err != nil {
		tb.Fatalf("node toolchain: %v", err)
	}
	return p
}
