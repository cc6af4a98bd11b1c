package build

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/internal/fileio"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/internal/vmm"
)

// examples/go-cli (cobra, pflag, mousetrap and uuid from the module proxy) built in the VM
// with its dependencies from the dependency disk and Go from the module proxy is the same
// file, bit for bit, as `go build -trimpath` of the same source with the same Go on the
// host.
func TestGoCLIInVMIsBitIdenticalToHostBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles the Go standard library and four modules in the VM: minutes under TCG")
	}
	e := newEnv(t)
	version := strings.TrimSpace(goOutput(t, "", "env", "GOVERSION"))
	src := t.TempDir()
	for _, name := range []string{"main.go", "go.mod", "go.sum"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "examples", "go-cli", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	o := e.options(t, src, "go", "build", "-trimpath", "-o", "dist/go-cli", ".")
	o.ToolchainImage = testfixture.GoToolchain(t, version)
	o.Deps = "go"
	o.Env = map[string]string{"CGO_ENABLED": "0"}
	o.Artifacts = []string{"dist/go-cli"}
	o.VCPUs, o.MemoryMiB = 2, 2048
	o.SetTimeout(20 * time.Minute)
	if _, err := os.Stat("/dev/kvm"); err == nil {
		o.Accel = vmm.AccelAuto
	}
	out, err := Run(context.Background(), o)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	hostBin := filepath.Join(t.TempDir(), "go-cli")
	goOutput(t, src, "build", "-trimpath", "-o", hostBin, ".")
	guestSum, _, err := fileio.SHA256(filepath.Join(o.OutDir, "dist", "go-cli"))
	if err != nil {
		t.Fatal(err)
	}
	hostSum, _, err := fileio.SHA256(hostBin)
	if err != nil {
		t.Fatal(err)
	}
	if guestSum != hostSum {
		t.Fatalf("the VM's go-cli (sha256 %s) differs from the host's go build -trimpath (sha256 %s); go version -m of each:\n%s\n%s",
			guestSum, hostSum, goOutput(t, "", "version", "-m", filepath.Join(o.OutDir, "dist", "go-cli")), goOutput(t, "", "version", "-m", hostBin))
	}
	t.Logf("go-cli sha256 %s in the VM and on the host (%s)", guestSum, version)
	verifyBuild(t, e, out, filepath.Join(o.OutDir, "dist", "go-cli"))
}

// goOutput runs the host's go in dir, with its own GOPROXY as a user's go, and returns
// its output.
func goOutput(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOTOOLCHAIN=local")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(b)
}
