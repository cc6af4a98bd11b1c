package agent_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/agent"
	"github.com/cloche-dev/cloche/internal/agent/client"
	"github.com/cloche-dev/cloche/internal/attest/simsp"
	"github.com/cloche-dev/cloche/internal/build"
	"github.com/cloche-dev/cloche/internal/host"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/verify"
)

// vmEnv is what the real-VM tests share: the guest image, the busybox toolchain, the
// simulated TEE and a signing key, all real.
type vmEnv struct {
	guestImage, toolchain, simDir, key string
	signer                             provenance.Signer
	simRoot                            *x509.Certificate
}

func newVMEnv(t *testing.T) *vmEnv {
	t.Helper()
	testfixture.RequireQEMU(t)
	key := filepath.Join(t.TempDir(), "key.pem")
	if err := provenance.GenerateKey(key, key+".pub"); err != nil {
		t.Fatal(err)
	}
	signer, err := provenance.LoadKeySigner(key)
	if err != nil {
		t.Fatal(err)
	}
	simDir := filepath.Join(testfixture.CacheDir(t), "sim-tee")
	sp, err := simsp.LoadOrCreate(simDir)
	if err != nil {
		t.Fatal(err)
	}
	return &vmEnv{guestImage: testfixture.GuestImage(t), toolchain: testfixture.BusyboxToolchain(t), simDir: simDir, key: key, signer: signer, simRoot: sp.Root()}
}

// launcher runs jobs on a host configured as the agent configures its own (host.New).
func (e *vmEnv) launcher(t *testing.T) agent.HostLauncher {
	t.Helper()
	h, err := host.New(context.Background(), host.Config{StateDir: t.TempDir(), TEE: attest.TEESim, SigningKey: e.key,
		GuestImage: e.guestImage, Toolchain: e.toolchain, SimDir: e.simDir, Accel: "tcg", Version: "0.1.0-test"})
	if err != nil {
		t.Fatal(err)
	}
	return agent.HostLauncher{Host: h}
}

// vmSpec is a small VM job running a shell script from the source.
func vmSpec(script ...string) agent.JobSpec {
	return agent.JobSpec{Spec: job.Spec{Command: append([]string{"sh", "-c"}, strings.Join(script, "\n")), VCPUs: 1, MemoryMiB: 512, TimeoutSeconds: 300, MaxOutputBytes: 1 << 20}}
}

