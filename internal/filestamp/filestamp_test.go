package filestamp

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// counted is SHA-256 that counts how often the file was hashed (digests taken: New alone
// is also how a digest's length is learnt).
func counted(n *int) Algorithm {
	return Algorithm{Name: "sha256", New: func() hash.Hash { return &countSum{Hash: sha256.New(), n: n} }}
}

type countSum struct {
	hash.Hash
	n *int
}

func (c *countSum) Sum(b []byte) []byte {
	*c.n++
	return c.Hash.Sum(b)
}

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// stamped writes a file, waits until the clock has moved past its change time (so that a
// test's next write cannot fall in the same tick), and sums it once.
func stamped(t *testing.T, content []byte) (string, *int) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(p, content, 0o644); err != nil {
		t.Fatal(err)
	}
	var n int
	d, err := Sum(p, counted(&n))
	if err != nil || n != 1 || d["sha256"] != hexSum(content) {
		t.Fatalf("first Sum: %v, %v, hashed %d times", d, err, n)
	}
	if _, err := os.Stat(p + Suffix); err != nil {
		t.Fatalf("no sidecar after the first Sum: %v", err)
	}
	return p, &n
}

// wantSum sums p and checks it hashed the file hashes more times in all, with digest want.
func wantSum(t *testing.T, p string, n *int, hashes int, want []byte) {
	t.Helper()
	before := *n
	d, err := Sum(p, counted(n))
	if err != nil {
		t.Fatal(err)
	}
	if got := *n - before; got != hashes {
		t.Errorf("Sum hashed the file %d times, want %d", got, hashes)
	}
	if d["sha256"] != hexSum(want) {
		t.Errorf("Sum = %s, want the SHA-256 of the current content %s", d["sha256"], hexSum(want))
	}
}

func TestHit(t *testing.T) {
	content := bytes.Repeat([]byte("toolchain"), 10000)
	p, n := stamped(t, content)
	wantSum(t, p, n, 0, content)
	wantSum(t, p, n, 0, content)
}

func TestMissWhenTheFileChanges(t *testing.T) {
	content := bytes.Repeat([]byte("kernel"), 10000)
	same := bytes.Repeat([]byte("KERNEL"), 10000) // same size
	for name, change := range map[string]func(t *testing.T, p string) []byte{
		"touch": func(t *testing.T, p string) []byte {
			now := time.Now()
			must(t, os.Chtimes(p, now, now))
			return content
		},
		"times set back": func(t *testing.T, p string) []byte {
			fi, err := os.Stat(p)
			must(t, err)
			writeInPlace(t, p, same)
			must(t, os.Chtimes(p, fi.ModTime(), fi.ModTime()))
			return same
		},
		"rewrite in place, same size": func(t *testing.T, p string) []byte {
			writeInPlace(t, p, same)
			return same
		},
		"replace by rename": func(t *testing.T, p string) []byte {
			tmp := p + ".new"
			must(t, os.WriteFile(tmp, same, 0o644))
			must(t, os.Rename(tmp, p))
			return same
		},
		"truncate": func(t *testing.T, p string) []byte {
			must(t, os.Truncate(p, 100))
			return content[:100]
		},
	} {
		t.Run(name, func(t *testing.T) {
			p, n := stamped(t, content)
			want := change(t, p)
			wantSum(t, p, n, 1, want)
			wantSum(t, p, n, 0, want) // and the new digest is recorded
		})
	}
}

func TestBadSidecarIgnored(t *testing.T) {
	content := []byte("initramfs")
	for name, spoil := range map[string]func(t *testing.T, side string){
		"corrupt": func(t *testing.T, side string) { overwrite(t, side, []byte("{not json")) },
		"oversized": func(t *testing.T, side string) {
			b, err := os.ReadFile(side)
			must(t, err)
			overwrite(t, side, append(b, bytes.Repeat([]byte(" "), maxSidecar)...))
		},
		"wrong version": func(t *testing.T, side string) { replaceIn(t, side, `"version":1`, `"version":2`) },
		"unknown key":   func(t *testing.T, side string) { replaceIn(t, side, `"version":1`, `"version":1,"extra":0`) },
		"short digest":  func(t *testing.T, side string) { replaceIn(t, side, hexSum(content), hexSum(content)[:62]) },
		"other algorithm only": func(t *testing.T, side string) {
			replaceIn(t, side, `"sha256"`, `"sha384"`)
		},
		"writable by others": func(t *testing.T, side string) { must(t, os.Chmod(side, 0o666)) },
		"not after the file's change": func(t *testing.T, side string) {
			old := time.Now().Add(-time.Hour)
			must(t, os.Chtimes(side, old, old))
		},
		"a directory": func(t *testing.T, side string) {
			must(t, os.Remove(side))
			must(t, os.Mkdir(side, 0o755))
		},
	} {
		t.Run(name, func(t *testing.T) {
			p, n := stamped(t, content)
			spoil(t, p+Suffix)
			wantSum(t, p, n, 1, content)
		})
	}
}

