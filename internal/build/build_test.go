package build

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/disk"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
)

// env is what every end-to-end test here needs: a guest image, the busybox toolchain, a
// signing key and a simulated TEE, all real.
type env struct {
	guestImage, toolchain, simDir string
	signer                        provenance.Signer
	publicKey                     string // the signer's public key file
}

func newEnv(t *testing.T) *env {
	t.Helper()
	testfixture.RequireQEMU(t)
	dir := t.TempDir()
	key := filepath.Join(dir, "key.pem")
	if err := provenance.GenerateKey(key, key+".pub"); err != nil {
		t.Fatal(err)
	}
	signer, err := provenance.LoadKeySigner(key)
	if err != nil {
		t.Fatal(err)
	}
	return &env{
		guestImage: testfixture.GuestImage(t),
		toolchain:  testfixture.BusyboxToolchain(t),
		simDir:     filepath.Join(testfixture.CacheDir(t), "sim-tee"),
		signer:     signer,
		publicKey:  key + ".pub",
	}
}

func (e *env) options(t *testing.T, src string, command ...string) Options {
	return Options{
		Spec:           job.Spec{Command: command, TEE: attest.TEESim, TimeoutSeconds: 60, VCPUs: 1, MemoryMiB: 512},
		SourceDir:      src,
		OutDir:         filepath.Join(t.TempDir(), "out"),
		GuestImageDir:  e.guestImage,
		ToolchainImage: e.toolchain,
		SimDir:         e.simDir,
		Signer:         e.signer,
		Version:        "0.1.0-test",
		Accel:          "tcg",
		Console:        &testWriter{t: t},
	}
}

// testWriter sends the guest console to the test log, line by line.
type testWriter struct {
	t   *testing.T
	buf []byte
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			break
		}
		w.t.Log("console: " + strings.TrimRight(string(w.buf[:i]), "\r"))
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

func assertNoOutput(t *testing.T, out string) {
	t.Helper()
	entries, err := os.ReadDir(out)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("output directory %s has %d entries after a failed build, want none", out, len(entries))
	}
	if _, err := os.Stat(filepath.Join(out, BundleName)); err == nil {
		t.Errorf("a provenance bundle was written for a failed build")
	}
}

func TestBuildSucceedsWithBusybox(t *testing.T) {
	e := newEnv(t)
	src := testfixture.WriteTree(t, map[string]string{"build.sh": "mkdir -p dist\necho hello > dist/greeting.txt\nid -u > dist/uid.txt\ncat /proc/net/dev > dist/net.txt\n"})
	o := e.options(t, src, "sh", "build.sh")
	out, err := Run(context.Background(), o)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	got := map[string]string{}
	for _, a := range out.Artifacts {
		b, err := os.ReadFile(filepath.Join(o.OutDir, a.Path))
		if err != nil {
			t.Fatal(err)
		}
		got[a.Path] = string(b)
	}
	if got["dist/greeting.txt"] != "hello\n" {
		t.Errorf("greeting artifact = %q, want %q (artifacts %v)", got["dist/greeting.txt"], "hello\n", out.Artifacts)
	}
	if strings.TrimSpace(got["dist/uid.txt"]) != "1000" {
		t.Errorf("build ran as uid %q, want 1000", got["dist/uid.txt"])
	}
	if strings.Contains(got["dist/net.txt"], "eth") || strings.Contains(got["dist/net.txt"], "ens") {
		t.Errorf("the build saw a network interface:\n%s", got["dist/net.txt"])
	}
	if _, ok := got["build.sh"]; ok {
		t.Errorf("an unchanged source file was collected as an artifact")
	}
	if _, err := os.Stat(out.BundlePath); err != nil {
		t.Errorf("no bundle: %v", err)
	}
	if sums, err := os.ReadFile(filepath.Join(o.OutDir, provenance.ChecksumsName)); err != nil || string(sums) != string(provenance.Checksums(out.Artifacts)) {
		t.Errorf("%s = %q, %v; want the artifacts' sums", provenance.ChecksumsName, sums, err)
	}
}

