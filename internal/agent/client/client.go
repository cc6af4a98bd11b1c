// Package client talks to a cloche agent (package agent) over its unix socket: submit a
// job with its source, follow it, cancel it, fetch its results.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime/multipart"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cloche-dev/cloche/internal/agent"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/source"
)

// Limits on what the agent sends back.
const (
	maxStatusBytes = 16 << 20 // a status document (the agent's status lists every queued job)
	maxEventBytes  = 1 << 20  // one line of a submission's stream (log chunks are 32 KiB)
	maxErrorBytes  = 64 << 10
)

// ErrStream is wrapped when a submission's event stream ends before its job ended (the
// agent stopped, or the connection broke).
var ErrStream = errors.New("the agent's event stream ended before the job did")

// Client is a connection factory for one agent socket. It is safe for concurrent use.
type Client struct {
	socket string
	http   *http.Client
}

// New returns a client for the agent listening on socket.
func New(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConnsPerHost: 4,
		DisableCompression:  true,
	}
	return &Client{socket: socket, http: &http.Client{Transport: tr}}
}

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

func (c *Client) url(path string) string { return "http://cloche-agent/" + agent.APIVersion + path }

func (c *Client) do(req *http.Request) (*http.Response, error) {
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cloche agent at %s: %w", c.socket, err)
	}
	if resp.StatusCode >= 400 {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

func decodeError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBytes))
	e := &agent.APIError{Status: resp.StatusCode}
	if err := json.Unmarshal(b, e); err != nil || e.Message == "" {
		e.Code = agent.CodeInternal
		e.Message = strings.TrimSpace(string(b))
		if e.Message == "" {
			e.Message = resp.Status
		}
	}
	return e
}

func (c *Client) getJSON(ctx context.Context, method, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.url(path), nil)
	if err != nil {
		return err
	}
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxStatusBytes)).Decode(v); err != nil {
		return fmt.Errorf("cloche agent: decoding the answer to %s %s: %w", method, path, err)
	}
	return nil
}

// Status returns the agent's queue, running jobs and budget.
func (c *Client) Status(ctx context.Context) (*agent.AgentStatus, error) {
	var s agent.AgentStatus
	return &s, c.getJSON(ctx, http.MethodGet, "/status", &s)
}

// Job returns one job's status.
func (c *Client) Job(ctx context.Context, id string) (*agent.JobStatus, error) {
	var s agent.JobStatus
	return &s, c.getJSON(ctx, http.MethodGet, "/jobs/"+id, &s)
}

// Cancel asks the agent to end a job; the returned status may still show it running
// while its VM is being stopped.
func (c *Client) Cancel(ctx context.Context, id string) (*agent.JobStatus, error) {
	var s agent.JobStatus
	return &s, c.getJSON(ctx, http.MethodPost, "/jobs/"+id+"/cancel", &s)
}

// Log copies a job's console log to w; with follow, until the job has ended.
func (c *Client) Log(ctx context.Context, id string, follow bool, w io.Writer) error {
	path := "/jobs/" + id + "/log"
	if follow {
		path += "?follow=1"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url(path), nil)
	if err != nil {
		return err
	}
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	return err
}

// Submit packs sourceDir (source.Pack, with spec.SourceDateEpoch), sends it with spec,
// and follows the job until it ends, calling onEvent (when not nil) for every event: the
// first is the accepted job with its id. It returns the final status; a job that failed is
// not an error here (look at its State and Reason). When ctx ends first, the connection is
// closed, which cancels the job unless spec.KeepOnDisconnect.
func (c *Client) Submit(ctx context.Context, spec agent.JobSpec, sourceDir string, onEvent func(agent.Event)) (*agent.JobStatus, error) {
	// The archive's digest goes before it, so it is packed first: in memory when small,
	// in a temp file beyond that.
	buf := &spillBuffer{max: memArchiveBytes}
	defer buf.close()
	sum, size, err := source.Pack(ctx, sourceDir, spec.SourceDateEpoch, buf)
	if err != nil {
		return nil, err
	}
	spec.Source.SHA256, spec.Source.Size = sum, size
	archive, err := buf.reader()
	if err != nil {
		return nil, err
	}
	return c.SubmitArchive(ctx, spec, archive, onEvent)
}

// memArchiveBytes is the largest source archive Submit keeps in memory.
const memArchiveBytes = 4 << 20

// spillBuffer keeps what is written in memory up to max bytes and moves it all to a temp
// file when more arrives; close removes the file.
type spillBuffer struct {
	max  int
	mem  bytes.Buffer
	file *os.File
}

