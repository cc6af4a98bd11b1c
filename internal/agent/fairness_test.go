package agent_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/internal/agent"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/job"
)

// childHog is a greedy user: it opens CLOCHE_RUNNER_TEST_UPLOADS submissions that send the
// job part and 1 KiB of source and then stall, then CLOCHE_RUNNER_TEST_IDLE keep-alive
// connections that make one status request and stay open. It prints what the agent
// answered ("ready stalled=N refused=N idle=N idle_refused=N") and holds everything open
// until its stdin closes.
func childHog() int {
	socket := os.Getenv("CLOCHE_RUNNER_TEST_SOCKET")
	uploads, _ := strconv.Atoi(os.Getenv("CLOCHE_RUNNER_TEST_UPLOADS"))
	idle, _ := strconv.Atoi(os.Getenv("CLOCHE_RUNNER_TEST_IDLE"))
	var conns []net.Conn
	stalled, refused := 0, 0
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range uploads {
		c, err := net.Dial("unix", socket)
		if err != nil {
			fmt.Println("dial:", err)
			return 1
		}
		conns = append(conns, c)
		if _, err := c.Write(stalledUpload()); err != nil {
			fmt.Println("upload:", err)
			return 1
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				stalled++ // no answer: the agent is waiting for the rest
				return
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode == http.StatusTooManyRequests && strings.Contains(string(body), "still uploading, the limit per user is") {
				refused++
			} else {
				fmt.Printf("unexpected answer to a stalled upload: %s %s\n", resp.Status, body)
			}
		}()
	}
	wg.Wait()
	idleOK, idleRefused := 0, 0
	for range idle {
		c, err := net.Dial("unix", socket)
		if err != nil {
			fmt.Println("dial:", err)
			return 1
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprint(c, "GET /v1/status HTTP/1.1\r\nHost: agent\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			fmt.Println("idle connection:", err)
			return 1
		}
		body, _ := io.ReadAll(resp.Body)
		switch {
		case resp.StatusCode == http.StatusOK:
			idleOK++
		case resp.StatusCode == http.StatusTooManyRequests && strings.Contains(string(body), "connections open to the agent, the limit per user is"):
			idleRefused++
		default:
			fmt.Printf("unexpected answer on an idle connection: %s %s\n", resp.Status, body)
		}
	}
	fmt.Printf("ready stalled=%d refused=%d idle=%d idle_refused=%d\n", stalled, refused, idleOK, idleRefused)
	io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
	return 0
}

// stalledUpload is the start of a submission of a 1 MiB source: the job part and 1 KiB.
func stalledUpload() []byte {
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	w, _ := mw.CreateFormField("job")
	fmt.Fprintf(w, `{"command":["block"],"source":{"sha256":"%s","size":1048576}}`, strings.Repeat("0", 64))
	w, _ = mw.CreateFormFile("source", "source.tar")
	w.Write(make([]byte, 1024))
	return fmt.Appendf(nil, "POST /v1/jobs HTTP/1.1\r\nHost: agent\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s",
		mw.FormDataContentType(), b.Len()+1<<20, b.Bytes())
}

// TestGreedyUserCannotStarveAnother: user A (uid 65534) holds 64 stalled uploads and 1,000
// idle connections; user B still submits and has its job started within a second, sees
// status at once, and A's stalled uploads are dropped after the upload timeout.
func TestGreedyUserCannotStarveAnother(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another user")
	}
	state := shortDir(t)
	sockDir := shortDir(t)
	if err := os.Chmod(sockDir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(state)
	cfg.Socket = sockDir + "/a.sock"
	cfg.SocketMode = "0666"
	cfg.AllowedUIDs = []int{65534}
	cfg.QueueLimit, cfg.UserQueueLimit, cfg.UserUploads, cfg.UserConnections = 64, 0, 0, 0 // the defaults
	cfg.UploadIdleTimeout = agent.Duration(3 * time.Second)
	l := newStandIn(0)
	ta := startAgent(t, cfg, l)

	hog := childAsNobody(t, "hog", "CLOCHE_RUNNER_TEST_SOCKET="+cfg.Socket, "CLOCHE_RUNNER_TEST_UPLOADS=64", "CLOCHE_RUNNER_TEST_IDLE=1000")
	stdin, err := hog.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := hog.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	hog.Stderr = testLogWriter{t}
	if err := hog.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); hog.Wait() })
	lines := bufio.NewScanner(stdout)
	var ready string
	for lines.Scan() {
		if strings.HasPrefix(lines.Text(), "ready ") {
			ready = lines.Text()
			break
		}
		t.Errorf("greedy user: %s", lines.Text())
	}
	var stalled, refused, idle, idleRefused int
	if _, err := fmt.Sscanf(ready, "ready stalled=%d refused=%d idle=%d idle_refused=%d", &stalled, &refused, &idle, &idleRefused); err != nil {
		t.Fatalf("greedy user's report %q: %v", ready, err)
	}
	t.Logf("greedy user: %s", ready)
	// 4 uploads per user may arrive at once, 64 connections per user may be open.
	if stalled != 4 || refused != 60 || idle+stalled > 64 || idle+idleRefused != 1000 {
		t.Errorf("greedy user got %s; want 4 stalled uploads admitted, 60 refused, at most 64 connections in all", ready)
	}

	start := time.Now()
	st, err := ta.client.Status(context.Background())
	if err != nil || time.Since(start) > time.Second {
		t.Fatalf("user B's status took %s: %v", time.Since(start), err)
	}
	if st.Uploading != 4 {
		t.Errorf("status shows %d uploads arriving, want A's 4", st.Uploading)
	}
	start = time.Now()
	sub := submitAsync(context.Background(), ta.client, agent.JobSpec{Spec: job.Spec{Command: []string{"b"}}}, testfixture.WriteTree(t, map[string]string{"input.txt": "b"}))
	id := sub.jobID(t)
	waitFor(t, time.Second, "user B's job to launch", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		_, ok := l.launched[id]
		return ok
	})
	t.Logf("user B's job launched %s after it was submitted", time.Since(start).Round(time.Millisecond))
	if st := sub.wait(t); st.State != agent.StateSucceeded {
		t.Errorf("user B's job: %s (%s)", st.State, st.Reason)
	}
	waitFor(t, 5*time.Second, "A's stalled uploads to be dropped after the upload timeout", func() bool {
		st, err := ta.client.Status(context.Background())
		return err == nil && st.Uploading == 0
	})
}

// TestUserQueueLimit: a user's full queue is refused as that user's, with the numbers,
// while the agent's queue has room.
func TestUserQueueLimit(t *testing.T) {
	cfg := testConfig(shortDir(t))
	cfg.Budget.VMs = 1
	cfg.QueueLimit, cfg.UserQueueLimit = 10, 2
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
	want := fmt.Sprintf("the queue of uid %d is full: 2 of its jobs are waiting, the limit per user is 2", os.Geteuid())
	if !errors.Is(err, agent.ErrBusy) || !strings.Contains(err.Error(), want) {
		t.Errorf("submit beyond the user's queue limit: %v, want busy with %q", err, want)
	}
	close(l.release)
	for _, s := range append(queued, first) {
		if st := s.wait(t); st.State != agent.StateSucceeded {
			t.Errorf("job %s: %s (%s)", st.ID, st.State, st.Reason)
		}
	}
}