// TestRealBuildsBudgetTwo: four real VM builds submitted at once against a budget of two
// complete with their own outputs, and each provenance verifies offline for its artifact.
func TestRealBuildsBudgetTwo(t *testing.T) {
	e := newVMEnv(t)
	ta := startAgent(t, testConfig(shortDir(t)), e.launcher(t))
	const n = 4
	var wg sync.WaitGroup
	results := make([]result, n)
	logs := make([]bytes.Buffer, n)
	maxRunning := 0
	var mu sync.Mutex
	for i := range n {
		src := testfixture.WriteTree(t, map[string]string{"input.txt": fmt.Sprintf("input number %d\n", i)})
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := ta.client.Submit(context.Background(), vmSpec("mkdir -p dist", "cat input.txt > dist/out.txt", "echo built by job-"+fmt.Sprint(i)+" >> dist/out.txt", "echo log-of-job-"+fmt.Sprint(i)), src, func(ev agent.Event) {
				if ev.Type == agent.EventLog {
					logs[i].Write(ev.Log)
				}
				if ev.Job != nil && ev.Job.State == agent.StateRunning {
					s, err := ta.client.Status(context.Background())
					if err == nil {
						mu.Lock()
						maxRunning = max(maxRunning, len(s.Running))
						mu.Unlock()
					}
				}
			})
			results[i] = result{st, err}
		}()
	}
	wg.Wait()
	pub, err := provenance.LoadPublicKey(e.key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("job %d: %v", i, r.err)
		}
		st := r.st
		if st.State != agent.StateSucceeded {
			t.Fatalf("job %d: %s: %s", i, st.State, st.Reason)
		}
		out := filepath.Join(t.TempDir(), "out")
		if err := ta.client.FetchResult(context.Background(), st, out); err != nil {
			t.Fatalf("job %d: %v", i, err)
		}
		got, err := os.ReadFile(filepath.Join(out, "dist", "out.txt"))
		if want := fmt.Sprintf("input number %d\nbuilt by job-%d\n", i, i); err != nil || string(got) != want {
			t.Errorf("job %d's artifact is %q (%v), want %q", i, got, err, want)
		}
		for k := range n {
			if has := strings.Contains(logs[i].String(), fmt.Sprintf("log-of-job-%d", k)); has != (k == i) {
				t.Errorf("job %d's streamed log mentions job %d: %v", i, k, has)
			}
		}
		res, err := verify.Verify(context.Background(), verify.Options{
			BundlePath: filepath.Join(out, build.BundleName), PublicKey: pub,
			Artifacts:      []string{filepath.Join(out, "dist", "out.txt")},
			AllowSimulated: true, SimRoots: []*x509.Certificate{e.simRoot},
			Reference:          verify.ReferenceOptions{GuestImageDir: e.guestImage},
			ExpectedSourceTree: st.Result.SourceTree, Pins: verify.Pins{ToolchainDigest: st.Result.ToolchainDigest},
		})
		if err != nil {
			t.Errorf("job %d's provenance does not verify: %v", i, err)
		} else if res.SourceTree != st.Result.SourceTree || res.Measurement != st.Result.Measurement {
			t.Errorf("job %d: verified %s/%s, the agent reported %s/%s", i, res.SourceTree, res.Measurement, st.Result.SourceTree, st.Result.Measurement)
		}
	}
	if maxRunning > 2 {
		t.Errorf("%d jobs ran at once on a budget of 2", maxRunning)
	}
}

// TestRealStopPaths: with real VMs, a cancel mid-build stops QEMU within seconds, and a
// guest that never powers off (its command sleeps past the job's wall-clock limit) is
// killed at that limit. Both run at once on a budget of two.
func TestRealStopPaths(t *testing.T) {
	e := newVMEnv(t)
	ta := startAgent(t, testConfig(shortDir(t)), e.launcher(t))
	jobs := filepath.Join(ta.cfg.StateDir, "jobs")
	ctx := context.Background()
	src := testfixture.WriteTree(t, map[string]string{"input.txt": "x"})

	const limit = 75 // well past a TCG boot under load, so the guest is running its command
	wall := vmSpec("echo sleeping-forever", "sleep 100000")
	wall.WallClockSeconds = limit
	walled := submitAsync(ctx, ta.client, wall, src)
	cancelled := submitAsync(ctx, ta.client, vmSpec("echo build-started", "sleep 100000"), src)
	cid, wid := cancelled.jobID(t), walled.jobID(t)

	// Cancel once the build command runs inside the guest.
	waitFor(t, 4*time.Minute, "the build command to start in the guest", func() bool {
		var log bytes.Buffer
		ta.client.Log(ctx, cid, false, &log)
		return strings.Contains(log.String(), "build-started")
	})
	if n := vmsOf(t, jobs, cid); n != 1 {
		t.Fatalf("%d QEMU processes for the running job, want 1", n)
	}
	start := time.Now()
	if _, err := ta.client.Cancel(ctx, cid); err != nil {
		t.Fatal(err)
	}
	st := cancelled.wait(t)
	waitFor(t, 15*time.Second, "QEMU to be gone after the cancel", func() bool { return vmsOf(t, jobs, cid) == 0 })
	t.Logf("cancel: job ended and QEMU gone %s after the request", time.Since(start).Round(time.Millisecond))
	if st.State != agent.StateCancelled || !strings.HasPrefix(st.Reason, "cancelled by uid") {
		t.Errorf("cancelled job: %s (%s)", st.State, st.Reason)
	}

	st = walled.wait(t)
	if st.State != agent.StateFailed || !strings.HasPrefix(st.Reason, agent.ReasonWallClock) {
		t.Fatalf("job past its wall-clock limit: %s (%s)", st.State, st.Reason)
	}
	if n := vmsOf(t, jobs, wid); n != 0 {
		t.Errorf("%d QEMU processes left after the wall-clock limit", n)
	}
	ran := st.FinishedAt.Sub(*st.LaunchedAt)
	if ran < limit*time.Second {
		t.Errorf("the job was stopped after %s, before its limit of %ds", ran, limit)
	}
	var log bytes.Buffer
	ta.client.Log(ctx, wid, false, &log)
	if !strings.Contains(log.String(), "sleeping-forever") {
		t.Errorf("the guest never ran its command before the limit; log:\n%s", log.String())
	}
	t.Logf("wall-clock: stopped %s after launch (limit %ds)", ran.Round(time.Millisecond), limit)
}

