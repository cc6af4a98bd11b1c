package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/internal/agent"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/job"
)

// BenchmarkAgentThroughput: 50 jobs submitted at once to an agent with a stand-in
// launcher (no VM), so what is measured is the agent's own per-job cost: upload,
// unpack, queue, dispatch, state records, result packing and fetching. It reports the
// overhead per job and jobs/s, and fails when a job is lost or gets another's output.
func BenchmarkAgentThroughput(b *testing.B) {
	const jobs = 50
	cfg := testConfig(shortDir(b))
	cfg.Budget = agent.Budget{VCPUs: 8, MemoryMiB: 8192, VMs: 8, MinFreeDiskBytes: 1 << 20}
	cfg.KeepFinished = 2 * jobs
	ta := startAgent(b, cfg, newStandIn(0))
	srcs := make([]string, jobs)
	for i := range srcs {
		srcs[i] = testfixture.WriteTree(b, map[string]string{"input.txt": fmt.Sprintf("in%d", i)})
	}
	ctx := context.Background()
	var total time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, jobs)
		for i := range jobs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- runOne(ctx, b, ta, i, srcs[i])
			}()
		}
		wg.Wait()
		total += time.Since(start)
		close(errs)
		for err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	perJob := total / time.Duration(b.N*jobs)
	b.ReportMetric(float64(perJob.Microseconds())/1000, "ms/job")
	b.ReportMetric(float64(b.N*jobs)/total.Seconds(), "jobs/s")
}

// runOne submits job i, waits for it and checks its result is its own.
func runOne(ctx context.Context, b *testing.B, ta *testAgent, i int, src string) error {
	cmd := fmt.Sprintf("job%d", i)
	st, err := ta.client.Submit(ctx, agent.JobSpec{Spec: job.Spec{Command: []string{cmd}}}, src, nil)
	if err != nil {
		return fmt.Errorf("job %d: %w", i, err)
	}
	if st.State != agent.StateSucceeded {
		return fmt.Errorf("job %d ended %s: %s", i, st.State, st.Reason)
	}
	out := filepath.Join(b.TempDir(), "out")
	if err := ta.client.FetchResult(ctx, st, out); err != nil {
		return fmt.Errorf("job %d's result: %w", i, err)
	}
	got, err := os.ReadFile(filepath.Join(out, "out", "result.txt"))
	if want := fmt.Sprintf("%s:IN%d", cmd, i); err != nil || string(got) != want {
		return fmt.Errorf("job %d's output is %q (%v), want %q: lost or mixed", i, got, err, want)
	}
	return nil
}
