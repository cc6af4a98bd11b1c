package agent

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/internal/build"
)

func queued(uid int, name string) *jobEntry {
	return &jobEntry{status: JobStatus{ID: name, Submitter: Submitter{UID: uid}}}
}

func drain(q *fairQueue) string {
	var out []string
	for j := q.peek(); j != nil; j = q.peek() {
		out = append(out, j.status.ID)
		q.pop()
	}
	return strings.Join(out, " ")
}

// TestFairQueue: submitters take turns, each one's jobs stay in order, a newcomer joins
// at the end of the current round, and removal keeps the rotation.
func TestFairQueue(t *testing.T) {
	q := newFairQueue()
	for _, j := range []*jobEntry{queued(1, "a1"), queued(1, "a2"), queued(1, "a3"), queued(2, "b1"), queued(2, "b2"), queued(3, "c1")} {
		q.push(j)
	}
	if got := strings.Join(ids(q.launchOrder()), " "); got != "a1 b1 c1 a2 b2 a3" {
		t.Errorf("launch order %q", got)
	}
	if p := q.position(q.queues[2][1]); p != 5 {
		t.Errorf("b2's position %d, want 5", p)
	}
	if got := drain(&q); got != "a1 b1 c1 a2 b2 a3" {
		t.Errorf("drained %q, want a1 b1 c1 a2 b2 a3", got)
	}

	// A busy submitter's backlog does not delay a newcomer by more than a round.
	q = newFairQueue()
	for i := range 5 {
		q.push(queued(1, "a"+string(rune('1'+i))))
	}
	q.pop() // a1 launched
	q.push(queued(2, "b1"))
	if got := drain(&q); got != "a2 b1 a3 a4 a5" {
		t.Errorf("with a newcomer: %q, want a2 b1 a3 a4 a5", got)
	}

	q = newFairQueue()
	a1, b1, c1 := queued(1, "a1"), queued(2, "b1"), queued(3, "c1")
	for _, j := range []*jobEntry{a1, queued(1, "a2"), b1, c1} {
		q.push(j)
	}
	q.pop() // a1; b's turn
	if !q.remove(b1) || q.remove(b1) || q.remove(a1) {
		t.Error("remove: wrong result")
	}
	if got := drain(&q); got != "c1 a2" {
		t.Errorf("after removing b1: %q, want c1 a2", got)
	}
	if q.len() != 0 || q.peek() != nil {
		t.Error("queue not empty after draining")
	}
}

func ids(js []*jobEntry) []string {
	var out []string
	for _, j := range js {
		out = append(out, j.status.ID)
	}
	return out
}

type nopLauncher struct{}

func (nopLauncher) Launch(context.Context, LaunchRequest) (*build.Outcome, error) {
	return nil, os.ErrInvalid
}

