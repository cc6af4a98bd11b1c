package source

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/internal/benchpair"
)

var formats = []ObjectFormat{FormatSHA1, FormatSHA256}

// unpackTreeIDHere unpacks data (with its own digest) into a fresh directory with
// UnpackTreeID and returns the directory and the id.
func unpackTreeIDHere(t testing.TB, data []byte, f ObjectFormat) (string, string, error) {
	t.Helper()
	dest := t.TempDir()
	id, err := UnpackTreeID(context.Background(), bytes.NewReader(data), digest(data), int64(len(data)), dest, DefaultLimits(), 0, 0, false, f)
	return dest, id, err
}

// gitWriteTree is what git itself says the tree of dir is: a fresh repository in the
// object format, everything added, write-tree. It leaves dir/.git behind.
func gitWriteTree(t *testing.T, dir string, f ObjectFormat) string {
	t.Helper()
	git(t, dir, "init", "-q", "--object-format="+string(f))
	git(t, dir, "config", "core.fileMode", "true")
	git(t, dir, "config", "core.symlinks", "true")
	git(t, dir, "add", "-A")
	return git(t, dir, "write-tree")
}

// sortNames are name components whose byte order and git's order differ: a directory
// "a" sorts as "a/", after "a-b", "a.b" and "a0" ('-' < '.' < '/' < '0'), while a file "a"
// sorts before them all.
var sortNames = []string{"a", "a.b", "a-b", "a0", "a b", "b", "B", "_", "ü", "z.txt"}

// randomTree makes a tree of up to n objects: files (empty, small, a few tens of KiB;
// some with the owner's exec bit, some with only group or other exec bits), symlinks
// (relative, absolute, dangling, to directories), nested and empty directories
// (including directories that hold only empty directories). No path is both a leaf and
// a parent, and nothing is named .git (git init makes its own).
func randomTree(rng *rand.Rand, n int) []file {
	kinds := map[string]bool{} // path -> is a directory
	var files []file
	perms := []os.FileMode{0o644, 0o600, 0o755, 0o700, 0o744, 0o654, 0o645, 0o711, 0o400, 0o500}
	for len(files) < n {
		depth := rng.IntN(4) + 1
		parts := make([]string, depth)
		for i := range parts {
			parts[i] = sortNames[rng.IntN(len(sortNames))]
		}
		name := strings.Join(parts, "/")
		if _, used := kinds[name]; used {
			continue
		}
		ok := true
		for i := 1; i < depth; i++ {
			if dir, used := kinds[strings.Join(parts[:i], "/")]; used && !dir {
				ok = false
			}
		}
		if !ok {
			continue
		}
		for i := 1; i < depth; i++ {
			kinds[strings.Join(parts[:i], "/")] = true
		}
		var f file
		switch k := rng.IntN(10); {
		case k < 6:
			size := []int{0, 1, 7, 100, 4096, 40000 + rng.IntN(30000)}[rng.IntN(6)]
			content := make([]byte, size)
			for i := range content {
				content[i] = byte(rng.UintN(256))
			}
			f = file{name: name, content: string(content), mode: perms[rng.IntN(len(perms))]}
		case k < 8:
			targets := []string{"a", "../a.b", "/etc/passwd", "nowhere/at/all", strings.Join(parts[:depth-1], "/"), "ü b"}
			target := targets[rng.IntN(len(targets))]
			if target == "" {
				target = "."
			}
			f = file{name: name, link: target}
		default:
			f = file{name: name, dir: true}
			kinds[name] = true
			files = append(files, f)
			continue
		}
		kinds[name] = false
		files = append(files, f)
	}
	return files
}

// For generated trees in both object formats, the id UnpackTreeID computes while it
// unpacks the packed tree is the id TreeIDFormat reads back from what was unpacked, and
// the id git write-tree gives for the original tree.
func TestUnpackTreeIDMatchesTreeIDAndGit(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	trees := map[string][]file{
		"sample":          withoutGit(sampleTree()),
		"empty":           nil,
		"only empty dirs": {{name: "e1/e2/e3", dir: true}, {name: "e4", dir: true}},
		"sort order": {
			{name: "a", content: "file a"}, {name: "a.b", content: "x"}, {name: "a-b/c", content: "y"},
			{name: "a0", content: ""}, {name: "b/a", content: "z"}, {name: "b/a.b/c", content: "w"},
			{name: "b.c", link: "b"}, {name: "b0", dir: true},
		},
		"dir a": {{name: "a/x", content: "1"}, {name: "a.b", content: "2"}, {name: "a-b", content: "3"}, {name: "a0", content: "4"}},
	}
	rng := rand.New(rand.NewPCG(18, 1))
	for i := 0; i < 16; i++ {
		trees[fmt.Sprintf("random %d", i)] = randomTree(rng, 1+rng.IntN(60))
	}
	for name, files := range trees {
		for _, f := range formats {
			t.Run(name+"/"+string(f), func(t *testing.T) {
				src := t.TempDir()
				makeTree(t, src, files)
				data, _, _ := packBytes(t, src, 1_700_000_000)
				dest, got, err := unpackTreeIDHere(t, data, f)
				if err != nil {
					t.Fatal(err)
				}
				back, err := TreeIDFormat(dest, f)
				if err != nil {
					t.Fatal(err)
				}
				if got != back {
					t.Errorf("UnpackTreeID = %s, TreeIDFormat of the unpacked tree = %s", got, back)
				}
				if want := gitWriteTree(t, src, f); got != want {
					t.Errorf("UnpackTreeID = %s, git write-tree = %s", got, want)
				}
			})
		}
	}
}

