package agent_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/internal/agent"
	"github.com/cloche-dev/cloche/internal/build"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/source"
)

// TestFiftyJobsBudgetTwo: 50 jobs submitted at once over the real socket against a budget
// of two VMs all complete, each with its own output, and never more than two run at once.
func TestFiftyJobsBudgetTwo(t *testing.T) {
	l := newStandIn(10 * time.Millisecond)
	ta := startAgent(t, testConfig(shortDir(t)), l)
	const n = 50
	type sub struct {
		input string
		s     *submission
		logs  strings.Builder
	}
	subs := make([]*sub, n)
	var wg sync.WaitGroup
	for i := range subs {
		input := fmt.Sprintf("input of job %d\n", i)
		src := testfixture.WriteTree(t, map[string]string{"input.txt": input})
		s := &sub{input: input}
		subs[i] = s
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := ta.client.Submit(context.Background(), agent.JobSpec{Spec: job.Spec{Command: []string{"job", fmt.Sprint(i)}}}, src, func(ev agent.Event) {
				if ev.Type == agent.EventLog {
					s.logs.Write(ev.Log)
				}
			})
			s.s = &submission{done: make(chan result, 1)}
			s.s.done <- result{st, err}
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, s := range subs {
		st := s.s.wait(t)
		if st.State != agent.StateSucceeded {
			t.Fatalf("job %d: %s (%s)", i, st.State, st.Reason)
		}
		if seen[st.ID] {
			t.Fatalf("job id %s given twice", st.ID)
		}
		seen[st.ID] = true
		if want := "stand-in: building job " + st.ID + "\n"; s.logs.String() != want {
			t.Errorf("job %d's streamed log is %q, want %q", i, s.logs.String(), want)
		}
		out := filepath.Join(t.TempDir(), "out")
		if err := ta.client.FetchResult(context.Background(), st, out); err != nil {
			t.Fatalf("job %d: fetch: %v", i, err)
		}
		got, err := os.ReadFile(filepath.Join(out, "out", "result.txt"))
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("job %d:%s", i, strings.ToUpper(s.input)); string(got) != want {
			t.Errorf("job %d's result is %q, want %q", i, got, want)
		}
		bundle, err := os.ReadFile(filepath.Join(out, build.BundleName))
		if err != nil || !strings.Contains(string(bundle), st.ID) {
			t.Errorf("job %d's bundle %q does not name it (%v)", i, bundle, err)
		}
		if st.LaunchedAt == nil || st.RunningAt == nil || st.FinishedAt == nil || st.LaunchedAt.Before(st.SubmittedAt) {
			t.Errorf("job %d's times are incomplete or out of order: %+v", i, st)
		}
	}
	if m := l.max(); m > 2 {
		t.Errorf("%d jobs ran at once, the budget is 2", m)
	}
	t.Logf("at most %d jobs ran at once", l.max())
	status, err := ta.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if status.Counts[agent.StateSucceeded] != n || len(status.Queued) != 0 || len(status.Running) != 0 || status.InUse != (agent.Usage{}) {
		t.Errorf("after the run the agent reports %+v", status)
	}
}

// TestBudgetCountsVCPUsAndMemory: a job that would exceed the vCPU budget waits even
// when a VM slot is free, and one larger than the whole budget is refused at once.
func TestBudgetCountsVCPUsAndMemory(t *testing.T) {
	l := newStandIn(0)
	ta := startAgent(t, testConfig(shortDir(t)), l)
	ctx := context.Background()
	big := submitAsync(ctx, ta.client, agent.JobSpec{Spec: job.Spec{Command: []string{"block"}, VCPUs: 2}}, testfixture.WriteTree(t, map[string]string{"input.txt": "a"}))
	bigID := big.jobID(t)
	waitState(t, ta.client, bigID, agent.StateRunning)
	small := submitAsync(ctx, ta.client, agent.JobSpec{Spec: job.Spec{Command: []string{"small"}, VCPUs: 1}}, testfixture.WriteTree(t, map[string]string{"input.txt": "b"}))
	smallID := small.jobID(t)
	st := waitState(t, ta.client, smallID, agent.StateQueued)
	if st.QueuePosition != 1 {
		t.Errorf("queue position %d, want 1", st.QueuePosition)
	}
	// It stays queued while the 2-vCPU job holds the whole vCPU budget.
	time.Sleep(200 * time.Millisecond)
	if st, _ := ta.client.Job(ctx, smallID); st.State != agent.StateQueued {
		t.Fatalf("the 1-vCPU job is %s while the budget's 2 vCPUs are taken", st.State)
	}
	close(l.release)
	if st := big.wait(t); st.State != agent.StateSucceeded {
		t.Fatalf("big job: %s (%s)", st.State, st.Reason)
	}
	if st := small.wait(t); st.State != agent.StateSucceeded {
		t.Fatalf("small job: %s (%s)", st.State, st.Reason)
	}

	_, err := ta.client.Submit(ctx, agent.JobSpec{Spec: job.Spec{Command: []string{"x"}, VCPUs: 3}}, testfixture.WriteTree(t, map[string]string{"input.txt": "c"}), nil)
	if !errors.Is(err, agent.ErrBadRequest) || !strings.Contains(err.Error(), "3 vCPUs, expected 1..2 (this agent's budget)") {
		t.Errorf("a 3-vCPU job on a 2-vCPU budget: %v", err)
	}
	_, err = ta.client.Submit(ctx, agent.JobSpec{Spec: job.Spec{Command: []string{"x"}, MemoryMiB: 4096}}, testfixture.WriteTree(t, map[string]string{"input.txt": "c"}), nil)
	if !errors.Is(err, agent.ErrBadRequest) || !strings.Contains(err.Error(), "4096 MiB") {
		t.Errorf("a 4 GiB job on a 2 GiB budget: %v", err)
	}
}

// TestQueueLimitBusy: one job more than the queue holds gets a clear "busy" error, and the
// queued ones still run.
func TestQueueLimitBusy(t *testing.T) {
	cfg := testConfig(shortDir(t))
	cfg.Budget.VMs = 1
	cfg.QueueLimit = 2
	l := newStandIn(0)
	ta := startAgent(t, cfg, l)
	ctx := context.Background()
	first := submitAsync(ctx, ta.client, agent.JobSpec{Spec: job.Spec{Command: []string{"block"}}}, testfixture.WriteTree(t, map[string]string{"input.txt": "1"}))
	waitState(t, ta.client, first.jobID(t), agent.StateRunning)
	var queued []*submission
	for i := range 2 {
		s := submitAsync(ctx, ta.client, agent.JobSpec{Spec: job.Spec{Command: []string{"q", fmt.Sprint(i)}}}, testfixture.WriteTree(t, map[string]string{"input.txt": "q"}))
		waitState(t, ta.client, s.jobID(t), agent.StateQueued)
		queued = append(queued, s)
	}
	_, err := ta.client.Submit(ctx, agent.JobSpec{Spec: job.Spec{Command: []string{"one-too-many"}}}, testfixture.WriteTree(t, map[string]string{"input.txt": "x"}), nil)
	if !errors.Is(err, agent.ErrBusy) {
		t.Fatalf("submit beyond the queue limit: %v, want ErrBusy", err)
	}
	if !strings.Contains(err.Error(), "agent busy: 2 jobs are waiting, the queue limit is 2; retry later") || !strings.Contains(err.Error(), "429") {
		t.Errorf("busy error is not clear: %v", err)
	}
	close(l.release)
	for _, s := range append(queued, first) {
		if st := s.wait(t); st.State != agent.StateSucceeded {
			t.Errorf("job %s: %s (%s)", st.ID, st.State, st.Reason)
		}
	}
}

// TestCancel: a running job is stopped through its context, a queued one never launches,
// a second cancel is a conflict, and another user's job cannot be cancelled by id guessing
// (covered in the peer-credential test).
func TestCancel(t *testing.T) {
	cfg := testConfig(shortDir(t))
	cfg.Budget.VMs = 1
	l := newStandIn(0)
	ta := startAgent(t, cfg, l)
	ctx := context.Background()
	running := submitAsync(ctx, ta.client, agent.JobSpec{Spec: job.Spec{Command: []string{"block"}}}, testfixture.WriteTree(t, map[string]string{"input.txt": "1"}))
	runID := running.jobID(t)
	waitState(t, ta.client, runID, agent.StateRunning)
	queued := submitAsync(ctx, ta.client, agent.JobSpec{Spec: job.Spec{Command: []string{"block"}}}, testfixture.WriteTree(t, map[string]string{"input.txt": "2"}))
	qID := queued.jobID(t)
	waitState(t, ta.client, qID, agent.StateQueued)

	if _, err := ta.client.Cancel(ctx, qID); err != nil {
		t.Fatal(err)
	}
	st := queued.wait(t)
	if st.State != agent.StateCancelled || st.Reason != "cancelled by uid 0" && st.Reason != fmt.Sprintf("cancelled by uid %d", os.Geteuid()) {
		t.Errorf("queued job after cancel: %s (%s)", st.State, st.Reason)
	}
	if _, err := ta.client.Cancel(ctx, runID); err != nil {
		t.Fatal(err)
	}
	st = running.wait(t)
	if st.State != agent.StateCancelled || !strings.HasPrefix(st.Reason, agent.ReasonCancelled+" by uid") {
		t.Errorf("running job after cancel: %s (%s)", st.State, st.Reason)
	}
	l.mu.Lock()
	_, launched := l.launched[qID]
	cause := l.stopped[runID]
	l.mu.Unlock()
	if launched {
		t.Error("the job cancelled while queued was launched")
	}
	if cause == nil {
		t.Error("the running job's launcher never saw its context end")
	}
	if _, err := ta.client.Cancel(ctx, runID); !errors.Is(err, agent.ErrConflict) {
		t.Errorf("cancelling an ended job: %v, want ErrConflict", err)
	}
	if _, err := ta.client.Job(ctx, "000000000000"); !errors.Is(err, agent.ErrNotFound) {
		t.Errorf("unknown job: %v, want ErrNotFound", err)
	}
	if err := ta.client.FetchResult(ctx, st, t.TempDir()); err == nil {
		t.Error("fetching a cancelled job's results succeeded")
	}
}

// TestDisconnect: a client that goes away cancels its job by default, and leaves it
// running when it asked to.
func TestDisconnect(t *testing.T) {
	l := newStandIn(0)
	ta := startAgent(t, testConfig(shortDir(t)), l)
	for _, keep := range []bool{false, true} {
		ctx, cancel := context.WithCancel(context.Background())
		s := submitAsync(ctx, ta.client, agent.JobSpec{Spec: job.Spec{Command: []string{"block"}}, KeepOnDisconnect: keep}, testfixture.WriteTree(t, map[string]string{"input.txt": "1"}))
		id := s.jobID(t)
		waitState(t, ta.client, id, agent.StateRunning)
		cancel()
		if r := <-s.done; !errors.Is(r.err, context.Canceled) {
			t.Errorf("submit after its context ended: %v", r.err)
		}
		if !keep {
			st := waitState(t, ta.client, id, agent.StateCancelled)
			if st.Reason != agent.ReasonDisconnected {
				t.Errorf("reason %q, want %q", st.Reason, agent.ReasonDisconnected)
			}
			continue
		}
		time.Sleep(300 * time.Millisecond)
		if st, _ := ta.client.Job(context.Background(), id); st.State != agent.StateRunning {
			t.Fatalf("a job that asked to outlive its client is %s (%s) after the disconnect", st.State, st.Reason)
		}
		close(l.release)
		st := waitState(t, ta.client, id, agent.StateSucceeded)
		var log strings.Builder
		if err := ta.client.Log(context.Background(), id, true, &log); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(log.String(), "building job "+id) {
			t.Errorf("log of the detached job: %q", log.String())
		}
		if err := ta.client.FetchResult(context.Background(), st, t.TempDir()); err != nil {
			t.Errorf("results of the detached job: %v", err)
		}
	}
}

// TestWallClockLimit: a job whose launcher never returns by itself is stopped at its
// limit and fails with the reason.
func TestWallClockLimit(t *testing.T) {
	l := newStandIn(0)
	ta := startAgent(t, testConfig(shortDir(t)), l)
	st, err := ta.client.Submit(context.Background(), agent.JobSpec{Spec: job.Spec{Command: []string{"block"}}, WallClockSeconds: 1}, testfixture.WriteTree(t, map[string]string{"input.txt": "1"}), nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != agent.StateFailed || !strings.HasPrefix(st.Reason, agent.ReasonWallClock) || !strings.Contains(st.Reason, "1s") {
		t.Errorf("job at its wall-clock limit: %s (%s)", st.State, st.Reason)
	}
	if st.WallClockSeconds != 1 {
		t.Errorf("wall-clock limit recorded as %d", st.WallClockSeconds)
	}
}

// TestBuildFailureRecorded: a failing build ends failed with the guest's reason and exit
// code, and has no results.
func TestBuildFailureRecorded(t *testing.T) {
	ta := startAgent(t, testConfig(shortDir(t)), newStandIn(0))
	st, err := ta.client.Submit(context.Background(), agent.JobSpec{Spec: job.Spec{Command: []string{"fail"}}}, testfixture.WriteTree(t, map[string]string{"input.txt": "1"}), nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != agent.StateFailed || !strings.Contains(st.Reason, "exited with code 3") || st.ExitCode == nil || *st.ExitCode != 3 || st.Result != nil {
		t.Errorf("failed build: %+v", st)
	}
}

// TestSpecRejected: bad specs are refused at the door with the reason.
func TestSpecRejected(t *testing.T) {
	ta := startAgent(t, testConfig(shortDir(t)), newStandIn(0))
	src := testfixture.WriteTree(t, map[string]string{"input.txt": "1"})
	for _, c := range []struct {
		spec agent.JobSpec
		want string
	}{
		{agent.JobSpec{}, "command"},
		{agent.JobSpec{Spec: job.Spec{Command: []string{"x"}, TEE: "snp"}}, `asks for TEE "snp", this agent runs "sim" jobs`},
		{agent.JobSpec{Spec: job.Spec{Command: []string{"x"}, Workdir: "../up"}}, "workdir"},
		{agent.JobSpec{Spec: job.Spec{Command: []string{"x"}, Env: map[string]string{"BAD NAME": "1"}}}, "env entry"},
		{agent.JobSpec{Spec: job.Spec{Command: []string{"x"}, Artifacts: []string{"/abs"}}}, "artifact pattern"},
		{agent.JobSpec{Spec: job.Spec{Command: []string{"x"}, MaxOutputBytes: 2 << 20}}, "output cap"},
		{agent.JobSpec{Spec: job.Spec{Command: []string{"x"}}, WallClockSeconds: 3 * 3600}, "wall-clock limit"},
		{agent.JobSpec{Spec: job.Spec{Command: []string{"x"}}, Signing: "none"}, `signing is "none"`},
		{agent.JobSpec{Spec: job.Spec{Command: []string{"x"}, Git: &source.GitObjects{Format: "md5", Commit: []byte("tree x")}}}, "source.objectFormat"},
		{agent.JobSpec{Spec: job.Spec{Command: []string{"x"}, Git: &source.GitObjects{Commit: make([]byte, source.MaxObjectSize+1)}}}, "source.commitObject"},
	} {
		_, err := ta.client.Submit(context.Background(), c.spec, src, nil)
		if !errors.Is(err, agent.ErrBadRequest) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("spec %+v: %v, want a bad request naming %q", c.spec, err, c.want)
		}
	}
	if s, err := ta.client.Status(context.Background()); err != nil || len(s.Counts) != 0 {
		t.Errorf("rejected specs left jobs behind: %+v %v", s, err)
	}
}

// TestClientSigningNeverReturnsABundle: a job whose client signs gets the unsigned
// statement or nothing; a launcher that signed anyway fails the job instead of handing
// back provenance the client did not sign.
func TestClientSigningNeverReturnsABundle(t *testing.T) {
	ta := startAgent(t, testConfig(shortDir(t)), newStandIn(0))
	src := testfixture.WriteTree(t, map[string]string{"input.txt": "1"})
	st, err := ta.client.Submit(context.Background(), agent.JobSpec{Spec: job.Spec{Command: []string{"x"}}, Signing: agent.SigningClient}, src, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != agent.StateFailed || !strings.Contains(st.Reason, `the job's signing "client"`) || st.Result != nil {
		t.Errorf("client-signed job whose launcher signed: %s %q %+v", st.State, st.Reason, st.Result)
	}
	st, err = ta.client.Submit(context.Background(), agent.JobSpec{Spec: job.Spec{Command: []string{"x"}}, Signing: agent.SigningAgent}, src, nil)
	if err != nil || st.State != agent.StateSucceeded || st.Result.Bundle != build.BundleName || st.Result.Statement != "" {
		t.Errorf("agent-signed job: %v %+v", err, st)
	}
}