func (b *spillBuffer) Write(p []byte) (int, error) {
	if b.file == nil && b.mem.Len()+len(p) <= b.max {
		return b.mem.Write(p)
	}
	if b.file == nil {
		f, err := os.CreateTemp("", "cloche-submit-*.tar")
		if err != nil {
			return 0, fmt.Errorf("a temp file for the source archive: %w", err)
		}
		b.file = f
		if _, err := b.mem.WriteTo(f); err != nil {
			return 0, fmt.Errorf("writing the source archive to %s: %w", f.Name(), err)
		}
	}
	n, err := b.file.Write(p)
	if err != nil {
		return n, fmt.Errorf("writing the source archive to %s: %w", b.file.Name(), err)
	}
	return n, nil
}

// reader reads back everything written.
func (b *spillBuffer) reader() (io.Reader, error) {
	if b.file == nil {
		return bytes.NewReader(b.mem.Bytes()), nil
	}
	if _, err := b.file.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("rereading the source archive %s: %w", b.file.Name(), err)
	}
	return b.file, nil
}

func (b *spillBuffer) close() {
	if b.file != nil {
		b.file.Close()
		os.Remove(b.file.Name())
	}
}

// SubmitArchive is Submit with a ready archive whose digest and size are in spec.Source.
func (c *Client) SubmitArchive(ctx context.Context, spec agent.JobSpec, archive io.Reader, onEvent func(agent.Event)) (*agent.JobStatus, error) {
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		pw.CloseWithError(writeSubmission(mw, spec, archive))
	}()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url("/jobs"), pr)
	if err != nil {
		pr.Close()
		return nil, err
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := c.do(req)
	if err != nil {
		pr.CloseWithError(err)
		return nil, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 4<<10), maxEventBytes) // grows for long log chunks
	var last *agent.JobStatus
	for sc.Scan() {
		var ev agent.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return last, fmt.Errorf("cloche agent: malformed event: %w", err)
		}
		if ev.Type == agent.EventJob && ev.Job != nil {
			last = ev.Job
		}
		if onEvent != nil {
			onEvent(ev)
		}
		if last != nil && last.State.Terminal() {
			return last, nil
		}
	}
	if err := ctx.Err(); err != nil {
		return last, err
	}
	if err := sc.Err(); err != nil {
		return last, fmt.Errorf("%w: %w", ErrStream, err)
	}
	return last, ErrStream
}

func writeSubmission(mw *multipart.Writer, spec agent.JobSpec, archive io.Reader) error {
	h := textproto.MIMEHeader{}
	h.Set("Content-Disposition", `form-data; name="job"`)
	h.Set("Content-Type", "application/json")
	w, err := mw.CreatePart(h)
	if err != nil {
		return err
	}
	if err := json.NewEncoder(w).Encode(&spec); err != nil {
		return err
	}
	h = textproto.MIMEHeader{}
	h.Set("Content-Disposition", `form-data; name="source"; filename="source.tar"`)
	h.Set("Content-Type", "application/x-tar")
	if w, err = mw.CreatePart(h); err != nil {
		return err
	}
	if _, err := io.Copy(w, archive); err != nil {
		return fmt.Errorf("sending the source archive: %w", err)
	}
	return mw.Close()
}