// Archives Pack never writes but Unpack accepts: the one-pass id still follows
// TreeIDFormat's rules (.git below the top kept,
// implicit parents, directory entries after their content, exec bits, empty
// directories).
func TestUnpackTreeIDHandMadeArchives(t *testing.T) {
	archives := map[string][]byte{
		"nested .git": rawTar(t, entry{name: "sub/.git", body: "kept below the top"}, entry{name: ".gitignore", body: "*.o\n"}),
		"implicit parents and late dir": rawTar(t,
			entry{name: "a/b/c", body: "deep"}, entry{name: "a/b/", typ: tar.TypeDir}, entry{name: "a/", typ: tar.TypeDir}),
		"mode bits":  rawTar(t, entry{name: "exec", body: "s", mode: 0o755}, entry{name: "plain", body: "g", mode: 0o644}),
		"empty dirs": rawTar(t, entry{name: "e/", typ: tar.TypeDir}, entry{name: "e/f/", typ: tar.TypeDir}, entry{name: "g", body: ""}),
		"nothing":    rawTar(t),
	}
	for name, data := range archives {
		for _, f := range formats {
			t.Run(name+"/"+string(f), func(t *testing.T) {
				dest, got, err := unpackTreeIDHere(t, data, f)
				if err != nil {
					t.Fatal(err)
				}
				if want, err := TreeIDFormat(dest, f); err != nil || got != want {
					t.Errorf("UnpackTreeID = %s, TreeIDFormat of the unpacked tree = %s (%v)", got, want, err)
				}
			})
		}
	}
}

// An archive Unpack refuses, or whose digest does not match, gives no id; a bad object
// format is refused before anything is read.
func TestUnpackTreeIDRefuses(t *testing.T) {
	data := rawTar(t, entry{name: "f", body: "x"}, entry{name: "f", body: "again"})
	if _, id, err := unpackTreeIDHere(t, data, FormatSHA1); !errors.Is(err, ErrUnsafeEntry) || id != "" {
		t.Errorf("duplicate entry: id %q, err %v, want ErrUnsafeEntry and no id", id, err)
	}
	// The tree id skips a top-level .git, so an archive may not carry one, whatever it is.
	for name, data := range map[string][]byte{
		"top .git dir":     rawTar(t, entry{name: ".git/", typ: tar.TypeDir}, entry{name: ".git/HEAD", body: "ref"}, entry{name: "f", body: "x"}),
		"top .git file":    rawTar(t, entry{name: ".git", body: "gitdir: elsewhere"}, entry{name: "f", body: "x"}),
		"top .git symlink": rawTar(t, entry{name: ".git", typ: tar.TypeSymlink, linkname: "/tmp"}),
		"implicit .git":    rawTar(t, entry{name: ".git/objects/ab/cd", body: "obj"}),
	} {
		if _, id, err := unpackTreeIDHere(t, data, FormatSHA1); !errors.Is(err, ErrUnsafeEntry) || id != "" {
			t.Errorf("%s: id %q, err %v, want ErrUnsafeEntry and no id", name, id, err)
		}
	}
	good := rawTar(t, entry{name: "f", body: "x"})
	dest := t.TempDir()
	id, err := UnpackTreeID(context.Background(), bytes.NewReader(good), digest([]byte("other")), int64(len(good)), dest, DefaultLimits(), 0, 0, false, FormatSHA1)
	if !errors.Is(err, ErrDigestMismatch) || id != "" {
		t.Errorf("wrong digest: id %q, err %v, want ErrDigestMismatch and no id", id, err)
	}
	dest = t.TempDir()
	_, err = UnpackTreeID(context.Background(), bytes.NewReader(good), digest(good), int64(len(good)), dest, DefaultLimits(), 0, 0, false, "md5")
	if err == nil || !strings.Contains(err.Error(), `"md5"`) {
		t.Errorf("object format md5: %v, want an error naming it", err)
	}
	if ents, _ := os.ReadDir(dest); len(ents) != 0 {
		t.Errorf("a refused object format still unpacked %d entries", len(ents))
	}
}