// vmsOf counts QEMU processes working for one job.
func vmsOf(t *testing.T, jobsDir, id string) int {
	t.Helper()
	pids, err := agent.FindVMs(filepath.Join(jobsDir, id))
	if err != nil {
		t.Fatal(err)
	}
	return len(pids)
}

// childAgentProc is an agent in its own process, so that a test can kill -9 it.
type childAgentProc struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
}

func startChildAgent(t *testing.T, cfg agent.Config, simDir string) *childAgentProc {
	t.Helper()
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childEnv+"=agent", "CLOCHE_RUNNER_TEST_CONFIG="+string(b), "CLOCHE_RUNNER_TEST_SIMDIR="+simDir)
	p := &childAgentProc{cmd: cmd, stderr: &bytes.Buffer{}}
	cmd.Stderr = &lockedBuffer{b: p.stderr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	waitFor(t, time.Minute, "the child agent's socket", func() bool {
		c, err := net.Dial("unix", cfg.Socket)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return p
}

type lockedBuffer struct {
	mu sync.Mutex
	b  *bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// TestKillAgentDuringBuild: kill -9 of the agent while a VM build runs leaves no QEMU
// behind; the restarted agent reports the job failed with the reason, and a job that had
// finished before is still fetchable.
func TestKillAgentDuringBuild(t *testing.T) {
	e := newVMEnv(t)
	state := shortDir(t)
	cfg := testConfig(state)
	cfg.Launch = agent.LaunchConfig{GuestImage: e.guestImage, Toolchain: e.toolchain, SigningKey: e.key, Accel: "tcg"}
	jobs := filepath.Join(state, "jobs")
	ctx := context.Background()

	first := startChildAgent(t, cfg, e.simDir)
	c := client.New(cfg.Socket)
	defer c.Close()
	done, err := c.Submit(ctx, vmSpec("mkdir -p dist", "echo finished before the crash > dist/out.txt"), testfixture.WriteTree(t, map[string]string{"input.txt": "1"}), nil)
	if err != nil || done.State != agent.StateSucceeded {
		t.Fatalf("first job: %v %+v\nagent log:\n%s", err, done, first.stderr)
	}

	spec := vmSpec("echo build-started", "sleep 100000")
	spec.KeepOnDisconnect = true
	subCtx, cancelSub := context.WithCancel(ctx)
	defer cancelSub()
	running := submitAsync(subCtx, c, spec, testfixture.WriteTree(t, map[string]string{"input.txt": "2"}))
	id := running.jobID(t)
	waitFor(t, 4*time.Minute, "the build command to start in the guest", func() bool {
		var log bytes.Buffer
		c.Log(ctx, id, false, &log)
		return strings.Contains(log.String(), "build-started")
	})
	pids, err := agent.FindVMs(jobs)
	if err != nil || len(pids) != 1 {
		t.Fatalf("QEMU processes before the kill: %v %v", pids, err)
	}

	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	first.cmd.Wait()
	killed := time.Now()
	waitFor(t, 10*time.Second, "QEMU to die with the agent", func() bool {
		left, _ := agent.FindVMs(jobs)
		return len(left) == 0
	})
	t.Logf("QEMU (pid %d) gone %s after the agent was killed", pids[0], time.Since(killed).Round(time.Millisecond))
	if r := <-running.done; r.err == nil {
		t.Errorf("the client's stream ended cleanly although the agent was killed: %+v", r.st)
	}

	second := startChildAgent(t, cfg, e.simDir)
	st, err := c.Job(ctx, id)
	if err != nil {
		t.Fatalf("job after the restart: %v\nagent log:\n%s", err, second.stderr)
	}
	if st.State != agent.StateFailed || !strings.HasPrefix(st.Reason, agent.ReasonRestarted) {
		t.Errorf("in-flight job after the restart: %s (%s)", st.State, st.Reason)
	}
	old, err := c.Job(ctx, done.ID)
	if err != nil || old.State != agent.StateSucceeded {
		t.Fatalf("finished job after the restart: %v %+v", err, old)
	}
	out := filepath.Join(t.TempDir(), "out")
	if err := c.FetchResult(ctx, old, out); err != nil {
		t.Fatalf("fetching the finished job after the restart: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(out, "dist", "out.txt")); err != nil || string(b) != "finished before the crash\n" {
		t.Errorf("finished job's artifact after the restart: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(out, build.BundleName)); err != nil {
		t.Errorf("finished job's bundle after the restart: %v", err)
	}
	if left, _ := agent.FindVMs(jobs); len(left) != 0 {
		t.Errorf("QEMU processes after the restart: %v", left)
	}
	second.cmd.Process.Signal(syscall.SIGTERM)
	if err := second.cmd.Wait(); err != nil {
		t.Errorf("the restarted agent did not stop cleanly on SIGTERM: %v\n%s", err, second.stderr)
	}
}

// mountTmpfs mounts a tmpfs of the given size (e.g. "96m") on a new short directory.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := shortDir(t)
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		t.Skipf("mounting a tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// fillDisk writes a file in dir until its file system has no space left.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for len(chunk) >= 512 {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			chunk = chunk[:len(chunk)/2]
		}
	}
	return path
}

// TestRealOutputDiskFull: the state directory's file system fills while a real VM runs
// its build. QEMU reports the failing writes to the guest instead of pausing it, and the
// job fails within seconds of the build's end, naming the full disk, long before its
// wall-clock limit.
func TestRealOutputDiskFull(t *testing.T) {
	e := newVMEnv(t)
	ta := startAgent(t, testConfig(mountTmpfs(t, "96m")), e.launcher(t))
	ctx := context.Background()
	spec := vmSpec("echo build-started", "sleep 4", "head -c 800000 /dev/zero > big.bin")
	spec.Artifacts = []string{"big.bin"}
	spec.WallClockSeconds = 120
	sub := submitAsync(ctx, ta.client, spec, testfixture.WriteTree(t, map[string]string{"input.txt": "x"}))
	id := sub.jobID(t)
	waitFor(t, 4*time.Minute, "the build command to start in the guest", func() bool {
		var log bytes.Buffer
		ta.client.Log(ctx, id, false, &log)
		return strings.Contains(log.String(), "build-started")
	})
	fillDisk(t, ta.cfg.StateDir)
	filled := time.Now()
	st := sub.wait(t)
	took := time.Since(filled)
	t.Logf("job ended %s after the disk filled: %s (%s)", took.Round(time.Millisecond), st.State, st.Reason)
	if st.State != agent.StateFailed || !strings.Contains(st.Reason, "output disk full") {
		t.Fatalf("job on a full disk: %s (%s), want failed naming the output disk full", st.State, st.Reason)
	}
	if took > 60*time.Second {
		t.Errorf("the job took %s to fail after the disk filled, want seconds", took)
	}
}