// FetchResult downloads a succeeded job's result archive, checks it against the digest in
// st.Result, and moves its files (artifacts and the provenance bundle) into outDir; an
// outDir that does not exist yet is the checked files' staging directory renamed into
// place. On any error outDir is left as it was, apart from files already moved when a
// rename failed.
func (c *Client) FetchResult(ctx context.Context, st *agent.JobStatus, outDir string) error {
	if st.State != agent.StateSucceeded || st.Result == nil {
		return fmt.Errorf("job %s is %s: it has no results", st.ID, st.State)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url("/jobs/"+st.ID+"/result"), nil)
	if err != nil {
		return err
	}
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	parent := filepath.Dir(filepath.Clean(outDir))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("output directory: %w", err)
	}
	stage, err := os.MkdirTemp(parent, ".cloche-result-")
	if err != nil {
		return fmt.Errorf("staging the results: %w", err)
	}
	defer os.RemoveAll(stage)
	// The archive holds only what the job's result names: a few files, within the
	// job's output cap.
	lim := source.DefaultLimits()
	lim.MaxTotalSize = max(st.Spec.MaxOutputBytes, st.Result.Archive.Size)
	if err := source.Unpack(ctx, resp.Body, st.Result.Archive.SHA256, st.Result.Archive.Size, stage, lim, 0, 0, false); err != nil {
		return fmt.Errorf("job %s's result archive: %w", st.ID, err)
	}
	prov, err := provenanceFile(st)
	if err != nil {
		return err
	}
	want := map[string]bool{prov: true}
	for _, a := range st.Result.Artifacts {
		want[filepath.FromSlash(a.Path)] = true
	}
	sums := provenance.HasChecksumsSubject(st.Result.Artifacts)
	if sums {
		want[provenance.ChecksumsName] = true
	}
	// Check before moving anything: exactly the named files, as regular files.
	var files []string
	err = filepath.WalkDir(stage, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(stage, p)
		if !d.Type().IsRegular() || !want[rel] {
			return fmt.Errorf("job %s's result archive has %s, which its result does not name", st.ID, rel)
		}
		files = append(files, rel)
		return nil
	})
	if err != nil {
		return err
	}
	if len(files) != len(want) {
		return fmt.Errorf("job %s's result archive has %d files, its result names %d", st.ID, len(files), len(want))
	}
	// The build's SHA256SUMS (a statement subject) must be what the attested artifacts
	// give, not the agent's word.
	if sums {
		got, err := os.ReadFile(filepath.Join(stage, provenance.ChecksumsName))
		if err != nil || !bytes.Equal(got, provenance.Checksums(st.Result.Artifacts)) {
			return fmt.Errorf("job %s's result archive: %s does not list the job's artifacts", st.ID, provenance.ChecksumsName)
		}
	}
	// An output directory that does not exist yet becomes the staged one in one rename:
	// everything appears at once, and no directory is made twice.
	if publishWhole(stage, outDir, files) {
		return nil
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return fmt.Errorf("output directory: %w", err)
	}
	// Artifacts first, the provenance last, as a local build publishes them.
	for _, rel := range files {
		if rel != prov {
			if err := moveInto(stage, outDir, rel); err != nil {
				return err
			}
		}
	}
	return moveInto(stage, outDir, prov)
}

// provenanceFile is the result's provenance file: the bundle, or the unsigned statement
// of a job whose client signs, and exactly the one the job's signing asks for.
func provenanceFile(st *agent.JobStatus) (string, error) {
	r := st.Result
	if st.Spec.Signing == agent.SigningClient {
		if r.Statement == "" || r.Bundle != "" {
			return "", fmt.Errorf("job %s's client signs its provenance, but its result names bundle %q and statement %q (expected only a statement)", st.ID, r.Bundle, r.Statement)
		}
		return r.Statement, nil
	}
	if r.Bundle == "" || r.Statement != "" {
		return "", fmt.Errorf("job %s's provenance is signed by the agent, but its result names bundle %q and statement %q (expected only a bundle)", st.ID, r.Bundle, r.Statement)
	}
	return r.Bundle, nil
}

// publishWhole renames stage, which holds the checked files, to outDir when outDir does
// not exist. Every directory gets the mode os.MkdirAll(dir, 0o755) would give it, not the
// archive's, as when the files are moved one by one. It returns false when it did not
// publish (outDir exists, the umask cannot be read, or stage holds a directory that is no
// file's parent, which moving the files would leave behind).
func publishWhole(stage, outDir string, files []string) bool {
	if _, err := os.Lstat(outDir); !errors.Is(err, fs.ErrNotExist) {
		return false
	}
	umask, ok := processUmask()
	if !ok {
		return false
	}
	parents := map[string]bool{}
	for _, f := range files {
		for d := filepath.Dir(f); d != "."; d = filepath.Dir(d) {
			parents[d] = true
		}
	}
	err := filepath.WalkDir(stage, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		if rel, _ := filepath.Rel(stage, p); rel != "." && !parents[rel] {
			return fmt.Errorf("%s is no file's directory", rel)
		}
		return os.Chmod(p, 0o755&^umask)
	})
	if err != nil {
		return false
	}
	if err := os.Rename(stage, outDir); err != nil {
		return false
	}
	return true
}

// processUmask reads this process's umask from /proc/self/status (Linux 4.7 and later)
// without changing it, as syscall.Umask would for every thread.
func processUmask() (fs.FileMode, bool) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "Umask:"); ok {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
			if err != nil || m > 0o777 {
				return 0, false
			}
			return fs.FileMode(m), true
		}
	}
	return 0, false
}

func moveInto(from, to, rel string) error {
	dst := filepath.Join(to, rel)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(from, rel), dst); err != nil {
		return fmt.Errorf("publishing %s: %w", rel, err)
	}
	return nil
}