// TestRecoverAfterCrash: records a crashed agent left in every in-flight state come back
// failed with "agent restarted"; finished ones and their results are untouched; leftover
// work directories and incomplete submissions are removed.
func TestRecoverAfterCrash(t *testing.T) {
	state, err := os.MkdirTemp("", "crr")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(state)
	jobs := filepath.Join(state, "jobs")
	now := time.Now().UTC()
	for _, s := range States {
		dir := filepath.Join(jobs, "job-"+string(s))
		for _, sub := range []string{srcDirName, workDirName} {
			if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
				t.Fatal(err)
			}
		}
		st := &JobStatus{ID: "job-" + string(s), State: s, SubmittedAt: now, TEE: "sim"}
		if s == StateSucceeded {
			st.Result = &JobResult{Bundle: build.BundleName}
			os.WriteFile(filepath.Join(dir, resultName), []byte("result"), 0o600)
		}
		if err := writeRecord(dir, st); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(jobs, "incomplete", srcDirName), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := Config{StateDir: state, Socket: filepath.Join(state, "s")}.WithDefaults(HostResources{CPUs: 2, MemoryMiB: 4096})
	a, err := New(Options{Config: cfg, Launcher: nopLauncher{}})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range States {
		id := "job-" + string(s)
		j := a.jobs[id]
		if j == nil {
			t.Fatalf("job %s not loaded", id)
		}
		rec, err := readRecord(filepath.Join(jobs, id, recordName))
		if err != nil {
			t.Fatal(err)
		}
		if s.Terminal() {
			if rec.State != s || j.status.State != s {
				t.Errorf("finished job %s changed to %s", id, rec.State)
			}
		} else {
			want := "agent restarted while the job was " + string(s) + "; its VM is gone"
			if rec.State != StateFailed || rec.Reason != want || rec.FinishedAt == nil {
				t.Errorf("in-flight job %s recovered as %s (%q), want failed (%q), persisted", id, rec.State, rec.Reason, want)
			}
		}
		if _, err := os.Stat(filepath.Join(jobs, id, workDirName)); !os.IsNotExist(err) {
			t.Errorf("job %s's work directory is still there", id)
		}
	}
	if b, err := os.ReadFile(filepath.Join(jobs, "job-succeeded", resultName)); err != nil || string(b) != "result" {
		t.Errorf("a finished job's result was touched: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(jobs, "incomplete")); !os.IsNotExist(err) {
		t.Error("an incomplete submission was kept")
	}
}

// TestKillLeftoverVMs: a process named like QEMU whose arguments point into the jobs
// directory is killed; one pointing elsewhere and one not named like QEMU are left alone.
func TestKillLeftoverVMs(t *testing.T) {
	jobs := t.TempDir()
	start := func(argv0, arg string) *exec.Cmd {
		// sh -c 'script' NAME ARG: the path shows up in the command line; the trailing
		// "; true" keeps sh from exec'ing sleep (which would drop the arguments).
		cmd := exec.Command("/bin/sh", "-c", "sleep 600; true", argv0, arg)
		cmd.Args[0] = argv0
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			cmd.Wait()
		})
		return cmd
	}
	vm := start("qemu-system-x86_64", "file="+filepath.Join(jobs, "abc", "w", "input.img"))
	other := start("qemu-system-x86_64", "file=/elsewhere/input.img")
	notQEMU := start("sh", filepath.Join(jobs, "abc", "w", "input.img"))
	time.Sleep(100 * time.Millisecond) // let sh start

	killed, err := KillLeftoverVMs(jobs)
	if err != nil {
		t.Fatal(err)
	}
	if len(killed) != 1 || killed[0] != vm.Process.Pid {
		t.Fatalf("killed %v, want [%d]", killed, vm.Process.Pid)
	}
	err = vm.Wait()
	if ws, ok := vm.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("the leftover ended with %v, want SIGKILL", err)
	}
	for _, c := range []*exec.Cmd{other, notQEMU} {
		if !alive(c.Process.Pid) {
			t.Errorf("process %v was killed", c.Args)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	good := Config{StateDir: "/var/lib/cloche", Socket: "/run/cloche/agent.sock"}.WithDefaults(HostResources{CPUs: 8, MemoryMiB: 32768})
	if err := good.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if good.Budget.VCPUs != 8 || good.Budget.MemoryMiB != 31744 || good.Budget.VMs != 4 {
		t.Errorf("host defaults: %+v", good.Budget)
	}
	for _, c := range []struct {
		change func(*Config)
		want   string
	}{
		{func(c *Config) { c.StateDir = "relative" }, "absolute"},
		{func(c *Config) { c.StateDir = "/" + strings.Repeat("d", 60) }, "limit 43"},
		{func(c *Config) { c.TEE = "sgx" }, `tee "sgx"`},
		{func(c *Config) { c.SocketMode = "rw" }, "socketMode"},
		{func(c *Config) { c.DefaultVCPUs = 9 }, "defaultVcpus 9"},
		// The same limits as cloche run's: a VM takes at most 255 vCPUs and 128 MiB or more.
		{func(c *Config) { c.Budget.VCPUs = 512; c.DefaultVCPUs = 300 }, "defaultVcpus 300 must be 1..255"},
		{func(c *Config) { c.DefaultMemoryMiB = 100 }, "defaultMemoryMiB 100 must be 128.."},
		{func(c *Config) { c.AllowedUIDs = []int{-1} }, "negative"},
		{func(c *Config) { c.QueueLimit = -1 }, "queueLimit"},
		{func(c *Config) { c.Launch.SNPProduct = "Turin" }, `launch.snpProduct "Turin", expected Milan or Genoa`},
	} {
		cfg := good
		c.change(&cfg)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate: %v, want an error naming %q", err, c.want)
		}
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "agent.json")
	os.WriteFile(p, []byte(`{"stateDir":"/var/lib/cloche","budget":{"vms":3},"maxWallClock":"90m","launch":{"accel":"tcg"}}`), 0o600)
	c, err := LoadConfig(p)
	if err != nil || c.Budget.VMs != 3 || time.Duration(c.MaxWallClock) != 90*time.Minute || c.Launch.Accel != "tcg" {
		t.Errorf("LoadConfig: %+v %v", c, err)
	}
	os.WriteFile(p, []byte(`{"stateDir":"/x","budgett":{}}`), 0o600)
	if _, err := LoadConfig(p); err == nil || !strings.Contains(err.Error(), `unknown field "budgett"`) {
		t.Errorf("LoadConfig with a typo: %v", err)
	}
}

