package agent_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/internal/agent"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/job"
)

var sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? ([0-9.e+-]+|\+Inf)$`)

// scrape fetches /metrics and checks the exposition format line by line: every sample
// belongs to a family declared with HELP and TYPE, histogram buckets are cumulative and
// end in +Inf equal to _count.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("content type %q", ct)
	}
	b, _ := io.ReadAll(resp.Body)
	samples := map[string]float64{}
	types := map[string]string{}
	lastBucket := map[string]float64{}
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		if f := strings.Fields(line); len(f) >= 4 && f[0] == "#" && f[1] == "TYPE" {
			types[f[2]] = f[3]
			continue
		}
		if strings.HasPrefix(line, "# HELP ") {
			continue
		}
		m := sampleLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("malformed exposition line %q", line)
		}
		name := m[1]
		family := name
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base := strings.TrimSuffix(name, suffix); base != name && types[base] == "histogram" {
				family = base
			}
		}
		if types[family] == "" {
			t.Errorf("sample %q has no TYPE line before it", line)
		}
		v, err := strconv.ParseFloat(strings.Replace(m[4], "+Inf", "Inf", 1), 64)
		if err != nil {
			t.Fatalf("value in %q: %v", line, err)
		}
		if strings.HasSuffix(name, "_bucket") {
			if v < lastBucket[family] {
				t.Errorf("bucket %q is below the previous one", line)
			}
			lastBucket[family] = v
		}
		samples[name+m[2]] = v
	}
	for family, typ := range types {
		if typ == "histogram" && samples[family+`_bucket{le="+Inf"}`] != samples[family+"_count"] {
			t.Errorf("%s: +Inf bucket %v != count %v", family, samples[family+`_bucket{le="+Inf"}`], samples[family+"_count"])
		}
	}
	return samples
}

func TestMetrics(t *testing.T) {
	cfg := testConfig(shortDir(t))
	cfg.MetricsListen = "127.0.0.1:0"
	ta := startAgent(t, cfg, newStandIn(0))
	ctx := context.Background()
	src := testfixture.WriteTree(t, map[string]string{"input.txt": "m"})
	for range 3 {
		if st, err := ta.client.Submit(ctx, agent.JobSpec{Spec: job.Spec{Command: []string{"ok"}}}, src, nil); err != nil || st.State != agent.StateSucceeded {
			t.Fatalf("%v %+v", err, st)
		}
	}
	ta.client.Submit(ctx, agent.JobSpec{Spec: job.Spec{Command: []string{"fail"}}}, src, nil)
	ta.client.Submit(ctx, agent.JobSpec{Spec: job.Spec{Command: []string{"x"}, VCPUs: 99}}, src, nil)
	s := scrape(t, ta.agent.MetricsAddr())
	for name, want := range map[string]float64{
		`cloche_agent_jobs{state="succeeded"}`:                     3,
		`cloche_agent_jobs{state="failed"}`:                        1,
		`cloche_agent_jobs{state="running"}`:                       0,
		`cloche_agent_jobs_submitted_total`:                        4,
		`cloche_agent_jobs_finished_total{state="succeeded"}`:      3,
		`cloche_agent_jobs_finished_total{state="failed"}`:         1,
		`cloche_agent_requests_rejected_total{code="bad_request"}`: 1,
		`cloche_agent_queue_wait_seconds_count`:                    4,
		`cloche_agent_launch_duration_seconds_count`:               4,
		`cloche_agent_build_duration_seconds_count`:                4,
		`cloche_agent_evidence_fetch_errors_total`:                 0,
		`cloche_agent_budget{resource="vms"}`:                      2,
		`cloche_agent_budget_in_use{resource="vms"}`:               0,
	} {
		got, ok := s[name]
		if !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", name, got, ok, want)
		}
	}
}

// BenchmarkScheduling measures the agent's own cost per job with a stand-in launcher that
// returns at once: the overhead from the client's submit call to the launcher being called
// (packing and sending the source, unpacking and checking it, persisting, dispatching),
// one job at a time; and the throughput of jobs end to end (submit, run, stream, end) with
// 8 clients at once against a budget of 2.
func BenchmarkScheduling(b *testing.B) {
	b.Run("overhead", func(b *testing.B) {
		l := newStandIn(0)
		ta := startAgent(b, testConfig(shortDir(b)), l)
		src := testfixture.WriteTree(b, map[string]string{"input.txt": "bench", "src/main.c": strings.Repeat("int x;\n", 500)})
		var total time.Duration
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			start := time.Now()
			st, err := ta.client.Submit(context.Background(), agent.JobSpec{Spec: job.Spec{Command: []string{"ok"}}}, src, nil)
			if err != nil || st.State != agent.StateSucceeded {
				b.Fatalf("%v %+v", err, st)
			}
			l.mu.Lock()
			total += l.launched[st.ID].Sub(start)
			l.mu.Unlock()
		}
		b.ReportMetric(float64(total.Microseconds())/float64(b.N), "µs-submit-to-launch/job")
	})
	b.Run("throughput", func(b *testing.B) {
		cfg := testConfig(shortDir(b))
		cfg.QueueLimit = 1000
		ta := startAgent(b, cfg, newStandIn(0))
		src := testfixture.WriteTree(b, map[string]string{"input.txt": "bench"})
		jobs := make(chan int, b.N)
		for i := 0; i < b.N; i++ {
			jobs <- i
		}
		close(jobs)
		b.ResetTimer()
		start := time.Now()
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range jobs {
					st, err := ta.client.Submit(context.Background(), agent.JobSpec{Spec: job.Spec{Command: []string{"ok", fmt.Sprint(i)}}}, src, nil)
					if err != nil || st.State != agent.StateSucceeded {
						b.Errorf("%v %+v", err, st)
						return
					}
				}
			}()
		}
		wg.Wait()
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "jobs/s")
	})
}
