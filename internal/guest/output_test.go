package guest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	tdxtestdata "github.com/google/go-tdx-guest/testing/testdata"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/verifier"
	attestclient "github.com/cloche-dev/cloche/internal/attest/client"
	"github.com/cloche-dev/cloche/internal/attest/simsp"
	"github.com/cloche-dev/cloche/internal/disk"
	"github.com/cloche-dev/cloche/job"
)

// sharedSimSP creates the simulated secure processor's keys once for all tests (it is slow).
// TestMain removes its directory.
var (
	simSPDir    string
	sharedSimSP = sync.OnceValues(func() (*simsp.SP, error) {
		dir, err := os.MkdirTemp("", "cloche-guest-simsp-")
		if err != nil {
			return nil, err
		}
		simSPDir = dir
		return simsp.LoadOrCreate(dir)
	})
)

// testInitRun is a guest init run with a real simulated TEE (the host's SimSP on the other end of a
// pipe) and an output disk image file of outSize bytes.
func testInitRun(t *testing.T, outSize int64) (*initRun, [32]byte, *simsp.SP, string, *bytes.Buffer) {
	t.Helper()
	sp, err := sharedSimSP()
	if err != nil {
		t.Fatal(err)
	}
	launch := sha256.Sum256([]byte("a manifest"))
	guestEnd, hostEnd := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _ = sp.Serve(ctx, hostEnd, simsp.Launch{HostData: launch}) }()
	t.Cleanup(func() { cancel(); guestEnd.Close(); hostEnd.Close() })

	outPath := filepath.Join(t.TempDir(), "output.img")
	f, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(outSize); err != nil {
		t.Fatal(err)
	}
	var console bytes.Buffer
	a := newInitRun(Config{Console: &console})
	a.out, a.outSize = f, outSize
	a.provider = attestclient.NewSimProvider(guestEnd)
	return a, launch, sp, outPath, &console
}

func testState(t *testing.T, launch [32]byte, log string) *buildState {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "log.txt")
	if err := os.WriteFile(logPath, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(log))
	return &buildState{
		manifest: &job.Manifest{MaxOutputBytes: 1 << 20},
		result: job.Result{
			Type: job.ResultType, ManifestSHA256: hex.EncodeToString(launch[:]),
			SourceTree: strings.Repeat("a", 40), ExitCode: 0, Artifacts: []job.Artifact{},
			Log: job.Digest{SHA256: hex.EncodeToString(sum[:]), Size: int64(len(log))},
		},
		logPath: logPath,
	}
}

