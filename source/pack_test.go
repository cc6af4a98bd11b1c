package source

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// file describes one object of a test tree.
type file struct {
	name    string // slash path
	content string
	mode    os.FileMode // perm bits for files and dirs
	link    string      // symlink target; content and mode ignored
	dir     bool
}

func makeTree(t testing.TB, root string, files []file) {
	t.Helper()
	for _, f := range files {
		p := filepath.Join(root, filepath.FromSlash(f.name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		switch {
		case f.dir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			if f.mode != 0 {
				if err := os.Chmod(p, f.mode); err != nil {
					t.Fatal(err)
				}
			}
		case f.link != "":
			if err := os.Symlink(f.link, p); err != nil {
				t.Fatal(err)
			}
		default:
			mode := f.mode
			if mode == 0 {
				mode = 0o644
			}
			if err := os.WriteFile(p, []byte(f.content), mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, mode); err != nil { // umask-independent
				t.Fatal(err)
			}
		}
	}
}

// sampleTree has names whose byte order and git order differ ("a-b", "a.c", "a/"), an
// exec file, symlinks (relative, absolute, dangling), an empty dir, a long name and a
// non-ASCII name (both need PAX records), and a .git to skip.
func sampleTree() []file {
	long := strings.Repeat("d", 60) + "/" + strings.Repeat("f", 90) + ".txt"
	return []file{
		{name: "README.md", content: "hello\n"},
		{name: "a/x.go", content: "package a\n"},
		{name: "a-b", content: "dash\n"},
		{name: "a.c", content: "dot\n"},
		{name: "a/sub/deep.txt", content: strings.Repeat("deep ", 1000)},
		{name: "bin/run.sh", content: "#!/bin/sh\necho hi\n", mode: 0o755},
		{name: "bin/owner-only-exec", content: "x", mode: 0o700},
		{name: "bin/group-exec-only", content: "y", mode: 0o654},
		{name: "link-rel", link: "a/x.go"},
		{name: "link-abs", link: "/etc/passwd"},
		{name: "link-dangling", link: "../nowhere"},
		{name: "empty", dir: true},
		{name: "empty-nested/inner", dir: true},
		{name: long, content: "long name\n"},
		{name: "ünïcode.txt", content: "utf-8\n"},
		{name: "zero-length", content: ""},
		{name: ".git/HEAD", content: "ref: refs/heads/main\n"},
		{name: "sub/.git", content: "not skipped below the top level\n"},
	}
}

func packBytes(t testing.TB, dir string, epoch int64) ([]byte, string, int64) {
	t.Helper()
	var buf bytes.Buffer
	sum, n, err := Pack(context.Background(), dir, epoch, &buf)
	if err != nil {
		t.Fatalf("Pack: %v", err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("Pack size %d, wrote %d bytes", n, buf.Len())
	}
	got := sha256.Sum256(buf.Bytes())
	if hex.EncodeToString(got[:]) != sum {
		t.Fatalf("Pack digest %s does not match the bytes written (%x)", sum, got)
	}
	return buf.Bytes(), sum, n
}

func TestPackDeterministic(t *testing.T) {
	files := sampleTree()
	a := t.TempDir()
	makeTree(t, a, files)

	// The same content created in reverse order, with other permission bits that
	// normalise to the same modes, and different mtimes.
	b := t.TempDir()
	rev := make([]file, len(files))
	for i, f := range files {
		rev[len(files)-1-i] = f
		if f.mode == 0o644 || (f.mode == 0 && !f.dir && f.link == "") {
			rev[len(files)-1-i].mode = 0o600
		}
	}
	makeTree(t, b, rev)
	old := time.Unix(1_000_000, 0)
	filepath.Walk(b, func(p string, _ os.FileInfo, _ error) error {
		os.Lchown(p, 1234, 5678)
		os.Chtimes(p, old, old)
		return nil
	})

	first, sum1, _ := packBytes(t, a, 1_700_000_000)
	again, sum2, _ := packBytes(t, a, 1_700_000_000)
	if !bytes.Equal(first, again) || sum1 != sum2 {
		t.Fatal("packing the same tree twice gave different archives")
	}
	// Touch every mtime in a, then pack again.
	now := time.Now()
	filepath.Walk(a, func(p string, _ os.FileInfo, _ error) error {
		os.Chtimes(p, now, now)
		return nil
	})
	touched, _, _ := packBytes(t, a, 1_700_000_000)
	if !bytes.Equal(first, touched) {
		t.Fatal("touching mtimes changed the archive")
	}
	other, _, _ := packBytes(t, b, 1_700_000_000)
	if !bytes.Equal(first, other) {
		t.Fatal("same content created in another order with other owners, mtimes and umask-like modes gave a different archive")
	}
	later, _, _ := packBytes(t, a, 1_700_000_001)
	if bytes.Equal(first, later) {
		t.Fatal("a different epoch gave the same archive; mtimes are not the epoch")
	}
	// A content change must change the archive.
	if err := os.WriteFile(filepath.Join(b, "README.md"), []byte("hellO\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	changed, _, _ := packBytes(t, b, 1_700_000_000)
	if bytes.Equal(first, changed) {
		t.Fatal("a content change did not change the archive")
	}
}

func TestPackHeaders(t *testing.T) {
	dir := t.TempDir()
	makeTree(t, dir, sampleTree())
	const epoch = 1_234_567_890
	data, _, _ := packBytes(t, dir, epoch)

	tr := tar.NewReader(bytes.NewReader(data))
	var names []string
	modes := map[string]int64{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		modes[hdr.Name] = hdr.Mode
		if !hdr.ModTime.Equal(time.Unix(epoch, 0)) {
			t.Errorf("%s: mtime %v, want %v", hdr.Name, hdr.ModTime, time.Unix(epoch, 0))
		}
		if hdr.Uid != 0 || hdr.Gid != 0 || hdr.Uname != "" || hdr.Gname != "" {
			t.Errorf("%s: owner %d/%d %q/%q, want 0/0 and empty names", hdr.Name, hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname)
		}
		if hdr.Format != tar.FormatPAX && hdr.Format != tar.FormatUSTAR && hdr.Format != tar.FormatUSTAR|tar.FormatPAX {
			t.Errorf("%s: format %v, want ustar/PAX", hdr.Name, hdr.Format)
		}
	}
	for i := 1; i < len(names); i++ {
		if strings.TrimSuffix(names[i-1], "/") >= strings.TrimSuffix(names[i], "/") {
			t.Errorf("entries not sorted: %q before %q", names[i-1], names[i])
		}
	}
	for _, n := range names {
		if n == ".git/" || strings.HasPrefix(n, ".git/") {
			t.Errorf("top-level .git was packed: %q", n)
		}
	}
	want := map[string]int64{
		"a/":                          0o755,
		"empty/":                      0o755,
		"README.md":                   0o644,
		"bin/run.sh":                  0o755,
		"bin/owner-only-exec":         0o755,
		"bin/group-exec-only":         0o644, // git looks at the owner's exec bit only
		"link-abs":                    0o777,
		"sub/.git":                    0o644,
		"ünïcode.txt":                 0o644,
		"empty-nested/inner/":         0o755,
		"a/sub/deep.txt":              0o644,
		"zero-length":                 0o644,
		"link-dangling":               0o777,
		"a-b":                         0o644,
		"a.c":                         0o644,
		"link-rel":                    0o777,
		"bin/":                        0o755,
		"sub/":                        0o755,
		"empty-nested/":               0o755,
		"a/sub/":                      0o755,
		"a/x.go":                      0o644,
		strings.Repeat("d", 60) + "/": 0o755,
		strings.Repeat("d", 60) + "/" + strings.Repeat("f", 90) + ".txt": 0o644,
	}
	if len(names) != len(want) {
		t.Errorf("packed %d entries %q, want %d", len(names), names, len(want))
	}
	for n, m := range want {
		got, ok := modes[n]
		if !ok {
			t.Errorf("entry %q missing", n)
		} else if got != m {
			t.Errorf("%s: mode %o, want %o", n, got, m)
		}
	}
}

func TestPackRejectsSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	makeTree(t, dir, []file{{name: "ok.txt", content: "x"}})
	fifo := filepath.Join(dir, "sub", "pipe")
	os.MkdirAll(filepath.Dir(fifo), 0o755)
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	_, _, err := Pack(context.Background(), dir, 0, io.Discard)
	if err == nil || !strings.Contains(err.Error(), fifo) {
		t.Fatalf("Pack with a FIFO: err = %v, want an error naming %s", err, fifo)
	}
}

func TestPackErrors(t *testing.T) {
	dir := t.TempDir()
	makeTree(t, dir, []file{{name: "f", content: "x"}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := Pack(ctx, dir, 0, io.Discard); !errors.Is(err, context.Canceled) {
		t.Errorf("Pack with a cancelled context: %v, want context.Canceled", err)
	}
	if _, _, err := Pack(context.Background(), filepath.Join(dir, "f"), 0, io.Discard); err == nil {
		t.Error("Pack of a regular file succeeded, want an error")
	}
	if _, _, err := Pack(context.Background(), filepath.Join(dir, "missing"), 0, io.Discard); err == nil {
		t.Error("Pack of a missing directory succeeded")
	}
}

func TestPackThroughSymlinkedRoot(t *testing.T) {
	dir := t.TempDir()
	makeTree(t, dir, sampleTree())
	want, _, _ := packBytes(t, dir, 7)
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	got, _, _ := packBytes(t, link, 7)
	if !bytes.Equal(got, want) {
		t.Fatal("packing through a symlink to the tree gave a different archive")
	}
}

func TestPackFile(t *testing.T) {
	dir := t.TempDir()
	makeTree(t, dir, sampleTree())
	want, wantSum, wantSize := packBytes(t, dir, 42)

	outDir := t.TempDir()
	dst := filepath.Join(outDir, "src.tar")
	sum, size, err := PackFile(context.Background(), dir, 42, dst)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if sum != wantSum || size != wantSize || !bytes.Equal(got, want) {
		t.Fatal("PackFile wrote something other than Pack")
	}
	// A failing pack leaves neither the destination nor a temporary file behind.
	dst2 := filepath.Join(outDir, "bad.tar")
	if _, _, err := PackFile(context.Background(), filepath.Join(dir, "missing"), 42, dst2); err == nil {
		t.Fatal("PackFile of a missing directory succeeded")
	}
	ents, _ := os.ReadDir(outDir)
	if len(ents) != 1 {
		t.Fatalf("after a failed PackFile the directory holds %d entries, want only src.tar", len(ents))
	}
}

func BenchmarkPack(b *testing.B) {
	dir := b.TempDir()
	var files []file
	chunk := strings.Repeat("0123456789abcdef", 4096) // 64 KiB
	for i := 0; i < 128; i++ {                        // 8 MiB in 128 files
		files = append(files, file{name: filepath.Join("d", string(rune('a'+i%26)), strings.Repeat("x", i%7+1)+string(rune('A'+i/26))), content: chunk})
	}
	makeTree(b, dir, files)
	b.SetBytes(int64(len(files) * len(chunk)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, err := Pack(context.Background(), dir, 0, io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}