func TestWriteChecksums(t *testing.T) {
	dir := t.TempDir()
	arts := []job.Artifact{{Path: "b", SHA256: strings.Repeat("b", 64), Size: 1}, {Path: "a/x", SHA256: strings.Repeat("a", 64), Size: 2}}
	got, err := writeChecksums(dir, arts)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, provenance.ChecksumsName))
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Repeat("a", 64) + "  a/x\n" + strings.Repeat("b", 64) + "  b\n"; string(b) != want {
		t.Fatalf("SHA256SUMS = %q, want %q", b, want)
	}
	if got == nil || got.Path != provenance.ChecksumsName || got.Size != int64(len(b)) || len(got.SHA256) != 64 {
		t.Fatalf("checksums artifact = %+v", got)
	}

	// A build that made its own SHA256SUMS keeps it.
	own := t.TempDir()
	os.WriteFile(filepath.Join(own, provenance.ChecksumsName), []byte("mine"), 0o644)
	if got, err := writeChecksums(own, append(arts, job.Artifact{Path: provenance.ChecksumsName, SHA256: strings.Repeat("c", 64)})); err != nil || got != nil {
		t.Fatalf("with an artifact of that name: %+v, %v; want nothing written", got, err)
	}
	if b, _ := os.ReadFile(filepath.Join(own, provenance.ChecksumsName)); string(b) != "mine" {
		t.Fatalf("the build's own SHA256SUMS was overwritten: %q", b)
	}
}

func TestBuildRejectsMissingSource(t *testing.T) {
	e := newEnv(t)
	o := e.options(t, filepath.Join(t.TempDir(), "does-not-exist"), "true")
	_, err := Run(context.Background(), o)
	if !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), "does-not-exist") {
		t.Fatalf("err = %v, want ErrInput naming the missing directory", err)
	}
	assertNoOutput(t, o.OutDir)
}

func TestBuildCommandNotFound(t *testing.T) {
	e := newEnv(t)
	o := e.options(t, testfixture.WriteTree(t, map[string]string{"a": "a"}), "no-such-compiler", "--version")
	_, err := Run(context.Background(), o)
	var be *BuildError
	if !errors.As(err, &be) || !strings.Contains(err.Error(), "command not found") || !strings.Contains(err.Error(), "no-such-compiler") {
		t.Fatalf("err = %v, want a build error saying command not found: no-such-compiler", err)
	}
	assertNoOutput(t, o.OutDir)
}

func TestBuildNonZeroExit(t *testing.T) {
	e := newEnv(t)
	o := e.options(t, testfixture.WriteTree(t, map[string]string{"a": "a"}), "sh", "-c", "echo compiling; echo 'error: it broke' >&2; exit 3")
	_, err := Run(context.Background(), o)
	var be *BuildError
	if !errors.As(err, &be) || !errors.Is(err, ErrBuildFailed) {
		t.Fatalf("err = %v, want ErrBuildFailed", err)
	}
	if be.ExitCode != 3 {
		t.Errorf("exit code = %d, want 3", be.ExitCode)
	}
	if !strings.Contains(be.LogTail, "error: it broke") || !strings.Contains(err.Error(), "exit code 3") {
		t.Errorf("error does not show the exit code and the log tail:\n%v", err)
	}
	assertNoOutput(t, o.OutDir)
}

func TestBuildTimeLimit(t *testing.T) {
	e := newEnv(t)
	o := e.options(t, testfixture.WriteTree(t, map[string]string{"a": "a"}), "sh", "-c", "sleep 300 & sleep 300")
	o.TimeoutSeconds = 3
	start := time.Now()
	_, err := Run(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "exceeded its time limit") {
		t.Fatalf("err = %v, want a time-limit error", err)
	}
	if d := time.Since(start); d > 90*time.Second {
		t.Errorf("a 3 s limit took %s to enforce", d)
	}
	assertNoOutput(t, o.OutDir)
}

