package build

import (
	"archive/zip"
	"context"
	"crypto/x509"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/internal/attest/simsp"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/verify"
)

const uuidModule = "github.com/google/uuid@v1.6.0"

// The busybox toolchain has no go: the build shows what the guest gives go (the checked
// module tree, read-only, and the environment), and the verifier accepts the statement
// that lists the module.
func TestBuildWithGoDepsListsCheckedModules(t *testing.T) {
	e := newEnv(t)
	hostModuleProxy(t)
	files := goDepsSource()
	files["build.sh"] = "mkdir -p dist\nenv | grep ^GO | sort > dist/env.txt\n" +
		"ls /deps/cache/download/github.com/google/uuid/@v > dist/proxy.txt\n" +
		"touch /deps/x 2>/dev/null && echo writable >> dist/proxy.txt\ntrue\n"
	o := e.options(t, testfixture.WriteTree(t, files), "sh", "build.sh")
	o.Deps = job.DepsGo
	o.Artifacts = []string{"dist/*"}
	out, err := Run(context.Background(), o)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	env := readFile(t, filepath.Join(o.OutDir, "dist", "env.txt"))
	for _, want := range []string{"GOFLAGS=-mod=readonly", "GOPROXY=file:///deps/cache/download", "GOSUMDB=off", "GOTOOLCHAIN=local"} {
		if !strings.Contains(env, want+"\n") {
			t.Errorf("build env lacks %s:\n%s", want, env)
		}
	}
	if got := readFile(t, filepath.Join(o.OutDir, "dist", "proxy.txt")); got != "v1.6.0.info\nv1.6.0.mod\nv1.6.0.zip\n" {
		t.Errorf("the build saw /deps/.../uuid/@v as %q", got)
	}
	stmt := verifyBuild(t, e, out, filepath.Join(o.OutDir, "dist", "env.txt"))
	p, err := provenance.ParseStatement(stmt)
	if err != nil {
		t.Fatal(err)
	}
	dep := p.Dependencies[provenance.GoModuleDependencyPrefix+uuidModule]
	if dep == nil || dep.Digest["dirHash1"] != "348bda24330eb231c0f27d630212d2833ac0cf2d4782bfa136b6f9edefbde05d" {
		t.Errorf("statement's dependency %s = %+v, want the go.sum hash as dirHash1", uuidModule, dep)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// verifyBuild runs the offline verifier over a finished build and returns the signed
// statement.
func verifyBuild(t *testing.T, e *env, out *Outcome, artifact string) []byte {
	t.Helper()
	pub, err := provenance.LoadPublicKey(e.publicKey)
	if err != nil {
		t.Fatal(err)
	}
	root, err := simsp.LoadOrCreate(e.simDir)
	if err != nil {
		t.Fatal(err)
	}
	simRoot, err := x509.ParseCertificate(root.Chain().ARK)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verify.Verify(context.Background(), verify.Options{
		BundlePath: out.BundlePath, PublicKey: pub, Artifacts: []string{artifact},
		AllowSimulated: true, SimRoots: []*x509.Certificate{simRoot}, Reference: verify.ReferenceOptions{GuestImageDir: e.guestImage},
		ExpectedSourceTree: out.SourceTree, Pins: verify.Pins{ToolchainDigest: out.ToolchainDigest},
	}); err != nil {
		t.Fatalf("verify: %v", err)
	}
	bundle, err := os.ReadFile(out.BundlePath)
	if err != nil {
		t.Fatal(err)
	}
	stmt, err := provenance.VerifyBundle(bundle, provenance.VerifyOptions{PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	return stmt
}

// A hostile host alters one file of one module after fetching it: the archive it packs is
// the one the manifest binds, so only the guest's check against go.sum can catch it, and
// it does before the command runs, naming the module.
func TestGuestRefusesTamperedModule(t *testing.T) {
	e := newEnv(t)
	hostModuleProxy(t)
	files := goDepsSource()
	files["build.sh"] = "echo SHOULD-NOT-RUN; touch ran\n"
	o := e.options(t, testfixture.WriteTree(t, files), "sh", "build.sh")
	o.Deps = job.DepsGo
	o.afterDepsDownload = func(dir string) error {
		return rewriteZipEntry(filepath.Join(dir, "cache/download/github.com/google/uuid/@v/v1.6.0.zip"), "/uuid.go",
			func(b []byte) []byte { return append(b, "\nfunc init() { println(\"backdoor\") }\n"...) })
	}
	console := &recordingWriter{}
	o.Console = console
	_, err := Run(context.Background(), o)
	var be *BuildError
	if !errors.As(err, &be) || !strings.Contains(be.FailureDetails.Error, uuidModule) || !strings.Contains(be.FailureDetails.Error, "go.sum") {
		t.Fatalf("Run = %v, want a build failure naming %s and go.sum", err, uuidModule)
	}
	t.Logf("refused as expected: %v", err)
	if strings.Contains(console.String(), "SHOULD-NOT-RUN") {
		t.Errorf("the command ran with a tampered module")
	}
	assertNoOutput(t, o.OutDir)
}

// rewriteZipEntry changes the content of the first entry of zipPath whose name ends in
// suffix, keeping every other entry as it was.
func rewriteZipEntry(zipPath, suffix string, change func([]byte) []byte) error {
	r, err := zip.OpenReader(zipPath)
	if err != nil {
		return err
	}
	defer r.Close()
	f, err := os.Create(zipPath + ".new")
	if err != nil {
		return err
	}
	defer f.Close()
	w := zip.NewWriter(f)
	done := false
	for _, zf := range r.File {
		b, err := readZipEntry(zf)
		if err != nil {
			return err
		}
		if !done && strings.HasSuffix(zf.Name, suffix) {
			b, done = change(b), true
		}
		dst, err := w.Create(zf.Name)
		if err != nil {
			return err
		}
		if _, err := dst.Write(b); err != nil {
			return err
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	if !done {
		return errors.New("no zip entry ends in " + suffix)
	}
	return os.Rename(zipPath+".new", zipPath)
}

func readZipEntry(zf *zip.File) ([]byte, error) {
	rc, err := zf.Open()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}