// readBack reads the output disk as the host does and checks the evidence binds the result.
func readBack(t *testing.T, outPath string, sp *simsp.SP, launch [32]byte) (*disk.Output, *job.Result, string) {
	t.Helper()
	dest := t.TempDir()
	out, err := disk.ReadOutput(outPath, dest, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if out.Result == nil {
		return out, nil, dest
	}
	res, err := job.ParseResult(out.Result)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := attest.ParseEvidence(out.Evidence)
	if err != nil {
		t.Fatal(err)
	}
	rd := job.ReportData(out.Result)
	if _, err := verifier.Verify(ev, verifier.Options{
		AllowSimulated: true, SimRoots: []*x509.Certificate{sp.Root()},
		ExpectedHostData: launch[:], ExpectedReportData: rd[:],
	}); err != nil {
		t.Fatalf("the evidence does not bind the result record: %v", err)
	}
	return out, res, dest
}

func TestWriteResultWithArtifacts(t *testing.T) {
	a, launch, sp, outPath, _ := testInitRun(t, 1<<20)
	st := testState(t, launch, "build output\n")
	art := filepath.Join(t.TempDir(), "app")
	if err := os.WriteFile(art, []byte("binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("binary"))
	st.artifacts = []ArtifactFile{{Artifact: job.Artifact{Path: "dist/app", SHA256: hex.EncodeToString(sum[:]), Size: 6}, HostPath: art}}
	st.result.Artifacts = []job.Artifact{st.artifacts[0].Artifact}
	a.finish(context.Background(), st)
	if !a.done {
		t.Fatal("finish did not complete")
	}
	out, res, dest := readBack(t, outPath, sp, launch)
	if res.ExitCode != 0 || res.Error != "" || len(res.Artifacts) != 1 || string(out.Log) != "build output\n" || out.Error != "" {
		t.Errorf("result %+v, log %q, error %q", res, out.Log, out.Error)
	}
	if b, err := os.ReadFile(filepath.Join(dest, "artifacts", "dist", "app")); err != nil || string(b) != "binary" {
		t.Errorf("artifact: %q, %v", b, err)
	}
}

func TestWriteResultArtifactChangedAfterHashing(t *testing.T) {
	a, launch, _, _, _ := testInitRun(t, 1<<20)
	st := testState(t, launch, "")
	art := filepath.Join(t.TempDir(), "app")
	if err := os.WriteFile(art, []byte("BINARY"), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("binary"))
	st.artifacts = []ArtifactFile{{Artifact: job.Artifact{Path: "app", SHA256: hex.EncodeToString(sum[:]), Size: 6}, HostPath: art}}
	st.result.Artifacts = []job.Artifact{st.artifacts[0].Artifact}
	if err := a.writeResult(context.Background(), st, nil); !errors.Is(err, ErrArtifactChanged) {
		t.Errorf("artifact content differing from its digest: %v", err)
	}
}

func TestFinishRewritesAsFailureWhenOutputDiskTooSmall(t *testing.T) {
	a, launch, sp, outPath, _ := testInitRun(t, 64<<10)
	st := testState(t, launch, "log\n")
	art := filepath.Join(t.TempDir(), "big")
	big := bytes.Repeat([]byte("x"), 100<<10)
	if err := os.WriteFile(art, big, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(big)
	st.artifacts = []ArtifactFile{{Artifact: job.Artifact{Path: "big", SHA256: hex.EncodeToString(sum[:]), Size: int64(len(big))}, HostPath: art}}
	st.result.Artifacts = []job.Artifact{st.artifacts[0].Artifact}
	a.finish(context.Background(), st)
	out, res, _ := readBack(t, outPath, sp, launch)
	if res == nil || res.ExitCode != -1 || len(res.Artifacts) != 0 || !strings.Contains(res.Error, "writing the output disk") ||
		!strings.Contains(res.Error, "output too large") || !strings.Contains(out.Error, res.Error) || len(out.Artifacts) != 0 {
		t.Errorf("result %+v, error.txt %q, artifacts %v", res, out.Error, out.Artifacts)
	}
}

// TestFinishRewritesAsFailureOnWriteError: the output disk's backing file lives on a
// full file system (as when the host's state disk fills during a build), so writing the
// artifact fails with a device error; the guest rewrites the disk as a failure naming the
// write error instead of leaving no result.
func TestFinishRewritesAsFailureOnWriteError(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	a, launch, sp, _, _ := testInitRun(t, 4<<20)
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=256k"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	outPath := filepath.Join(mnt, "output.img")
	f, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(4 << 20); err != nil {
		t.Fatal(err)
	}
	a.out = f
	st := testState(t, launch, "log\n")
	art := filepath.Join(t.TempDir(), "big")
	big := bytes.Repeat([]byte("x"), 1<<20)
	if err := os.WriteFile(art, big, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(big)
	st.artifacts = []ArtifactFile{{Artifact: job.Artifact{Path: "big", SHA256: hex.EncodeToString(sum[:]), Size: int64(len(big))}, HostPath: art}}
	st.result.Artifacts = []job.Artifact{st.artifacts[0].Artifact}
	a.finish(context.Background(), st)
	if !a.done {
		t.Fatal("finish did not record the failure on the output disk")
	}
	out, res, _ := readBack(t, outPath, sp, launch)
	if res == nil || res.ExitCode != -1 || len(res.Artifacts) != 0 || !strings.Contains(res.Error, "writing the output disk") ||
		!strings.Contains(res.Error, "no space left on device") || len(out.Artifacts) != 0 {
		t.Errorf("result %+v, error.txt %q, artifacts %v", res, out.Error, out.Artifacts)
	}
}

func TestFailBeforeManifestWritesErrorOnly(t *testing.T) {
	a, launch, sp, outPath, console := testInitRun(t, 1<<20)
	a.step.Store("reading and checking the manifest on the input disk")
	a.fail(&stepError{step: "reading and checking the manifest on the input disk", err: errors.New("input disk manifest digest 00 does not match the launch-bound digest 11")})
	out, res, _ := readBack(t, outPath, sp, launch)
	if res != nil || out.Evidence != nil {
		t.Errorf("a result record or evidence was written for an unverified manifest")
	}
	want := "cloche-guest: reading and checking the manifest on the input disk: input disk manifest digest 00 does not match the launch-bound digest 11\n"
	if out.Error != want {
		t.Errorf("error.txt %q, expected %q", out.Error, want)
	}
	if !strings.Contains(console.String(), "cloche-guest: level=ERROR msg=FAILED") || !strings.Contains(console.String(), "does not match the launch-bound digest") {
		t.Errorf("console %q does not explain the failure", console.String())
	}
	// A second failure (say, the watchdog) does not overwrite the record.
	a.fail(errors.New("later"))
	if out2, _, _ := readBack(t, outPath, sp, launch); out2.Error != want {
		t.Errorf("the failure record was overwritten: %q", out2.Error)
	}
}

func TestFailAfterManifestWritesFailureResult(t *testing.T) {
	a, launch, sp, outPath, _ := testInitRun(t, 1<<20)
	st := testState(t, launch, "partial output\n")
	st.result.DurationMillis = 1234
	a.state = st
	a.fail(&stepError{step: "running the command", err: errors.New("command exceeded its time limit of 1s and was killed")})
	out, res, _ := readBack(t, outPath, sp, launch)
	if res == nil {
		t.Fatal("no result record")
	}
	if res.ExitCode != -1 || res.Error != "running the command: command exceeded its time limit of 1s and was killed" || res.ManifestSHA256 != hex.EncodeToString(launch[:]) ||
		string(out.Log) != "partial output\n" || res.Log.Size != int64(len("partial output\n")) {
		t.Errorf("result %+v, log %q", res, out.Log)
	}
	if out.Error != "cloche-guest: running the command: command exceeded its time limit of 1s and was killed\n" {
		t.Errorf("error.txt %q", out.Error)
	}
}

func TestWatchdogFiresAndResets(t *testing.T) {
	fired := make(chan time.Duration, 2)
	w := newWatchdog(50*time.Millisecond, func(d time.Duration) { fired <- d })
	w.Reset(300 * time.Millisecond)
	start := time.Now()
	select {
	case d := <-fired:
		if d != 300*time.Millisecond || time.Since(start) < 250*time.Millisecond {
			t.Errorf("fired with %s after %s; expected the re-armed 300ms", d, time.Since(start))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the watchdog never fired")
	}
	w.Stop()
	select {
	case d := <-fired:
		t.Errorf("fired twice (%s)", d)
	case <-time.After(400 * time.Millisecond):
	}
}

func TestPrefixWriter(t *testing.T) {
	var b bytes.Buffer
	w := &prefixWriter{w: &b, prefix: "cloche-guest: "}
	w.Write([]byte("one\ntwo\n"))
	if b.String() != "cloche-guest: one\ncloche-guest: two\n" {
		t.Errorf("%q", b.String())
	}
}

func TestBuildEnv(t *testing.T) {
	env := BuildEnv(&job.Manifest{SourceDateEpoch: 42, Env: map[string]string{"TZ": "Europe/Paris", "CC": "clang", "A": "1"}})
	want := []string{"PATH=" + BuildPath, "HOME=/tmp", "LANG=C.UTF-8", "TZ=Europe/Paris", "SOURCE_DATE_EPOCH=42", "A=1", "CC=clang"}
	if strings.Join(env, "\n") != strings.Join(want, "\n") {
		t.Errorf("%q, expected %q", env, want)
	}
}

// fixedTDX is a TDX provider that returns Intel's sample quote (its bindings are not this
// run's; only what writeResult does with TDX evidence is tested).
type fixedTDX struct{}

func (fixedTDX) TEE() attest.TEE { return attest.TEETDX }
func (fixedTDX) GetEvidence(context.Context, [64]byte) (*attest.Evidence, error) {
	return &attest.Evidence{TEE: attest.TEETDX, Report: bytes.Clone(tdxtestdata.RawQuote)}, nil
}

// TDX evidence leaves the guest with the CCEL event log, or not at all.
func TestWriteResultTDXEventLog(t *testing.T) {
	for _, withLog := range []bool{true, false} {
		a, launch, _, outPath, _ := testInitRun(t, 1<<20)
		a.provider = fixedTDX{}
		a.cfg.SysRoot = t.TempDir()
		tables := filepath.Join(a.cfg.SysRoot, "firmware", "acpi", "tables")
		log := append([]byte("the events TDVF logged"), bytes.Repeat([]byte{0xff}, 4096)...)
		if withLog {
			os.MkdirAll(filepath.Join(tables, "data"), 0o755)
			if err := os.WriteFile(filepath.Join(tables, "data", "CCEL"), log, 0o444); err != nil {
				t.Fatal(err)
			}
		}
		a.finish(context.Background(), testState(t, launch, "build output\n"))
		out, err := disk.ReadOutput(outPath, t.TempDir(), 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		if !withLog {
			if out.Evidence != nil || !strings.Contains(out.Error, "data/CCEL") {
				t.Errorf("without the CCEL log: evidence %d bytes, error %q", len(out.Evidence), out.Error)
			}
			continue
		}
		ev, err := attest.ParseEvidence(out.Evidence)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ev.EventLog, log) {
			t.Errorf("evidence event log is %d bytes, want the %d of data/CCEL", len(ev.EventLog), len(log))
		}
	}
}
