package agent_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/internal/agent"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/job"
)

// randomSource is a source directory holding input.txt and size random bytes.
func randomSource(t *testing.T, size int) string {
	t.Helper()
	b := make([]byte, size)
	rand.Read(b)
	return testfixture.WriteTree(t, map[string]string{"input.txt": "x", "blob": string(b)})
}

// TestSourceCountsAgainstDisk: a source that would not fit above the disk reserve is
// refused at submission, before it is unpacked, and nothing is left in the jobs directory.
func TestSourceCountsAgainstDisk(t *testing.T) {
	cfg := testConfig(mountTmpfs(t, "80m"))
	cfg.Budget.MinFreeDiskBytes = 1 << 20
	ta := startAgent(t, cfg, newStandIn(0))
	// Leave about 6 MiB free.
	filler := filepath.Join(cfg.StateDir, "filler")
	if err := os.WriteFile(filler, make([]byte, 74<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := ta.client.Submit(context.Background(), agent.JobSpec{Spec: job.Spec{Command: []string{"x"}}}, randomSource(t, 7<<20), nil)
	if !errors.Is(err, agent.ErrBusy) || !strings.Contains(err.Error(), "not enough free disk space for the source") || !strings.Contains(err.Error(), "507") {
		t.Fatalf("a source larger than the free disk: %v, want refused naming the disk", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(cfg.StateDir, "jobs")); len(entries) != 0 {
		t.Errorf("%d entries in the jobs directory after a refused submission", len(entries))
	}
	os.Remove(filler)
	if st, err := ta.client.Submit(context.Background(), agent.JobSpec{Spec: job.Spec{Command: []string{"small"}}}, randomSource(t, 1<<10), nil); err != nil || st.State != agent.StateSucceeded {
		t.Errorf("a small job after the refusal: %v %+v", err, st)
	}
}

// TestUserQueueBytes: one user's waiting jobs may hold only so many source bytes.
func TestUserQueueBytes(t *testing.T) {
	cfg := testConfig(shortDir(t))
	cfg.Budget.VMs = 1
	cfg.MaxSourceBytes, cfg.UserQueueBytes = 1<<20, 1<<20
	l := newStandIn(0)
	ta := startAgent(t, cfg, l)
	ctx := context.Background()
	first := submitAsync(ctx, ta.client, agent.JobSpec{Spec: job.Spec{Command: []string{"block"}}}, randomSource(t, 1<<10))
	waitState(t, ta.client, first.jobID(t), agent.StateRunning)
	queued := submitAsync(ctx, ta.client, agent.JobSpec{Spec: job.Spec{Command: []string{"q"}}}, randomSource(t, 600<<10))
	waitState(t, ta.client, queued.jobID(t), agent.StateQueued)
	_, err := ta.client.Submit(ctx, agent.JobSpec{Spec: job.Spec{Command: []string{"more"}}}, randomSource(t, 600<<10), nil)
	if !errors.Is(err, agent.ErrBusy) || !strings.Contains(err.Error(), "bytes of sources") || !strings.Contains(err.Error(), "the limit per user is 1048576 bytes") {
		t.Errorf("a source beyond the user's queued bytes: %v, want busy naming the byte limit", err)
	}
	close(l.release)
	for _, s := range []*submission{first, queued} {
		if st := s.wait(t); st.State != agent.StateSucceeded {
			t.Errorf("job %s: %s (%s)", st.ID, st.State, st.Reason)
		}
	}
}

// TestUnlaunchedJobFilesRemoved: a job cancelled while queued has its unpacked source
// removed at once.
func TestUnlaunchedJobFilesRemoved(t *testing.T) {
	cfg := testConfig(shortDir(t))
	cfg.Budget.VMs = 1
	l := newStandIn(0)
	ta := startAgent(t, cfg, l)
	ctx := context.Background()
	first := submitAsync(ctx, ta.client, agent.JobSpec{Spec: job.Spec{Command: []string{"block"}}}, randomSource(t, 1<<10))
	waitState(t, ta.client, first.jobID(t), agent.StateRunning)
	queued := submitAsync(ctx, ta.client, agent.JobSpec{Spec: job.Spec{Command: []string{"q"}}}, randomSource(t, 1<<10))
	id := queued.jobID(t)
	waitState(t, ta.client, id, agent.StateQueued)
	src := filepath.Join(cfg.StateDir, "jobs", id, "src")
	if _, err := os.Stat(src); err != nil {
		t.Fatalf("the queued job has no unpacked source: %v", err)
	}
	if _, err := ta.client.Cancel(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(src); !os.IsNotExist(err) {
		t.Errorf("the cancelled job's source is still there (%v)", err)
	}
	close(l.release)
	first.wait(t)
}

// TestRestartOnFullDisk: an agent restarted on a full disk still starts, fails the job
// it found in flight in memory (saying the state is not saved), serves status, and saves
// the record once space is freed, instead of exiting into a restart loop.
func TestRestartOnFullDisk(t *testing.T) {
	cfg := testConfig(mountTmpfs(t, "8m"))
	dir := filepath.Join(cfg.StateDir, "jobs", "j-inflight")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	rec := agent.JobStatus{ID: "j-inflight", State: agent.StateRunning, Spec: agent.JobSpec{Spec: job.Spec{Command: []string{"x"}}}, SubmittedAt: time.Now().UTC()}
	b, _ := json.Marshal(rec)
	if err := os.WriteFile(filepath.Join(dir, "job.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	filler := fillDisk(t, cfg.StateDir)
	ta := startAgent(t, cfg, newStandIn(0))
	st, err := ta.client.Job(context.Background(), "j-inflight")
	if err != nil {
		t.Fatalf("status from an agent started on a full disk: %v", err)
	}
	if st.State != agent.StateFailed || !strings.Contains(st.Unsaved, "could not save") {
		t.Fatalf("the in-flight job after a restart on a full disk: %s unsaved=%q, want failed and marked unsaved", st.State, st.Unsaved)
	}
	if onDisk := readState(t, dir); onDisk != agent.StateRunning {
		t.Fatalf("record on the full disk says %s, want the old state (the write cannot have happened)", onDisk)
	}
	os.Remove(filler)
	waitFor(t, 10*time.Second, "the record to be saved after space was freed", func() bool {
		return readState(t, dir) == agent.StateFailed
	})
	if st, _ := ta.client.Job(context.Background(), "j-inflight"); st == nil || st.Unsaved != "" {
		t.Errorf("status after the record was saved: %+v, want no unsaved note", st)
	}
}

func readState(t *testing.T, dir string) agent.State {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "job.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st agent.JobStatus
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st.State
}

// TestUnpackDiskFullIsServerError: running out of space (here inodes) while unpacking a
// source is the agent's fault: answered 507 naming the state disk, not 400 bad_request.
func TestUnpackDiskFullIsServerError(t *testing.T) {
	cfg := testConfig(mountTmpfs(t, "32m,nr_inodes=40"))
	ta := startAgent(t, cfg, newStandIn(0))
	files := map[string]string{"input.txt": "x"}
	for i := range 100 {
		files[fmt.Sprintf("f%03d", i)] = "y"
	}
	_, err := ta.client.Submit(context.Background(), agent.JobSpec{Spec: job.Spec{Command: []string{"x"}}}, testfixture.WriteTree(t, files), nil)
	if err == nil || !strings.Contains(err.Error(), "507") || !strings.Contains(err.Error(), "state disk") || strings.Contains(err.Error(), "bad_request") {
		t.Fatalf("a source that fills the disk while unpacking: %v, want a 507 naming the state disk", err)
	}
}
