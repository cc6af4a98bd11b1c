package client

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cloche-dev/cloche/internal/agent"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/source"
)

// fakeAgent serves one result archive on a unix socket, standing in for a hostile or
// broken agent.
func fakeAgent(t *testing.T, archive []byte) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "a.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/jobs/j1/result" {
			http.NotFound(w, r)
			return
		}
		w.Write(archive)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}

// pack makes a result archive from files.
func pack(t *testing.T, files map[string]string) ([]byte, job.Digest) {
	t.Helper()
	dir := testfixture.WriteTree(t, files)
	var b bytes.Buffer
	sum, size, err := source.Pack(context.Background(), dir, 0, &b)
	if err != nil {
		t.Fatal(err)
	}
	return b.Bytes(), job.Digest{SHA256: sum, Size: size}
}

func status(d job.Digest, artifacts ...string) *agent.JobStatus {
	st := &agent.JobStatus{ID: "j1", State: agent.StateSucceeded, Spec: agent.JobSpec{Spec: job.Spec{MaxOutputBytes: 1 << 20}},
		Result: &agent.JobResult{Bundle: "provenance.sigstore.json", Archive: d}}
	for _, a := range artifacts {
		st.Result.Artifacts = append(st.Result.Artifacts, job.Artifact{Path: a})
	}
	return st
}

// TestFetchResult: the client publishes exactly the files the job record names, and
// nothing at all when the archive is not the one the record names or holds anything else.
func TestFetchResult(t *testing.T) {
	sums := string(provenance.Checksums([]job.Artifact{{Path: "dist/app"}}))
	good := map[string]string{"dist/app": "binary", "provenance.sigstore.json": "{}", provenance.ChecksumsName: sums}
	archive, d := pack(t, good)
	out := filepath.Join(t.TempDir(), "out")
	c := New(fakeAgent(t, archive))
	if err := c.FetchResult(context.Background(), status(d, "dist/app"), out); err != nil {
		t.Fatal(err)
	}
	for name, want := range good {
		if b, err := os.ReadFile(filepath.Join(out, name)); err != nil || string(b) != want {
			t.Errorf("%s: %q %v", name, b, err)
		}
	}

	extra, de := pack(t, map[string]string{"dist/app": "binary", "provenance.sigstore.json": "{}", provenance.ChecksumsName: sums, "dist/evil.sh": "x"})
	forged, df := pack(t, map[string]string{"dist/app": "binary", "provenance.sigstore.json": "{}", provenance.ChecksumsName: strings.Repeat("0", 64) + "  dist/app\n"})
	tampered := bytes.Clone(archive)
	tampered[len(tampered)/3] ^= 1
	for _, c := range []struct {
		name    string
		archive []byte
		st      *agent.JobStatus
		want    string
	}{
		{"digest", tampered, status(d, "dist/app"), "digest mismatch"},
		{"extra file", extra, status(de, "dist/app"), "dist/evil.sh, which its result does not name"},
		{"missing file", archive, status(d, "dist/app", "dist/other"), "has 3 files, its result names 4"},
		{"forged SHA256SUMS", forged, status(df, "dist/app"), "SHA256SUMS does not list the job's artifacts"},
		{"not succeeded", archive, &agent.JobStatus{ID: "j1", State: agent.StateFailed}, "it has no results"},
	} {
		out := filepath.Join(t.TempDir(), "out")
		err := New(fakeAgent(t, c.archive)).FetchResult(context.Background(), c.st, out)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
		if entries, _ := os.ReadDir(out); len(entries) != 0 {
			t.Errorf("%s: %d files published after a rejected result", c.name, len(entries))
		}
	}
}

// TestSpillBuffer: an archive within the memory limit stays in memory; one beyond it
// moves to a temp file, reads back byte for byte, and the file is gone after close.
func TestSpillBuffer(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	data := bytes.Repeat([]byte("0123456789abcdef"), 1000)
	for _, max := range []int{len(data), len(data) - 1, 100} {
		b := &spillBuffer{max: max}
		for p := data; len(p) > 0; p = p[min(len(p), 700):] {
			if n, err := b.Write(p[:min(len(p), 700)]); err != nil || n != min(len(p), 700) {
				t.Fatalf("max %d: write: %d %v", max, n, err)
			}
		}
		if spilled := b.file != nil; spilled != (max < len(data)) {
			t.Errorf("max %d: spilled to a file %v, want %v", max, spilled, max < len(data))
		}
		r, err := b.reader()
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("max %d: read back %d bytes (%v), want the %d written", max, len(got), err, len(data))
		}
		b.close()
		if left, _ := os.ReadDir(os.TempDir()); len(left) != 0 {
			t.Errorf("max %d: %d files left in the temp directory after close", max, len(left))
		}
	}
}

// TestFetchResultNewOrExistingDir: into a directory that does not exist yet, the checked
// files appear by one rename, and every directory gets the mode os.MkdirAll gives (under
// this umask), not the archive's 0755; into an existing one, the files are moved in beside
// what is there. Nothing is left staged either way.
func TestFetchResultNewOrExistingDir(t *testing.T) {
	old := syscall.Umask(0o027)
	defer syscall.Umask(old)
	sums := string(provenance.Checksums([]job.Artifact{{Path: "dist/app"}}))
	files := map[string]string{"dist/app": "binary", "provenance.sigstore.json": "{}", provenance.ChecksumsName: sums}
	archive, d := pack(t, files)
	root := t.TempDir()
	ref := filepath.Join(root, "ref")
	if err := os.MkdirAll(ref, 0o755); err != nil {
		t.Fatal(err)
	}
	refInfo, _ := os.Stat(ref)
	existing := filepath.Join(root, "existing")
	if err := os.MkdirAll(existing, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(existing, "keep.txt"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := New(fakeAgent(t, archive))
	for _, out := range []string{filepath.Join(root, "new", "out"), existing} {
		if err := c.FetchResult(context.Background(), status(d, "dist/app"), out); err != nil {
			t.Fatal(err)
		}
		for name, want := range files {
			if b, err := os.ReadFile(filepath.Join(out, name)); err != nil || string(b) != want {
				t.Errorf("%s: %s: %q %v", out, name, b, err)
			}
		}
		for _, dir := range []string{out, filepath.Join(out, "dist")} {
			if fi, err := os.Stat(dir); err != nil || fi.Mode() != refInfo.Mode() {
				t.Errorf("%s: mode %v (%v), want %v as os.MkdirAll makes it", dir, fi.Mode(), err, refInfo.Mode())
			}
		}
		entries, _ := os.ReadDir(filepath.Dir(out))
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".cloche-result-") {
				t.Errorf("%s left beside %s", e.Name(), out)
			}
		}
	}
	if b, err := os.ReadFile(filepath.Join(existing, "keep.txt")); err != nil || string(b) != "mine" {
		t.Errorf("the existing directory's own file: %q %v", b, err)
	}
}