// A lying sidecar (the right identity, another digest) is believed: the identity is the
// whole check, which is why readSidecar only trusts this user's or root's own sidecars.
func TestIdentityIsTheCheck(t *testing.T) {
	content := []byte("busybox")
	p, n := stamped(t, content)
	replaceIn(t, p+Suffix, hexSum(content), hexSum([]byte("other")))
	if d, err := Sum(p, counted(n)); err != nil || d["sha256"] != hexSum([]byte("other")) || *n != 1 {
		t.Fatalf("Sum = %v, %v after %d hashes; the test's premise is wrong", d, err, *n)
	}
	// Touching the file makes the lie go away.
	now := time.Now()
	must(t, os.Chtimes(p, now, now))
	wantSum(t, p, n, 1, content)
}

func TestRecord(t *testing.T) {
	p := filepath.Join(t.TempDir(), "img")
	content := []byte("written by its maker")
	must(t, os.WriteFile(p, content, 0o644))
	must(t, Record(p, Digests{"sha256": hexSum(content)}))
	var n int
	wantSum(t, p, &n, 0, content)
	if err := Record(p, nil); err == nil {
		t.Error("Record of no digests succeeded")
	}
	if err := Record(filepath.Dir(p), Digests{"sha256": hexSum(content)}); err == nil {
		t.Error("Record of a directory succeeded")
	}
}

// A file written while it is being hashed gets no sidecar.
func TestChangeDuringReadNotRecorded(t *testing.T) {
	p := filepath.Join(t.TempDir(), "img")
	must(t, os.WriteFile(p, bytes.Repeat([]byte("x"), 1<<20), 0o644))
	writing := Algorithm{Name: "sha256", New: func() hash.Hash {
		return &writeOnFirst{Hash: sha256.New(), do: func() { writeInPlace(t, p, []byte("y")) }}
	}}
	if _, err := Sum(p, writing); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p + Suffix); !os.IsNotExist(err) {
		t.Errorf("a sidecar was written for a file changed during its read: %v", err)
	}
}

func TestSumRefusesNonRegular(t *testing.T) {
	if _, err := Sum(t.TempDir(), SHA256()); err == nil {
		t.Error("Sum of a directory succeeded")
	}
	if _, err := Sum(filepath.Join(t.TempDir(), "missing"), SHA256()); !os.IsNotExist(err) {
		t.Errorf("Sum of a missing file: %v, want not-exist", err)
	}
}

// writeOnFirst runs do before its first Write.
type writeOnFirst struct {
	hash.Hash
	do   func()
	done bool
}

func (w *writeOnFirst) Write(b []byte) (int, error) {
	if !w.done {
		w.done = true
		w.do()
	}
	return w.Hash.Write(b)
}

func writeInPlace(t *testing.T, p string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteAt(b, 0)
	must(t, err)
	must(t, f.Close())
}

// overwrite replaces the sidecar's content, keeping it newer than the file.
func overwrite(t *testing.T, p string, b []byte) {
	t.Helper()
	writeInPlace(t, p, b)
	must(t, os.Truncate(p, int64(len(b))))
}

func replaceIn(t *testing.T, p, old, repl string) {
	t.Helper()
	b, err := os.ReadFile(p)
	must(t, err)
	if !strings.Contains(string(b), old) {
		t.Fatalf("%s has no %q: %s", p, old, b)
	}
	overwrite(t, p, []byte(strings.Replace(string(b), old, repl, 1)))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
