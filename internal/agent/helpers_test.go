package agent_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/internal/agent"
	"github.com/cloche-dev/cloche/internal/agent/client"
	"github.com/cloche-dev/cloche/internal/build"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
)

// standIn is a fast Launcher for scheduler tests: it reads input.txt from the source,
// writes out/result.txt = "<command joined>:<upper-cased input>" and a bundle naming the
// job, and reports the stages like build.Run. Command "block" waits until the job's
// context ends or release is closed.
type standIn struct {
	delay   time.Duration
	release chan struct{}

	mu         sync.Mutex
	running    int
	maxRunning int
	launched   map[string]time.Time
	stopped    map[string]error // jobs whose context ended while they ran: the cause
}

func newStandIn(delay time.Duration) *standIn {
	return &standIn{delay: delay, release: make(chan struct{}), launched: map[string]time.Time{}, stopped: map[string]error{}}
}

func (s *standIn) Launch(ctx context.Context, req agent.LaunchRequest) (*build.Outcome, error) {
	s.mu.Lock()
	s.launched[req.JobID] = time.Now()
	s.running++
	s.maxRunning = max(s.maxRunning, s.running)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.running--
		s.mu.Unlock()
	}()
	req.Stage(build.StageVM)
	fmt.Fprintf(req.Console, "stand-in: building job %s\n", req.JobID)
	in, err := os.ReadFile(filepath.Join(req.SourceDir, "input.txt"))
	if err != nil {
		return nil, fmt.Errorf("stand-in: %w", err)
	}
	if req.Spec.Command[0] == "block" {
		select {
		case <-ctx.Done():
			s.mu.Lock()
			s.stopped[req.JobID] = context.Cause(ctx)
			s.mu.Unlock()
			return nil, fmt.Errorf("stand-in VM stopped: %w", ctx.Err())
		case <-s.release:
		}
	}
	if req.Spec.Command[0] == "fail" {
		return nil, &build.BuildError{Err: build.ErrBuildFailed, FailureDetails: build.FailureDetails{ExitCode: 3, Error: "the build command exited with code 3"}}
	}
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	req.Stage(build.StageCollect)
	out := []byte(strings.Join(req.Spec.Command, " ") + ":" + strings.ToUpper(string(in)))
	if err := os.MkdirAll(filepath.Join(req.OutDir, "out"), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(req.OutDir, "out", "result.txt"), out, 0o644); err != nil {
		return nil, err
	}
	bundle := filepath.Join(req.OutDir, build.BundleName)
	if err := os.WriteFile(bundle, []byte(`{"job":"`+req.JobID+`"}`), 0o644); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(out)
	arts := []job.Artifact{{Path: "out/result.txt", SHA256: hex.EncodeToString(sum[:]), Size: int64(len(out))}}
	// The SHA256SUMS of the artifacts, as build.Run writes it beside them.
	if err := os.WriteFile(filepath.Join(req.OutDir, provenance.ChecksumsName), provenance.Checksums(arts), 0o644); err != nil {
		return nil, err
	}
	return &build.Outcome{
		Artifacts: arts, Checksums: provenance.ChecksumsArtifact(arts),
		ArtifactDir: req.OutDir, BundlePath: bundle, Measurement: strings.Repeat("ab", 48), TEE: "sim",
	}, nil
}

func (s *standIn) max() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxRunning
}

// shortDir returns a new directory with a short path (the VM's socket lives below the
// state directory, and unix socket paths are short), removed after the test.
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "cra")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// testConfig is a budget of two small VMs.
func testConfig(state string) agent.Config {
	return agent.Config{
		StateDir:         state,
		Socket:           filepath.Join(state, "agent.sock"),
		Budget:           agent.Budget{VCPUs: 2, MemoryMiB: 2048, VMs: 2, MinFreeDiskBytes: 1 << 20},
		QueueLimit:       100,
		UserQueueLimit:   100,
		UserUploads:      100,
		UserConnections:  1000,
		DefaultVCPUs:     1,
		DefaultMemoryMiB: 512,
		MaxOutputBytes:   1 << 20,
	}
}

type testAgent struct {
	agent  *agent.Agent
	client *client.Client
	cfg    agent.Config
	stop   func()
}

// startAgent runs an agent in this process on its real socket until the test ends.
func startAgent(t testing.TB, cfg agent.Config, l agent.Launcher) *testAgent {
	t.Helper()
	cfg = cfg.WithDefaults(agent.HostResources{CPUs: 2, MemoryMiB: 4096})
	a, err := agent.New(agent.Options{Config: cfg, Launcher: l, Version: "0.1.0-test", PublicKeyPath: "/nonexistent/key.pub",
		Logger: slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx) }()
	c := client.New(cfg.Socket)
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
			c.Close()
		})
	}
	t.Cleanup(stop)
	return &testAgent{agent: a, client: c, cfg: cfg, stop: stop}
}

// testLogWriter sends the agent's log to the test log while the test runs.
type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	defer func() { recover() }() // a log line after the test ended
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// waitFor polls cond until it holds or the limit passes.
func waitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// submitAsync submits in the background; the job's id arrives on ids, the end on done.
type submission struct {
	id   chan string
	done chan result
}

type result struct {
	st  *agent.JobStatus
	err error
}

func submitAsync(ctx context.Context, c *client.Client, spec agent.JobSpec, src string) *submission {
	s := &submission{id: make(chan string, 1), done: make(chan result, 1)}
	go func() {
		sent := false
		st, err := c.Submit(ctx, spec, src, func(ev agent.Event) {
			if !sent && ev.Job != nil {
				s.id <- ev.Job.ID
				sent = true
			}
		})
		if !sent {
			close(s.id)
		}
		s.done <- result{st, err}
	}()
	return s
}

func (s *submission) wait(t testing.TB) *agent.JobStatus {
	t.Helper()
	select {
	case r := <-s.done:
		if r.err != nil {
			t.Fatalf("submit: %v", r.err)
		}
		return r.st
	case <-time.After(5 * time.Minute):
		t.Fatal("the job did not end within 5 minutes")
	}
	return nil
}

func (s *submission) jobID(t testing.TB) string {
	t.Helper()
	select {
	case id, ok := <-s.id:
		if !ok {
			r := <-s.done
			t.Fatalf("the job was not accepted: %v", r.err)
		}
		return id
	case <-time.After(time.Minute):
		t.Fatal("the job was not accepted within a minute")
	}
	return ""
}

func waitState(t testing.TB, c *client.Client, id string, want agent.State) *agent.JobStatus {
	t.Helper()
	var st *agent.JobStatus
	waitFor(t, 3*time.Minute, fmt.Sprintf("job %s to be %s", id, want), func() bool {
		var err error
		st, err = c.Job(context.Background(), id)
		if err != nil {
			t.Fatalf("job %s: %v", id, err)
		}
		if st.State.Terminal() && st.State != want {
			t.Fatalf("job %s ended %s (%s), want %s", id, st.State, st.Reason, want)
		}
		return st.State == want
	})
	return st
}
