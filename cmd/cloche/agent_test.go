package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/internal/agent"
	"github.com/cloche-dev/cloche/internal/testfixture"
)

// startAgent runs `cloche agent` on state with the guest image and toolchain until the
// test ends, and returns its socket once it listens, and its stderr.
func startAgent(t *testing.T, state, guest, tc string) (string, *bytes.Buffer) {
	t.Helper()
	socket := filepath.Join(state, "agent.sock")
	ctx, stop := context.WithCancel(context.Background())
	agentErr := &bytes.Buffer{}
	agentDone := make(chan int, 1)
	go func() {
		agentDone <- run(ctx, []string{"agent", "--state-dir", state, "--socket", socket, "--guest-image", guest, "--toolchain", tc,
			"--accel", "tcg", "--max-vms", "2", "--vcpus", "2", "--memory", "2048"}, &bytes.Buffer{}, agentErr)
	}()
	t.Cleanup(func() {
		stop()
		select {
		case code := <-agentDone:
			if code != 0 {
				t.Errorf("cloche agent exited %d:\n%s", code, agentErr.String())
			}
		case <-time.After(time.Minute):
			t.Error("cloche agent did not stop within a minute of its context ending")
		}
	})
	deadline := time.Now().Add(time.Minute)
	for {
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			return socket, agentErr
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent's socket did not appear:\n%s", agentErr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRunThroughAgent: `cloche agent` serves on its socket; `cloche run --agent` builds
// through it and reports like a local build; the provenance says exactly what a local
// build of the same inputs says (same build definition: parameters, source, toolchain,
// guest image), and `cloche verify` passes it. `cloche agent status` shows the job.
func TestRunThroughAgent(t *testing.T) {
	testfixture.RequireQEMU(t)
	state, err := os.MkdirTemp("", "cca")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) }) // after the agent stopped
	guest, tc := testfixture.GuestImage(t), testfixture.BusyboxToolchain(t)
	socket, agentErr := startAgent(t, state, guest, tc)

	// A git checkout: the commit goes to the agent with the job and is attested there too.
	src, sha := gitCheckout(t, map[string]string{"build.sh": "mkdir -p dist\necho agent-built > dist/hello.txt\n"})
	common := []string{"--source", src, "--tee", "sim", "--vcpus", "1", "--memory", "512", "--invocation-id", "test:same-inputs", "--source-date-epoch", "1700000000",
		"--commit", "HEAD"}

	viaAgent := filepath.Join(t.TempDir(), "out")
	code, stdout, stderr := cli(t, append(append([]string{"run", "--agent", socket, "--out", viaAgent}, common...), "--", "sh", "build.sh")...)
	if code != 0 {
		t.Fatalf("cloche run --agent exited %d:\n%s\nagent:\n%s", code, stderr, agentErr.String())
	}
	if stdout != "" {
		t.Errorf("cloche run --agent wrote to stdout: %q", stdout)
	}
	for _, want := range []string{"accepted the job", "SIMULATED TEE", "build succeeded in", "commit:      " + sha, "--source-commit " + sha, filepath.Join(viaAgent, "dist/hello.txt") + "  sha256:", "verify with:\n  cloche verify --bundle " + filepath.Join(viaAgent, "provenance.sigstore.json")} {
		if !strings.Contains(stderr, want) {
			t.Errorf("cloche run --agent output lacks %q:\n%s", want, stderr)
		}
	}
	if b, err := os.ReadFile(filepath.Join(viaAgent, "dist", "hello.txt")); err != nil || string(b) != "agent-built\n" {
		t.Fatalf("artifact through the agent: %q %v", b, err)
	}
	// The printed verify command passes as printed.
	verifyLine := stderr[strings.LastIndex(stderr, "cloche verify "):]
	args := strings.Fields(strings.TrimSpace(verifyLine))[1:]
	if code, out, errOut := cli(t, args...); code != 0 || !strings.Contains(out+errOut, "PASSED: ") {
		t.Errorf("the printed verify command failed (%d): %s%s", code, out, errOut)
	}

	local := filepath.Join(t.TempDir(), "out")
	code, _, stderr = cli(t, append(append([]string{"run", "--state-dir", state, "--out", local, "--guest-image", guest, "--toolchain", tc, "--accel", "tcg", "-q"}, common...), "--", "sh", "build.sh")...)
	if code != 0 {
		t.Fatalf("local cloche run exited %d:\n%s", code, stderr)
	}
	buildDefinition := func(bundle string) string {
		var st struct {
			Subject   json.RawMessage `json:"subject"`
			Predicate struct {
				BuildDefinition json.RawMessage `json:"buildDefinition"`
				RunDetails      struct {
					Builder json.RawMessage `json:"builder"`
				} `json:"runDetails"`
			} `json:"predicate"`
		}
		if err := json.Unmarshal(bundlePayload(t, bundle), &st); err != nil {
			t.Fatal(err)
		}
		return string(st.Subject) + string(st.Predicate.BuildDefinition) + string(st.Predicate.RunDetails.Builder)
	}
	if a, l := buildDefinition(filepath.Join(viaAgent, "provenance.sigstore.json")), buildDefinition(filepath.Join(local, "provenance.sigstore.json")); a != l {
		t.Errorf("the provenance differs between the agent and a local build:\nagent: %s\nlocal: %s", a, l)
	}

	code, stdout, _ = cli(t, "agent", "status", "--socket", socket)
	if code != 0 || !strings.Contains(stdout, "cloche agent ") || !strings.Contains(stdout, "succeeded 1") || !strings.Contains(stdout, "0/2 VMs") {
		t.Errorf("cloche agent status (%d):\n%s", code, stdout)
	}
	code, stdout, _ = cli(t, "agent", "status", "--socket", socket, "--json")
	var st struct {
		Counts map[string]int `json:"counts"`
	}
	if code != 0 || json.Unmarshal([]byte(stdout), &st) != nil || st.Counts["succeeded"] != 1 {
		t.Errorf("cloche agent status --json (%d): %s", code, stdout)
	}
	code, _, stderr = cli(t, "run", "--agent", socket, "--key", "/x", "--source", src, "--", "true")
	if code == 0 || !strings.Contains(stderr, "--key is set by the agent's configuration") {
		t.Errorf("run --agent --key: %d %s", code, stderr)
	}
}

// A job state the agent could not save is shown as such, not as if it were on disk.
func TestAgentStatusShowsUnsavedState(t *testing.T) {
	now := time.Now()
	s := &agent.AgentStatus{TEE: "sim", Counts: map[agent.State]int{},
		Running: []agent.JobStatus{{ID: "j1", State: agent.StateRunning, SubmittedAt: now, Unsaved: "the agent could not save this state (no space left on device)"}}}
	var b bytes.Buffer
	printAgentStatus(&b, s, now)
	if !strings.Contains(b.String(), "j1") || !strings.Contains(b.String(), "not saved: the agent could not save this state (no space left on device)") {
		t.Errorf("status:\n%s", b.String())
	}
}
