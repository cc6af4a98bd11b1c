package agent_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/internal/agent"
	"github.com/cloche-dev/cloche/internal/agent/client"
	"github.com/cloche-dev/cloche/job"
)

// benchPerUser is how many jobs each of BenchmarkAgentThroughput's two users submits at
// once in every round.
const benchPerUser = 25

// nobodyUID is the second user's uid (childAsNobody).
const nobodyUID = 65534

// BenchmarkAgentThroughput: every round, two users (this process, and this test binary
// run as uid 65534) each submit 25 jobs at once to an agent with a stand-in launcher (no
// VM), so 50 jobs queue and what is measured is the agent's own per-job cost: upload,
// unpack, queue, dispatch, state records, result packing and fetching. It reports
//
//   - ms/job: the submit-to-launch overhead per job, the time from the round's first
//     Submit call to the stand-in launcher being called for its last job, divided by the
//     50 jobs;
//   - ms-submit-to-launch-median: the median of one job's time from its Submit call to
//     its launch, with the other 49 in flight;
//   - jobs/s end to end: from the first Submit call until every job's result was fetched;
//   - cpu-ms/job: the CPU time the agent and both users' clients used per job, which
//     other load on the machine inflates less than the wall-clock figures.
//
// It fails when a job is lost (never launched, or no result), runs as the wrong user, or
// gets another job's output.
func BenchmarkAgentThroughput(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root to run the second user's client as uid 65534")
	}
	const jobs = 2 * benchPerUser
	sockDir := shortDir(b)
	if err := os.Chmod(sockDir, 0o755); err != nil {
		b.Fatal(err)
	}
	cfg := testConfig(shortDir(b))
	cfg.Socket = filepath.Join(sockDir, "a.sock")
	cfg.SocketMode = "0666"
	cfg.AllowedUIDs = []int{nobodyUID}
	cfg.Budget = agent.Budget{VCPUs: 8, MemoryMiB: 8192, VMs: 8, MinFreeDiskBytes: 1 << 20}
	cfg.KeepFinished = 2 * jobs
	l := newStandIn(0)
	ta := startAgent(b, cfg, l)

	// The second user: a child that runs one round of its jobs for every line on stdin.
	child := childAsNobody(b, "submitter", "CLOCHE_RUNNER_TEST_SOCKET="+cfg.Socket, fmt.Sprintf("CLOCHE_RUNNER_TEST_JOBS=%d", benchPerUser))
	child.Stderr = testLogWriter{b}
	stdin, err := child.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := child.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := child.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stdin.Close(); child.Wait() })
	childOut := bufio.NewScanner(stdout)

	root := b.TempDir()
	srcs := make([]string, benchPerUser)
	for i := range srcs {
		srcs[i] = filepath.Join(root, fmt.Sprint("src", i))
		if err := writeBenchSource(srcs[i], 0, i); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	var span, wall, cpu time.Duration
	var latencies []time.Duration
	b.ResetTimer()
	for round := range b.N {
		cpuStart := cpuTime(b, os.Getpid()) + cpuTime(b, child.Process.Pid)
		start := time.Now()
		if _, err := fmt.Fprintln(stdin, round); err != nil {
			b.Fatalf("starting the second user's round: %v", err)
		}
		mine := make([]benchJob, benchPerUser)
		var wg sync.WaitGroup
		for i := range benchPerUser {
			wg.Go(func() { mine[i] = runBenchJob(ctx, ta.client, 0, round, i, srcs[i], root) })
		}
		theirs, err := readChildRound(childOut, round)
		wg.Wait()
		wall += time.Since(start)
		cpu += cpuTime(b, os.Getpid()) + cpuTime(b, child.Process.Pid) - cpuStart
		if err != nil {
			b.Fatal(err)
		}

		b.StopTimer()
		all := append(mine, theirs...)
		first, last := all[0].submitted, time.Time{}
		seen := map[string]bool{}
		for _, j := range all {
			if j.err != "" {
				b.Fatalf("round %d: %s", round, j.err)
			}
			if seen[j.id] {
				b.Fatalf("round %d: two jobs got the id %s", round, j.id)
			}
			seen[j.id] = true
			l.mu.Lock()
			launched, ok := l.launched[j.id]
			l.mu.Unlock()
			if !ok {
				b.Fatalf("round %d: job %s (user %d, job %d) succeeded but was never launched", round, j.id, j.user, j.index)
			}
			// The agent's record says who submitted what: a job must not change hands.
			st, err := ta.client.Job(ctx, j.id)
			if err != nil {
				b.Fatal(err)
			}
			if wantUID := []int{os.Geteuid(), nobodyUID}[j.user]; st.Submitter.UID != wantUID || !slices.Equal(st.Spec.Command, []string{benchCommand(j.user, round, j.index)}) {
				b.Fatalf("round %d: job %s is uid %d's %q, want uid %d's %q", round, j.id, st.Submitter.UID, st.Spec.Command, wantUID, benchCommand(j.user, round, j.index))
			}
			if j.submitted.Before(first) {
				first = j.submitted
			}
			if launched.After(last) {
				last = launched
			}
			latencies = append(latencies, launched.Sub(j.submitted))
		}
		span += last.Sub(first)
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(latencies)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(span/time.Duration(b.N*jobs)), "ms/job")
	b.ReportMetric(ms(latencies[len(latencies)/2]), "ms-submit-to-launch-median")
	b.ReportMetric(float64(b.N*jobs)/wall.Seconds(), "jobs/s")
	b.ReportMetric(ms(cpu/time.Duration(b.N*jobs)), "cpu-ms/job")
}

