package testfixture

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
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
// machine's npm writes, from its configured registry, with each package's resolved
// location (which an offline install needs), and returns its directory. It skips without
// npm.
func NPMProject(tb testing.TB) string {
	tb.Helper()
	if _, err := exec.LookPath("npm"); err != nil {
		tb.Skipf("no npm: %v", err)
	}
	dir := tb.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "package.json"), []byte(NPMPackageJSON), 0o644); err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command("npm", "install", "--package-lock-only", "--ignore-scripts", "--omit-lockfile-registry-resolved=false",
		"--no-audit", "--no-fund", "--no-update-notifier", "--cache", filepath.Join(tb.TempDir(), "npmcache"))
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("npm writing the lockfile: %v\n%s", err, out)
	}
	return dir
}
