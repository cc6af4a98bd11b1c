package guest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/job"
)

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func TestCollectArtifactsPatterns(t *testing.T) {
	dir := testfixture.WriteTree(t, map[string]string{
		"dist/app":        "binary",
		"dist/app.sha":    "sum",
		"dist/sub/nested": "not matched by dist/*",
		"README":          "readme",
		"a.txt":           "a",
	})
	got, err := CollectArtifacts(dir, []string{"dist/*", "*.txt", "dist/app"}, nil, 10, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	want := []job.Artifact{
		{Path: "a.txt", SHA256: sha("a"), Size: 1},
		{Path: "dist/app", SHA256: sha("binary"), Size: 6},
		{Path: "dist/app.sha", SHA256: sha("sum"), Size: 3},
	}
	var arts []job.Artifact
	for _, a := range got {
		arts = append(arts, a.Artifact)
		if a.HostPath != filepath.Join(dir, a.Path) {
			t.Errorf("host path %q for %q", a.HostPath, a.Path)
		}
	}
	if !reflect.DeepEqual(arts, want) {
		t.Errorf("artifacts %+v, expected %+v (sorted, each once, the dist/sub directory skipped)", arts, want)
	}
}

func TestCollectArtifactsFailures(t *testing.T) {
	dir := testfixture.WriteTree(t, map[string]string{"out/a.bin": "aaaa", "out/b.bin": "bbbb"})
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "out/link.bin")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(dir, "fifo.bin"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		patterns []string
		logSize  int64
		cap      int64
		sentinel error
		msg      string
	}{
		{"symlink", []string{"out/*"}, 0, 1 << 20, ErrArtifactNotFile, `artifact "out/link.bin" (matched by pattern "out/*") is a symlink, not a regular file`},
		{"fifo", []string{"*.bin"}, 0, 1 << 20, ErrArtifactNotFile, `artifact "fifo.bin" (matched by pattern "*.bin") is a named pipe, not a regular file`},
		{"no match", []string{"out/a.bin", "out/*.exe"}, 0, 1 << 20, ErrArtifactNoMatch, `artifact pattern "out/*.exe" matched no file`},
		{"over cap", []string{"out/?.bin"}, 3, 10, ErrOutputOverCap, "output larger than the cap: 11 bytes > 10 bytes"},
		{"log alone over cap", []string{"out/a.bin"}, 100, 50, ErrOutputOverCap, "output larger than the cap: 104 bytes > 50 bytes"},
	}
	for _, c := range cases {
		_, err := CollectArtifacts(dir, c.patterns, nil, c.logSize, c.cap)
		if !errors.Is(err, c.sentinel) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v; expected %q", c.name, err, c.msg)
		}
	}
	// Exactly at the cap is fine.
	if _, err := CollectArtifacts(dir, []string{"out/?.bin"}, nil, 2, 10); err != nil {
		t.Errorf("at the cap: %v", err)
	}
}

func TestCollectArtifactsCreatedOrChanged(t *testing.T) {
	dir := testfixture.WriteTree(t, map[string]string{"src/main.c": "int main;", "Makefile": "all:", "keep": "same"})
	before, err := SnapshotTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	// The "build": a new file, a rewritten file (same size, mtime put back), a new symlink.
	time.Sleep(20 * time.Millisecond) // ctime granularity
	if err := os.WriteFile(filepath.Join(dir, "out.bin"), []byte("built"), 0o755); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(filepath.Join(dir, "Makefile"))
	if err := os.WriteFile(filepath.Join(dir, "Makefile"), []byte("ALL:"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(dir, "Makefile"), fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("out.bin", filepath.Join(dir, "out.link")); err != nil {
		t.Fatal(err)
	}
	got, err := CollectArtifacts(dir, []string{}, before, 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, a := range got {
		paths = append(paths, a.Path)
	}
	if !reflect.DeepEqual(paths, []string{"Makefile", "out.bin"}) {
		t.Errorf("created or changed: %v, expected [Makefile out.bin]", paths)
	}
	// Nothing changed at all: an error, not an empty provenance.
	dir2 := testfixture.WriteTree(t, map[string]string{"a": "a"})
	snap2, _ := SnapshotTree(dir2)
	if _, err := CollectArtifacts(dir2, []string{}, snap2, 0, 1<<20); !errors.Is(err, ErrArtifactNoMatch) {
		t.Errorf("no change: %v", err)
	}
}
