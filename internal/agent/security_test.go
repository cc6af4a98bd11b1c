package agent_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/internal/agent"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/job"
)

// exposedAgent starts an agent whose socket any user can reach (mode 0666 in a 0755
// directory), so that only SO_PEERCRED decides.
func exposedAgent(t *testing.T, allowUIDs, allowGIDs []int) *testAgent {
	t.Helper()
	state := shortDir(t)
	sockDir := shortDir(t)
	if err := os.Chmod(sockDir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(state)
	cfg.Socket = filepath.Join(sockDir, "a.sock")
	cfg.SocketMode = "0666"
	cfg.AllowedUIDs, cfg.AllowedGIDs = allowUIDs, allowGIDs
	return startAgent(t, cfg, newStandIn(0))
}

// runAsNobody runs this test binary as uid/gid 65534 in "status" child mode.
func runAsNobody(t *testing.T, socket, jobID string) (int, string) {
	t.Helper()
	cmd := childAsNobody(t, "status", "CLOCHE_RUNNER_TEST_SOCKET="+socket, "CLOCHE_RUNNER_TEST_JOB="+jobID)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("child as uid 65534: %v", err)
	}
	if errOut.Len() > 0 {
		t.Logf("child stderr: %s", errOut.String())
	}
	return cmd.ProcessState.ExitCode(), out.String()
}

// childAsNobody prepares this test binary to run as uid/gid 65534 in the given child mode.
func childAsNobody(t testing.TB, mode string, env ...string) *exec.Cmd {
	t.Helper()
	// The go test binary lives in a 0700 directory: give the child its own copy.
	dir := shortDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "child")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Dir = dir
	cmd.Env = append([]string{childEnv + "=" + mode, "HOME=/"}, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	return cmd
}

// TestRefusesUnknownUser: a user outside the allowed lists is refused with an error that
// names it and what is allowed; a user in the allowed gid list gets in but cannot cancel
// another user's job.
func TestRefusesUnknownUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another user")
	}
	ta := exposedAgent(t, []int{4242}, nil)
	code, out := runAsNobody(t, ta.cfg.Socket, "")
	if code != 3 {
		t.Fatalf("refused client exited %d, want 3; output %q", code, out)
	}
	for _, want := range []string{"status: agent: uid 65534 (gid 65534, groups [], pid ", "is not allowed to use this cloche agent", "uids [4242]", "HTTP 403 forbidden"} {
		if !strings.Contains(out, want) {
			t.Errorf("refusal %q does not contain %q", out, want)
		}
	}
	st, err := ta.client.Status(context.Background())
	if err != nil {
		t.Fatalf("the agent stopped serving after a refusal: %v", err)
	}
	if st.Counts[agent.StateQueued] != 0 {
		t.Errorf("status after refusal: %+v", st)
	}

	tb := exposedAgent(t, nil, []int{65534})
	s := submitAsync(context.Background(), tb.client, agent.JobSpec{Spec: job.Spec{Command: []string{"block"}, Env: map[string]string{"TOKEN": "secret"}}}, testfixture.WriteTree(t, map[string]string{"input.txt": "1"}))
	id := s.jobID(t)
	waitState(t, tb.client, id, agent.StateRunning)
	code, out = runAsNobody(t, tb.cfg.Socket, id)
	if code != 3 || strings.Contains(out, "status:") ||
		!strings.Contains(out, fmt.Sprintf("job: agent: job %s belongs to uid %d; only its submitter or the agent's user (uid %d) may read it", id, os.Geteuid(), os.Geteuid())) ||
		!strings.Contains(out, fmt.Sprintf("cancel: agent: job %s belongs to uid %d", id, os.Geteuid())) {
		t.Errorf("allowed-by-gid client: exit %d, output %q; want status to work without others' environment, and reading or cancelling root's job refused", code, out)
	}
	if st, _ := tb.client.Job(context.Background(), id); st.State != agent.StateRunning {
		t.Errorf("another user's cancel changed the job: %s", st.State)
	}
	if _, err := tb.client.Cancel(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	s.wait(t)
}

// rawRequest sends bytes to the socket and returns the status line and body.
func rawRequest(t *testing.T, socket string, req []byte) (string, string) {
	t.Helper()
	c, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	go func() { c.Write(req) }()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer to %.40q: %v", req, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.Status, string(body)
}

func multipartSubmission(t *testing.T, specJSON []byte, archive []byte) (string, []byte) {
	t.Helper()
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	w, _ := mw.CreateFormField("job")
	w.Write(specJSON)
	w, _ = mw.CreateFormFile("source", "source.tar")
	w.Write(archive)
	mw.Close()
	return mw.FormDataContentType(), b.Bytes()
}

func post(socket, contentType string, body []byte) []byte {
	return fmt.Appendf(nil, "POST /v1/jobs HTTP/1.1\r\nHost: agent\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s", contentType, len(body), body)
}

