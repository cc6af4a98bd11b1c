package build

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
)

// examples/npm-lib, with the lockfile the machine's npm writes for it, built in the VM
// with node and npm from Debian: the host fetches its packages, the guest checks them
// against the lockfile, npm installs them offline from the dependency disk and the build
// step uses them; the verifier accepts the statement, which lists each package.
func TestNPMLibInVMWithCheckedPackages(t *testing.T) {
	if testing.Short() {
		t.Skip("runs npm and node in the VM: minutes under TCG")
	}
	e := newEnv(t)
	src := t.TempDir()
	for _, name := range []string{"package.json", "build.js"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "examples", "npm-lib", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	testfixture.NPMLock(t, src)
	o := e.options(t, src, "sh", "-c", "npm ci --ignore-scripts && npm run build")
	o.ToolchainImage = testfixture.NodeToolchain(t)
	o.Deps = job.DepsNPM
	o.Artifacts = []string{"dist/table.txt"}
	o.TimeoutSeconds, o.MemoryMiB = 1200, 1024
	out, err := Run(context.Background(), o)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	artifact := filepath.Join(o.OutDir, "dist", "table.txt")
	if got, want := readFile(t, artifact), "....1 number\n....x text\n...42 number\n2h = 7200000 ms\n"; got != want {
		t.Errorf("dist/table.txt = %q, want %q", got, want)
	}
	p, err := provenance.ParseStatement(verifyBuild(t, e, out, artifact))
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range testfixture.NPMPackages {
		name := provenance.NPMPackageDependencyPrefix + want[0]
		dep := p.Dependencies[name]
		if dep == nil || dep.Annotations["integrity"] != want[1] || len(dep.Digest["sha512"]) != 128 || !strings.HasSuffix(dep.URI, ".tgz") {
			t.Errorf("statement's dependency %s (%s) = %+v", name, path, dep)
		}
	}
}
