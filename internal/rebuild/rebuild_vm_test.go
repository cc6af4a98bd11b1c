package rebuild

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/host"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/job"
)

// A build with Go dependencies, rebuilt from its bundle: the rebuild fetches the modules
// again for the source's go.sum, the guest checks them, and the artifacts (digests of what
// the dependency disk held) match. Two QEMU boots with the busybox toolchain.
func TestRebuildWithGoDepsMatches(t *testing.T) {
	if testing.Short() {
		t.Skip("two QEMU boots")
	}
	testfixture.RequireQEMU(t)
	gomodcache, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatal(err)
	}
	// The host's own module cache is the proxy: no network.
	t.Setenv("GOPROXY", "file://"+filepath.Join(strings.TrimSpace(string(gomodcache)), "cache", "download"))
	t.Setenv("GOSUMDB", "off")
	src := testfixture.WriteTree(t, map[string]string{
		"go.mod": "module example.com/m\n\ngo 1.22\n\nrequire github.com/google/uuid v1.6.0\n",
		"go.sum": "github.com/google/uuid v1.6.0 h1:NIvaJDMOsjHA8n1jAhLSgzrAzy1Hgr+hNrb57e+94F0=\ngithub.com/google/uuid v1.6.0/go.mod h1:TIyPZe4MgqvfeYDBFedMoGGpEw/LqOeaOT+nhxU+yHo=\n",
		"build.sh": "mkdir -p dist\nsha256sum /deps/cache/download/github.com/google/uuid/@v/v1.6.0.zip > dist/uuid.sum\n" +
			"ls /deps/cache/download/github.com/google/uuid/@v > dist/list.txt\n",
	})
	toolchain := testfixture.BusyboxToolchain(t)
	cfg := host.Config{StateDir: t.TempDir(), TEE: attest.TEESim, GuestImage: testfixture.GuestImage(t), Toolchain: toolchain,
		Accel: "tcg", Version: "0.1.0-test"}
	h, err := host.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	orig := filepath.Join(t.TempDir(), "orig")
	first, err := h.Run(context.Background(), host.Job{SourceDir: src, OutDir: orig, Spec: job.Spec{
		Command: []string{"sh", "build.sh"}, Artifacts: []string{"dist/*"}, Deps: job.DepsGo,
		TimeoutSeconds: 60, VCPUs: 1, MemoryMiB: 512, SourceDateEpoch: 1700000000}})
	if err != nil {
		t.Fatalf("build: %v", err)
	}

	rep, err := Run(context.Background(), Options{Bundle: first.BundlePath, SourceDir: src, OutDir: filepath.Join(t.TempDir(), "rebuilt"),
		Toolchain: toolchain, Host: cfg})
	if err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	var lines []string
	for _, l := range rep.Lines {
		lines = append(lines, l.String())
	}
	if !rep.Matched() || len(rep.Lines) != 3 || rep.Lines[1].Name != "dist/list.txt" || rep.Lines[2].Name != "dist/uuid.sum" {
		t.Fatalf("report:\n%s\nwant SHA256SUMS, dist/list.txt and dist/uuid.sum matched", strings.Join(lines, "\n"))
	}
	if len(rep.Warnings) != 0 {
		t.Errorf("warnings %v: the guest image is the recorded one", rep.Warnings)
	}
	if rep.Outcome.BundlePath == first.BundlePath {
		t.Fatal("the rebuild wrote over the original bundle")
	}
	// What the rebuild made is what the original build made, byte for byte.
	for _, name := range []string{"dist/uuid.sum", "dist/list.txt"} {
		a, _ := os.ReadFile(filepath.Join(orig, name))
		b, _ := os.ReadFile(filepath.Join(rep.Outcome.ArtifactDir, name))
		if len(a) == 0 || string(a) != string(b) {
			t.Errorf("%s: original %q, rebuilt %q", name, a, b)
		}
	}

	// The source's go.sum without the module: a different tree, refused before any VM.
	if err := os.WriteFile(filepath.Join(src, "go.sum"), []byte(""), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Run(context.Background(), Options{Bundle: first.BundlePath, SourceDir: src, OutDir: filepath.Join(t.TempDir(), "rebuilt"),
		Toolchain: toolchain, Host: cfg})
	var ie *InputError
	if !errors.As(err, &ie) || ie.Field != "SourceDir" {
		t.Fatalf("rebuild of another go.sum: %v, want an InputError for SourceDir", err)
	}
}

// A build whose output is not reproducible (a random id from the guest kernel): its rebuild
// runs, and differs in exactly that artifact, with ErrRebuildMismatch.
func TestRebuildOfUnreproducibleBuildDiffers(t *testing.T) {
	if testing.Short() {
		t.Skip("two QEMU boots")
	}
	testfixture.RequireQEMU(t)
	src := testfixture.WriteTree(t, map[string]string{"build.sh": "echo same > same.txt\ncat /proc/sys/kernel/random/uuid > random.txt\n"})
	toolchain := testfixture.BusyboxToolchain(t)
	cfg := host.Config{StateDir: t.TempDir(), TEE: attest.TEESim, GuestImage: testfixture.GuestImage(t), Toolchain: toolchain,
		Accel: "tcg", Version: "0.1.0-test"}
	h, err := host.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	first, err := h.Run(context.Background(), host.Job{SourceDir: src, OutDir: filepath.Join(t.TempDir(), "orig"), Spec: job.Spec{
		Command: []string{"sh", "build.sh"}, Artifacts: []string{"*.txt"}, TimeoutSeconds: 60, VCPUs: 1, MemoryMiB: 512}})
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	rep, err := Run(context.Background(), Options{Bundle: first.BundlePath, SourceDir: src, OutDir: filepath.Join(t.TempDir(), "rebuilt"),
		Toolchain: toolchain, Host: cfg})
	if !errors.Is(err, ErrRebuildMismatch) || rep == nil {
		t.Fatalf("rebuild: %v, want ErrRebuildMismatch with a report", err)
	}
	got := map[string]Status{}
	for _, l := range rep.Lines {
		got[l.Name] = l.Status
	}
	if len(got) != 3 || got["same.txt"] != Match || got["random.txt"] != Differ || got["SHA256SUMS"] != Differ || rep.Summary() != "REBUILD DIFFERED" {
		t.Fatalf("report %+v (%s), want same.txt MATCH, random.txt and SHA256SUMS DIFFER", rep.Lines, rep.Summary())
	}
}