// TestMalformedAndOversizedRequests: each bad request gets a 4xx naming the problem, and
// the daemon keeps serving (a real job succeeds afterwards).
func TestMalformedAndOversizedRequests(t *testing.T) {
	cfg := testConfig(shortDir(t))
	cfg.MaxSourceBytes = 1 << 20
	ta := startAgent(t, cfg, newStandIn(0))
	sock := ta.cfg.Socket
	archive := []byte("not a tar archive at all")
	sum := sha256.Sum256(archive)
	goodSource := fmt.Sprintf(`"source":{"sha256":"%s","size":%d}`, hex.EncodeToString(sum[:]), len(archive))

	ct, huge := multipartSubmission(t, append([]byte(`{"command":["x"],"env":{"A":"`), bytes.Repeat([]byte("a"), agent.MaxSpecBytes)...), archive)
	ct2, notJSON := multipartSubmission(t, []byte(`{"command":["x"`), archive)
	ct3, unknown := multipartSubmission(t, []byte(`{"command":["x"],"colour":"red",`+goodSource+`}`), archive)
	ct4, bigSource := multipartSubmission(t, []byte(`{"command":["x"],"source":{"sha256":"`+strings.Repeat("0", 64)+`","size":2097152}}`), archive)
	ct5, badTar := multipartSubmission(t, []byte(`{"command":["x"],`+goodSource+`}`), archive)
	ct6, badDigest := multipartSubmission(t, []byte(`{"command":["x"],"source":{"sha256":"`+strings.Repeat("1", 64)+`","size":24}}`), archive)

	for _, c := range []struct {
		name, status, body string
		req                []byte
	}{
		{"garbage", "400 Bad Request", "", []byte("GARBAGE\r\n\r\n")},
		{"header too large", "431 Request Header Fields Too Large", "", fmt.Appendf(nil, "GET /v1/status HTTP/1.1\r\nHost: a\r\nX-Big: %s\r\n\r\n", bytes.Repeat([]byte("b"), 2*agent.MaxHeaderBytes))},
		{"unknown version", "404 Not Found", "this agent speaks API v1", []byte("GET /v2/status HTTP/1.1\r\nHost: a\r\n\r\n")},
		{"not multipart", "400 Bad Request", "multipart/form-data", post(sock, "application/json", []byte(`{}`))},
		{"spec too large", "413 Request Entity Too Large", fmt.Sprintf("the job spec is over %d bytes", agent.MaxSpecBytes), post(sock, ct, huge)},
		{"spec not JSON", "400 Bad Request", "not valid JSON", post(sock, ct2, notJSON)},
		{"unknown field", "400 Bad Request", `unknown field \"colour\"`, post(sock, ct3, unknown)},
		{"source too large", "413 Request Entity Too Large", "the source archive is 2097152 bytes, this agent accepts at most 1048576", post(sock, ct4, bigSource)},
		{"source not a tar", "400 Bad Request", "the source archive was rejected", post(sock, ct5, badTar)},
		{"source digest", "400 Bad Request", "digest mismatch", post(sock, ct6, badDigest)},
	} {
		status, body := rawRequest(t, sock, c.req)
		if status != c.status || !strings.Contains(body, c.body) {
			t.Errorf("%s: got %s %q, want %s with %q", c.name, status, body, c.status, c.body)
		}
	}
	// Still serving, and nothing half-submitted is left.
	st, err := ta.client.Submit(context.Background(), agent.JobSpec{Spec: job.Spec{Command: []string{"ok"}}}, testfixture.WriteTree(t, map[string]string{"input.txt": "fine"}), nil)
	if err != nil || st.State != agent.StateSucceeded {
		t.Fatalf("a good job after the bad requests: %v %+v", err, st)
	}
	entries, _ := os.ReadDir(filepath.Join(ta.cfg.StateDir, "jobs"))
	if len(entries) != 1 {
		t.Errorf("the jobs directory has %d entries after one accepted job", len(entries))
	}
}

// TestSupplementaryGroupAllowed: a real user whose allowed group is only a supplementary
// one (usermod -aG, as docs/agent.md says) may use the agent. The client runs through
// runuser, which sets its groups from the group database as a login does.
func TestSupplementaryGroupAllowed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to add a user")
	}
	name := fmt.Sprintf("clsup%d", os.Getpid()%100000)
	run := func(args ...string) {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	run("groupadd", name)
	t.Cleanup(func() { exec.Command("groupdel", name).Run() })
	run("useradd", "-M", "-N", "-s", "/bin/sh", "-G", name, name)
	t.Cleanup(func() { exec.Command("userdel", name).Run() })
	grp, err := user.LookupGroup(name)
	if err != nil {
		t.Fatal(err)
	}
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	if u.Gid == grp.Gid {
		t.Fatalf("the test user's primary group is %s; the test needs it only supplementary", u.Gid)
	}
	gid, _ := strconv.Atoi(grp.Gid)
	ta := exposedAgent(t, nil, []int{gid})
	cmd := childAsNobody(t, "status", "CLOCHE_RUNNER_TEST_SOCKET="+ta.cfg.Socket)
	cmd.SysProcAttr = nil
	cmd.Args = append([]string{"runuser", "-u", name, "--"}, cmd.Args...)
	cmd.Path, _ = exec.LookPath("runuser")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client as %s (primary gid %s, supplementary %d allowed): %v\n%s", name, u.Gid, gid, err, out)
	}
}
