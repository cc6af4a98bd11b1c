package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cloche-dev/cloche/internal/disk"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/source"
)

// attestSource: no commit object attests nothing; a commit of the unpacked tree and a tag
// of it are attested; another tree, or a ref naming another tag, is refused.
func TestAttestSource(t *testing.T) {
	tree := strings.Repeat("e", 40)
	commit := []byte("tree " + tree + "\nauthor a <a@example.invalid> 1 +0000\ncommitter a <a@example.invalid> 1 +0000\n\nm\n")
	commitID := source.FormatSHA1.ObjectID("commit", commit)
	tag := []byte("object " + commitID + "\ntype commit\ntag v1\ntagger a <a@example.invalid> 1 +0000\n\nt\n")
	m := &job.Manifest{}
	if att, err := attestSource(m, tree); att != nil || err != nil {
		t.Fatalf("no commit object: %+v, %v", att, err)
	}
	m.Source = job.Source{Ref: "refs/tags/v1", CommitObject: commit, TagObject: tag}
	att, err := attestSource(m, tree)
	if err != nil || att.Commit != commitID || att.Tag != "v1" || att.TagObject != source.FormatSHA1.ObjectID("tag", tag) {
		t.Fatalf("attested %+v, %v", att, err)
	}
	other := strings.Repeat("f", 40)
	if _, err := attestSource(m, other); !errors.Is(err, source.ErrCommit) || !strings.Contains(err.Error(), commitID) || !strings.Contains(err.Error(), other) {
		t.Fatalf("another tree: %v", err)
	}
	m.Source.Ref = "refs/tags/v2"
	if _, err := attestSource(m, tree); !errors.Is(err, source.ErrCommit) || !strings.Contains(err.Error(), "refs/tags/v2") {
		t.Fatalf("ref of another tag: %v", err)
	}
}

// rchar is what this process has read through read(2) and friends so far (/proc/self/io).
func rchar(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		t.Skipf("no per-process I/O counters: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "rchar: "); ok {
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

// unpackSource gets the tree id, in the manifest's object format, from unpacking the
// archive: it reads the archive once and not the unpacked files again (a second pass would
// read as much again as the files hold), and the id is what TreeIDFormat reads back.
func TestUnpackSourceReadsTheTreeOnce(t *testing.T) {
	requireRoot(t) // files are given to the build user
	ctx := context.Background()
	src := t.TempDir()
	chunk := bytes.Repeat([]byte("cloche source\n"), 1<<13) // ~112 KiB
	var content int64
	for i := 0; i < 40; i++ {
		p := filepath.Join(src, fmt.Sprintf("d%d", i%5), fmt.Sprintf("f%d", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, chunk, 0o644); err != nil {
			t.Fatal(err)
		}
		content += int64(len(chunk))
	}
	if err := os.Symlink("d0/f0", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "src.tar")
	sum, size, err := source.PackFile(ctx, src, 1_700_000_000, archive)
	if err != nil {
		t.Fatal(err)
	}
	for _, format := range []source.ObjectFormat{"", source.FormatSHA1, source.FormatSHA256} {
		t.Run("format "+string(format), func(t *testing.T) {
			want, err := source.TreeIDFormat(src, format)
			if err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(archive)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			root := &BuildRoot{Src: filepath.Join(t.TempDir(), "src")}
			if err := os.Mkdir(root.Src, 0o755); err != nil {
				t.Fatal(err)
			}
			m := &job.Manifest{
				Source:    job.Source{ArchiveSHA256: sum, ArchiveSize: size, ObjectFormat: format},
				Artifacts: []string{"out/*"},
			}
			before := rchar(t)
			tree, _, err := unpackSource(ctx, &disk.Input{Archive: f, ArchiveSize: size}, m, root)
			read := rchar(t) - before
			if err != nil {
				t.Fatal(err)
			}
			if tree != want {
				t.Errorf("tree id %s, TreeIDFormat of the source says %s", tree, want)
			}
			if read < size {
				t.Fatalf("read %d bytes, less than the %d-byte archive: the counter does not see the reads", read, size)
			}
			if read > size+content/4 {
				t.Errorf("read %d bytes for a %d-byte archive of %d bytes of files: the unpacked tree is read back", read, size, content)
			}
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(root.Src, "d1/f1"), &st); err != nil || st.Uid != BuildUID || st.Gid != BuildGID {
				t.Errorf("unpacked file owner %d:%d (%v), expected %d:%d", st.Uid, st.Gid, err, BuildUID, BuildGID)
			}
		})
	}
}