// The memTree refuses what Unpack is meant to have refused already, rather than hash it.
func TestMemTreeRefusesConflicts(t *testing.T) {
	e := fileEntry("", 0o644, FormatSHA1.objectID("blob", nil))
	for _, names := range [][]string{{"a", "a"}, {"a", "a/b"}, {"a/b", "a"}} {
		var tr memTree
		err := tr.add(names[0], e)
		if err == nil {
			err = tr.add(names[1], e)
		}
		if err == nil {
			t.Errorf("memTree accepted %q then %q", names[0], names[1])
		}
	}
}

// bytesRead is what this process has read through read(2) and friends so far
// (/proc/self/io rchar), whatever the file system and its atime options.
func bytesRead(t testing.TB) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		t.Skipf("no per-process I/O counters: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "rchar: "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no rchar in /proc/self/io:\n%s", b)
	return 0
}

// UnpackTreeID does not read the unpacked files back: with the archive in memory, the
// process reads far less than the files hold, while Unpack followed by TreeIDFormat reads
// all of it (the control that shows the counter would catch a second pass).
func TestUnpackTreeIDReadsNoFile(t *testing.T) {
	src := t.TempDir()
	var files []file
	chunk := strings.Repeat("0123456789abcdef", 1<<12) // 64 KiB
	for i := 0; i < 64; i++ {                          // 4 MiB
		files = append(files, file{name: fmt.Sprintf("d%d/f%d", i%8, i), content: chunk, mode: 0o644})
	}
	makeTree(t, src, files)
	content := int64(len(files) * len(chunk))
	data, sum, size := packBytes(t, src, 0)

	for _, f := range formats {
		dest := t.TempDir()
		before := bytesRead(t)
		id, err := UnpackTreeID(context.Background(), bytes.NewReader(data), sum, size, dest, DefaultLimits(), 0, 0, false, f)
		onePass := bytesRead(t) - before
		if err != nil {
			t.Fatal(err)
		}

		dest2 := t.TempDir()
		before = bytesRead(t)
		if err := Unpack(context.Background(), bytes.NewReader(data), sum, size, dest2, DefaultLimits(), 0, 0, false); err != nil {
			t.Fatal(err)
		}
		want, err := TreeIDFormat(dest2, f)
		twoPass := bytesRead(t) - before
		if err != nil {
			t.Fatal(err)
		}
		if id != want {
			t.Fatalf("%s: one-pass id %s, two-pass id %s", f, id, want)
		}
		if twoPass < content {
			t.Fatalf("%s: Unpack+TreeIDFormat read %d bytes, less than the %d the files hold: the counter does not see file reads", f, twoPass, content)
		}
		if onePass > content/16 {
			t.Errorf("%s: UnpackTreeID read %d bytes for %d bytes of files (two passes read %d): the tree is read back", f, onePass, content, twoPass)
		}
		t.Logf("%s: bytes read: one pass %d, two passes %d, files %d", f, onePass, twoPass, content)
	}
}

// FuzzUnpackTreeID: for any archive (its digest matching) UnpackTreeID accepts exactly
// what Unpack accepts, and its id is TreeIDFormat of what it unpacked.
func FuzzUnpackTreeID(f *testing.F) {
	src := f.TempDir()
	makeTree(f, src, sampleTree()[:12])
	var buf bytes.Buffer
	if _, _, err := Pack(context.Background(), src, 0, &buf); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes(), true)
	f.Add(rawTar(f, entry{name: ".git/", typ: tar.TypeDir}, entry{name: ".git/x", body: "y"}, entry{name: "a", body: "b"}), false)
	f.Add(rawTar(f, entry{name: "a/b/c", body: "d"}, entry{name: "a/", typ: tar.TypeDir, mode: 0o555}, entry{name: "a.b", typ: tar.TypeSymlink, linkname: "a"}), true)
	f.Add(rawTar(f, entry{name: "a", body: "x", mode: 0o711}, entry{name: "a/b", body: "y"}), false)
	f.Add([]byte{}, false)
	lim := Limits{MaxFiles: 64, MaxFileSize: 1 << 20, MaxTotalSize: 4 << 20, MaxPathLen: 256, MaxDepth: 16}
	f.Fuzz(func(t *testing.T, data []byte, sha256 bool) {
		format := FormatSHA1
		if sha256 {
			format = FormatSHA256
		}
		one, two := t.TempDir(), t.TempDir()
		id, err1 := UnpackTreeID(context.Background(), bytes.NewReader(data), digest(data), int64(len(data)), one, lim, 0, 0, false, format)
		err2 := Unpack(context.Background(), bytes.NewReader(data), digest(data), int64(len(data)), two, lim, 0, 0, false)
		defer makeRemovable(one)
		defer makeRemovable(two)
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("UnpackTreeID: %v; Unpack: %v", err1, err2)
		}
		if err1 != nil {
			if id != "" {
				t.Fatalf("id %q with error %v", id, err1)
			}
			return
		}
		want, err := TreeIDFormat(one, format)
		if err != nil {
			t.Fatal(err)
		}
		if id != want {
			t.Fatalf("UnpackTreeID = %s, TreeIDFormat = %s", id, want)
		}
	})
}