// cpuTime is the CPU time (user and system) process pid has used so far, from
// /proc/PID/stat: what the agent and its clients cost, whatever else the machine runs.
func cpuTime(b *testing.B, pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The fields after the command name (which may hold spaces) in parentheses: utime
	// and stime are the 12th and 13th, in clock ticks (100 a second on Linux).
	_, after, _ := strings.Cut(string(raw), ") ")
	f := strings.Fields(after)
	if len(f) < 13 {
		b.Fatalf("/proc/%d/stat: %q", pid, raw)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("/proc/%d/stat: %q", pid, raw)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// benchJob is one job of a round as its submitter saw it; err is "" when it succeeded
// with its own output.
type benchJob struct {
	user, index int
	id          string
	submitted   time.Time
	err         string
}

func benchCommand(user, round, i int) string { return fmt.Sprintf("u%d-r%d-j%d", user, round, i) }

// writeBenchSource writes user's source number i: one input.txt that names both.
func writeBenchSource(dir string, user, i int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "input.txt"), fmt.Appendf(nil, "user%d-input%d", user, i), 0o644)
}

// runBenchJob submits user's job i of the round, waits for it, fetches its result into a
// new directory below outRoot and checks that the output is this job's: its command and
// its source's input (the stand-in writes "<command>:<upper-cased input>").
func runBenchJob(ctx context.Context, c *client.Client, user, round, i int, src, outRoot string) benchJob {
	r := benchJob{user: user, index: i}
	fail := func(format string, args ...any) benchJob {
		r.err = fmt.Sprintf("user %d's job %d (%s): ", user, i, r.id) + fmt.Sprintf(format, args...)
		return r
	}
	cmd := benchCommand(user, round, i)
	r.submitted = time.Now()
	st, err := c.Submit(ctx, agent.JobSpec{Spec: job.Spec{Command: []string{cmd}}}, src, nil)
	if err != nil {
		return fail("%v", err)
	}
	r.id = st.ID
	if st.State != agent.StateSucceeded {
		return fail("ended %s: %s", st.State, st.Reason)
	}
	out := filepath.Join(outRoot, cmd)
	defer os.RemoveAll(out)
	if err := c.FetchResult(ctx, st, out); err != nil {
		return fail("fetching the result: %v", err)
	}
	got, err := os.ReadFile(filepath.Join(out, "out", "result.txt"))
	if want := cmd + ":" + strings.ToUpper(fmt.Sprintf("user%d-input%d", user, i)); err != nil || string(got) != want {
		return fail("the output is %q (%v), want %q: lost or mixed", got, err, want)
	}
	return r
}

// readChildRound reads the second user's report of a round: a line per job, then "done".
func readChildRound(sc *bufio.Scanner, round int) ([]benchJob, error) {
	var jobs []benchJob
	for sc.Scan() {
		line := sc.Text()
		if line == fmt.Sprint("done ", round) {
			if len(jobs) != benchPerUser {
				return nil, fmt.Errorf("round %d: the second user reported %d jobs, want %d", round, len(jobs), benchPerUser)
			}
			return jobs, nil
		}
		var j benchJob
		var nanos int64
		if _, err := fmt.Sscanf(line, "job %d %s %d", &j.index, &j.id, &nanos); err != nil {
			return nil, fmt.Errorf("round %d: the second user says %q", round, line)
		}
		j.user, j.submitted = 1, time.Unix(0, nanos)
		jobs = append(jobs, j)
	}
	return nil, fmt.Errorf("round %d: the second user's output ended: %v", round, sc.Err())
}

// childSubmitter is BenchmarkAgentThroughput's second user: for every round number on
// stdin it runs CLOCHE_RUNNER_TEST_JOBS jobs at once against the agent at
// CLOCHE_RUNNER_TEST_SOCKET (runBenchJob) and prints "job INDEX ID SUBMIT_UNIX_NANOS" for
// each, then "done ROUND"; a job that failed its checks ends the child with the error.
func childSubmitter() int {
	n, err := strconv.Atoi(os.Getenv("CLOCHE_RUNNER_TEST_JOBS"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "CLOCHE_RUNNER_TEST_JOBS:", err)
		return 2
	}
	root, err := os.MkdirTemp("", "crs")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(root)
	srcs := make([]string, n)
	for i := range srcs {
		srcs[i] = filepath.Join(root, fmt.Sprint("src", i))
		if err := writeBenchSource(srcs[i], 1, i); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	c := client.New(os.Getenv("CLOCHE_RUNNER_TEST_SOCKET"))
	defer c.Close()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		round, err := strconv.Atoi(in.Text())
		if err != nil {
			fmt.Fprintln(os.Stderr, "round:", err)
			return 2
		}
		jobs := make([]benchJob, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { jobs[i] = runBenchJob(context.Background(), c, 1, round, i, srcs[i], root) })
		}
		wg.Wait()
		for _, j := range jobs {
			if j.err != "" {
				fmt.Println("error", j.err)
				return 1
			}
			fmt.Println("job", j.index, j.id, j.submitted.UnixNano())
		}
		fmt.Println("done", round)
	}
	return 0
}