// The job's rlimits reach the build's processes through the manifest: a file larger than
// the job's RLIMIT_FSIZE cannot be written, a smaller one can.
func TestBuildRlimitsFromTheJob(t *testing.T) {
	e := newEnv(t)
	o := e.options(t, testfixture.WriteTree(t, map[string]string{"a": "a"}), "sh", "-c",
		"head -c 4096 /dev/zero > small && { head -c 8193 /dev/zero > big; true; } && test $(wc -c < big) -eq 8192 && exit 9")
	o.Rlimits.FileSizeBytes = 8192
	_, err := Run(context.Background(), o)
	// Exit code 9 is the command's word that the limit held (the build fails so that
	// the test sees the code).
	var be *BuildError
	if !errors.As(err, &be) || be.ExitCode != 9 {
		t.Fatalf("err = %v; want exit code 9: the 8193-byte write stopped at the 8192-byte limit", err)
	}
}

func TestBuildOutputCap(t *testing.T) {
	e := newEnv(t)
	o := e.options(t, testfixture.WriteTree(t, map[string]string{"a": "a"}), "sh", "-c", "dd if=/dev/zero of=big.bin bs=1024 count=3072")
	o.MaxOutputBytes = 1 << 20
	_, err := Run(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "output larger than the cap") {
		t.Fatalf("err = %v, want an output-cap error", err)
	}
	assertNoOutput(t, o.OutDir)
}

// A hostile host swaps the manifest on the input disk after binding the digest: the guest
// must refuse before running anything.
func TestGuestRefusesCorruptedInputDisk(t *testing.T) {
	e := newEnv(t)
	o := e.options(t, testfixture.WriteTree(t, map[string]string{"a": "a"}), "sh", "-c", "echo SHOULD-NOT-RUN; touch x")
	console := &recordingWriter{}
	o.Console = console
	o.beforeLaunch = func(path string) error {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		// Flip one byte inside the manifest (it starts at block 1).
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, disk.BlockSize+40); err != nil {
			return err
		}
		b[0] ^= 0x01
		_, err = f.WriteAt(b, disk.BlockSize+40)
		return err
	}
	_, err := Run(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "does not match the launch-bound digest") {
		t.Fatalf("err = %v, want the guest's digest-mismatch refusal", err)
	}
	if strings.Contains(console.String(), "SHOULD-NOT-RUN") {
		t.Errorf("the build command ran despite the corrupted input disk")
	}
	assertNoOutput(t, o.OutDir)
}

// The source archive is bound through the manifest; a byte changed in it must be refused
// while unpacking.
func TestGuestRefusesCorruptedSourceArchive(t *testing.T) {
	e := newEnv(t)
	o := e.options(t, testfixture.WriteTree(t, map[string]string{"main.c": strings.Repeat("int x;\n", 100)}), "sh", "-c", "echo SHOULD-NOT-RUN; touch x")
	o.beforeLaunch = func(path string) error {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		// The archive starts after the manifest's blocks; flip a byte of the file content.
		b := make([]byte, disk.BlockSize)
		if _, err := f.ReadAt(b, 0); err != nil {
			return err
		}
		manifestLen := int64(b[16]) | int64(b[17])<<8 | int64(b[18])<<16
		archiveStart := disk.BlockSize + (manifestLen+disk.BlockSize-1)/disk.BlockSize*disk.BlockSize
		one := []byte{0}
		off := archiveStart + 512 + 10 // inside the first file's data
		if _, err := f.ReadAt(one, off); err != nil {
			return err
		}
		one[0] ^= 0x20
		_, err = f.WriteAt(one, off)
		return err
	}
	_, err := Run(context.Background(), o)
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "digest") {
		t.Fatalf("err = %v, want the guest's archive digest refusal", err)
	}
	assertNoOutput(t, o.OutDir)
}

type recordingWriter struct{ b strings.Builder }

func (w *recordingWriter) Write(p []byte) (int, error) { return w.b.Write(p) }
func (w *recordingWriter) String() string              { return w.b.String() }

// The cause of an input error stays inspectable (wrapped, not flattened to text), so a
// caller can tell a missing guest image from a corrupt one.
func TestBuildInputErrorKeepsCause(t *testing.T) {
	e := newEnv(t)
	o := e.options(t, testfixture.WriteTree(t, map[string]string{"a": "a"}), "true")
	o.GuestImageDir = filepath.Join(t.TempDir(), "no-guest-image")
	_, err := Run(context.Background(), o)
	if !errors.Is(err, ErrInput) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v, want ErrInput wrapping os.ErrNotExist", err)
	}
	assertNoOutput(t, o.OutDir)
}