// makeRemovable gives every directory below dir its owner's permissions back.
func makeRemovable(dir string) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
}

var benchArchive struct {
	once          sync.Once
	data          []byte
	sum           string
	size, content int64
	err           error
}

// benchSource packs, once per process, a ~100 MB tree shaped like a large repository:
// 1,500 files of 64 KiB and 1,000 small ones (0 to 8 KiB) in nested directories, some
// executable, some symlinks.
func benchSource(b *testing.B) ([]byte, string, int64, int64) {
	a := &benchArchive
	a.once.Do(func() {
		dir, err := os.MkdirTemp("", "bench-src-")
		if err != nil {
			a.err = err
			return
		}
		defer os.RemoveAll(dir)
		rng := rand.NewChaCha8([32]byte{18})
		var files []file
		add := func(name string, size int, mode os.FileMode) {
			content := make([]byte, size)
			rng.Read(content)
			files = append(files, file{name: name, content: string(content), mode: mode})
			a.content += int64(size)
		}
		for i := 0; i < 1500; i++ {
			add(fmt.Sprintf("pkg%02d/sub%d/big%04d.bin", i%40, i%3, i), 64<<10, 0o644)
		}
		for i := 0; i < 1000; i++ {
			mode := os.FileMode(0o644)
			if i%10 == 0 {
				mode = 0o755
			}
			add(fmt.Sprintf("pkg%02d/src/file%04d.go", i%40, i), (i*37)%(8<<10), mode)
		}
		for i := 0; i < 40; i++ {
			files = append(files, file{name: fmt.Sprintf("pkg%02d/link", i), link: "src"})
		}
		makeTree(b, dir, files)
		var buf bytes.Buffer
		a.sum, a.size, a.err = Pack(context.Background(), dir, 1_700_000_000, &buf)
		a.data = buf.Bytes()
	})
	if a.err != nil {
		b.Fatal(a.err)
	}
	return a.data, a.sum, a.size, a.content
}

// BenchmarkUnpackTreeID compares, in pairs run back to back, the guest's old way to unpack
// the source and get its tree id (Unpack, then TreeIDFormat reading every file back) with
// UnpackTreeID's one pass, on a ~100 MB tree. It reports the paired time ratio (one pass
// over two passes), each path's throughput (MB of file content per second, from the
// median time) and the bytes each path read (/proc/self/io rchar; the archive itself is in
// memory).
func BenchmarkUnpackTreeID(b *testing.B) {
	data, sum, size, content := benchSource(b)
	ctx := context.Background()
	base := b.TempDir()
	var pairs benchpair.Pairs
	var readOne, readTwo int64
	run := func(onePass bool) (time.Duration, int64) {
		dest, err := os.MkdirTemp(base, "dest-")
		if err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(dest)
		r0 := bytesRead(b)
		start := time.Now()
		if onePass {
			_, err = UnpackTreeID(ctx, bytes.NewReader(data), sum, size, dest, DefaultLimits(), 0, 0, false, FormatSHA1)
		} else if err = Unpack(ctx, bytes.NewReader(data), sum, size, dest, DefaultLimits(), 0, 0, false); err == nil {
			_, err = TreeIDFormat(dest, FormatSHA1)
		}
		d := time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		return d, bytesRead(b) - r0
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var one, two time.Duration
		var n1, n2 int64
		if i%2 == 0 { // alternate which runs first
			two, n2 = run(false)
			one, n1 = run(true)
		} else {
			one, n1 = run(true)
			two, n2 = run(false)
		}
		pairs.Add(two, one)
		readOne, readTwo = readOne+n1, readTwo+n2
	}
	pairs.Report(b, "unpack")
	s := pairs.Summarize()
	mb := float64(content) / 1e6
	b.ReportMetric(mb/s.CandidateMedian.Seconds(), "one-pass-MB/s")
	b.ReportMetric(mb/s.BaselineMedian.Seconds(), "two-pass-MB/s")
	b.ReportMetric(float64(readOne)/float64(b.N), "one-pass-read-B/op")
	b.ReportMetric(float64(readTwo)/float64(b.N), "two-pass-read-B/op")
}
