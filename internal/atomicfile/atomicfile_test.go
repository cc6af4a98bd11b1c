package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteFileReplacesWhole(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, []byte("new content"), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	fi, _ := os.Stat(p)
	if err != nil || string(b) != "new content" || fi.Mode().Perm() != 0o644 {
		t.Errorf("got %q %v mode %v", b, err, fi.Mode())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("temp files left: %v", entries)
	}
}

func TestAbortLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	f, err := Create(p)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("partial"))
	f.Abort()
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("abort left %v", entries)
	}
	if err := f.Commit(0o644); err == nil {
		t.Error("commit after abort succeeded")
	}
	if err := WriteFile(filepath.Join(dir, "missing", "f"), nil, 0o644); err == nil {
		t.Error("write into a missing directory succeeded")
	}
}

// CommitNew never replaces a file: the second writer gets fs.ErrExist and the first
// writer's bytes stay; no temp file is left either way.
func TestCommitNew(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state")
	for i, content := range []string{"first", "second"} {
		f, err := Create(p)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(content)
		err = f.CommitNew(0o600)
		if (i == 0) != (err == nil) || (i == 1 && !errors.Is(err, fs.ErrExist)) {
			t.Fatalf("commit %d: %v", i, err)
		}
	}
	if b, _ := os.ReadFile(p); string(b) != "first" {
		t.Fatalf("content %q, want the first writer's", b)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode: %v %v", fi, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("left behind: %v", ents)
	}
}

func TestWriteNewFileNeverReplaces(t *testing.T) {
	p := filepath.Join(t.TempDir(), "key.pem")
	if err := WriteNewFile(p, []byte("first"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteNewFile(p, []byte("second"), 0o600); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second WriteNewFile = %v, want fs.ErrExist", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "first" {
		t.Fatalf("the file was replaced: %q", b)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
	assertNoTemps(t, filepath.Dir(p))
}

func TestWriteFileUnsyncedReplacesWhole(t *testing.T) {
	p := filepath.Join(t.TempDir(), "job.json")
	for _, data := range []string{"old", "new record"} {
		if err := WriteFileUnsynced(p, []byte(data), 0o640); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(p); string(b) != data {
			t.Fatalf("read %q, want %q", b, data)
		}
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v", fi.Mode())
	}
	if err := WriteFileUnsynced(filepath.Join(p, "below-a-file"), nil, 0o600); err == nil {
		t.Error("writing below a file succeeded")
	}
	assertNoTemps(t, filepath.Dir(p))
}

func TestCommitUnsynced(t *testing.T) {
	p := filepath.Join(t.TempDir(), "result.tar")
	for _, data := range []string{"old", "new archive"} {
		f, err := Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(data); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(p); data == "new archive" && string(b) != "old" {
			t.Fatalf("before the commit the file reads %q, want the old one", b)
		}
		if err := f.CommitUnsynced(0o640); err != nil {
			t.Fatal(err)
		}
		f.Abort() // after a commit: a no-op
		if b, _ := os.ReadFile(p); string(b) != data {
			t.Fatalf("read %q, want %q", b, data)
		}
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v", fi.Mode())
	}
	assertNoTemps(t, filepath.Dir(p))
}

func assertNoTemps(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temp file left: %s", e.Name())
		}
	}
}