// TestShippedExampleConfig: the example configuration in dist/ loads and validates.
func TestShippedExampleConfig(t *testing.T) {
	c, err := LoadConfig("../../dist/agent.example.json")
	if err != nil {
		t.Fatal(err)
	}
	cfg := c.WithDefaults(HostResources{CPUs: 16, MemoryMiB: 65536})
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Budget.VMs != 6 || *cfg.SocketGID != 990 || cfg.MetricsListen != "127.0.0.1:9464" {
		t.Errorf("example config read as %+v", cfg)
	}
}

// TestStateLog: a launched job's later states go to the state log and leave the synced
// queued record alone; its end replaces the record and removes the log; an agent that
// restarts after a crash fails the job naming the last whole state in the log (a torn
// last line, as a machine crash may leave, is skipped).
func TestStateLog(t *testing.T) {
	state, err := os.MkdirTemp("", "crl")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(state)
	jobs := filepath.Join(state, "jobs")
	now := time.Now().UTC()
	write := func(dir string, s State) *JobStatus {
		t.Helper()
		st := &JobStatus{ID: filepath.Base(dir), State: s, SubmittedAt: now, TEE: "sim"}
		if s == StateRunning {
			st.RunningAt = &now
		}
		if err := writeStatus(dir, st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	done, crashed := filepath.Join(jobs, "done"), filepath.Join(jobs, "crashed")
	for _, dir := range []string{done, crashed} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, s := range []State{StateQueued, StateLaunching, StateRunning} {
			write(dir, s)
		}
		if rec, err := readRecord(filepath.Join(dir, recordName)); err != nil || rec.State != StateQueued {
			t.Fatalf("record while running: %+v %v, want the queued one", rec, err)
		}
		if st := latestState(dir, filepath.Base(dir)); st == nil || st.State != StateRunning {
			t.Fatalf("latest state in the log: %+v, want running", st)
		}
	}
	write(done, StateSucceeded)
	if rec, err := readRecord(filepath.Join(done, recordName)); err != nil || rec.State != StateSucceeded {
		t.Errorf("record after the end: %+v %v", rec, err)
	}
	if _, err := os.Stat(filepath.Join(done, stateLogName)); !os.IsNotExist(err) {
		t.Errorf("the state log is still there after the end (%v)", err)
	}
	f, err := os.OpenFile(filepath.Join(crashed, stateLogName), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"id":"crashed","state":"collect`)
	f.Close()

	cfg := Config{StateDir: state, Socket: filepath.Join(state, "s")}.WithDefaults(HostResources{CPUs: 2, MemoryMiB: 4096})
	if _, err := New(Options{Config: cfg, Launcher: nopLauncher{}}); err != nil {
		t.Fatal(err)
	}
	rec, err := readRecord(filepath.Join(crashed, recordName))
	if want := "agent restarted while the job was running; its VM is gone"; err != nil || rec.State != StateFailed || rec.Reason != want || rec.RunningAt == nil {
		t.Errorf("crashed job recovered as %+v (%v), want failed (%q) with its running time", rec, err, want)
	}
	if _, err := os.Stat(filepath.Join(crashed, stateLogName)); !os.IsNotExist(err) {
		t.Errorf("the crashed job's state log is still there after recovery (%v)", err)
	}
	if rec, err := readRecord(filepath.Join(done, recordName)); err != nil || rec.State != StateSucceeded {
		t.Errorf("finished job after recovery: %+v %v", rec, err)
	}
}
