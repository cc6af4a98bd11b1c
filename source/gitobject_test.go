package source

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// gitRepo makes a real repository in the object format with two files, a subdirectory, a
// commit, an annotated tag v1 and a lightweight tag light.
func gitRepo(t *testing.T, format ObjectFormat) string {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	dir := t.TempDir()
	git(t, dir, "init", "-q", "--object-format="+string(format))
	for name, content := range map[string]string{"README": "hello\n", "sub/dir/main.c": "int main(){}\n", "sub/x": "x"} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	git(t, dir, "add", "-A")
	git(t, dir, "commit", "-q", "-m", "first\n\nwith a body")
	git(t, dir, "tag", "-a", "-m", "release 1", "v1")
	git(t, dir, "tag", "light")
	return dir
}

func TestAttestCommitMatchesGit(t *testing.T) {
	for _, format := range []ObjectFormat{FormatSHA1, FormatSHA256} {
		t.Run(string(format), func(t *testing.T) {
			dir := gitRepo(t, format)
			ctx := context.Background()
			for _, sub := range []string{"", "sub", "sub/dir"} {
				src := filepath.Join(dir, sub)
				o, err := ReadGitObjects(ctx, src, "HEAD", "v1")
				if err != nil {
					t.Fatal(err)
				}
				if o.Format != format || o.Path != sub || len(o.Trees) != len(strings.Split(sub, "/"))*btoi(sub != "") {
					t.Fatalf("objects for %q: format %s, path %q, %d trees", sub, o.Format, o.Path, len(o.Trees))
				}
				tree, err := TreeIDFormat(src, format)
				if err != nil {
					t.Fatal(err)
				}
				a, err := AttestCommit(*o, tree)
				if err != nil {
					t.Fatalf("%q: %v", sub, err)
				}
				if want := git(t, dir, "rev-parse", "HEAD"); a.Commit != want {
					t.Errorf("commit id %s, git says %s", a.Commit, want)
				}
				if want := git(t, dir, "rev-parse", "refs/tags/v1"); a.TagObject != want || a.Tag != "v1" {
					t.Errorf("tag %q object %s, git says v1 %s", a.Tag, a.TagObject, want)
				}
				if len(a.Commit) != format.HexLen() {
					t.Errorf("commit id %s is not a %s id", a.Commit, format)
				}
			}
			light, err := ReadGitObjects(ctx, dir, "HEAD", "light")
			if err != nil || light.Tag != nil {
				t.Fatalf("a lightweight tag has no object to attest: %v, %q", err, light.Tag)
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestAttestCommitRefuses: every way the host's objects can disagree with the source.
func TestAttestCommitRefuses(t *testing.T) {
	dir := gitRepo(t, FormatSHA1)
	ctx := context.Background()
	good, err := ReadGitObjects(ctx, dir, "HEAD", "v1")
	if err != nil {
		t.Fatal(err)
	}
	tree, err := TreeID(dir)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := ReadGitObjects(ctx, filepath.Join(dir, "sub", "dir"), "HEAD", "")
	if err != nil {
		t.Fatal(err)
	}
	subTree, err := TreeID(filepath.Join(dir, "sub", "dir"))
	if err != nil {
		t.Fatal(err)
	}
	otherTree := git(t, dir, "rev-parse", "HEAD:sub")
	commitID := git(t, dir, "rev-parse", "HEAD")
	// A second commit and a tag of it, to point the first commit's tag elsewhere.
	git(t, dir, "commit", "-q", "--allow-empty", "-m", "second")
	git(t, dir, "tag", "-a", "-m", "two", "v2")
	v2, err := ReadGitObjects(ctx, dir, "HEAD", "v2")
	if err != nil {
		t.Fatal(err)
	}
	treeTag := []byte(strings.Replace(string(good.Tag), "type commit", "type tree", 1))
	sha256Objects := *good
	sha256Objects.Format = FormatSHA256

	cases := []struct {
		name string
		o    GitObjects
		tree string
		want string
	}{
		{"commit of another tree", *good, otherTree, "but the packed source's tree is " + otherTree},
		{"no commit", GitObjects{}, tree, "no commit object"},
		{"tree line missing", GitObjects{Commit: []byte("parent " + commitID + "\n\nmsg")}, tree, `expected "tree"`},
		{"tree id uppercase", GitObjects{Commit: []byte(strings.Replace(string(good.Commit), tree, strings.ToUpper(tree), 1))}, tree, `expected "tree"`},
		{"tag of another commit", GitObjects{Commit: good.Commit, Tag: v2.Tag}, tree, "tag v2 points at"},
		{"tag of a tree", GitObjects{Commit: good.Commit, Tag: treeTag}, tree, `"type commit"`},
		{"empty tag", GitObjects{Commit: good.Commit, Tag: []byte{}}, tree, "empty tag"},
		{"tag name over 255 bytes", GitObjects{Commit: good.Commit, Tag: []byte(strings.Replace(string(good.Tag), "tag v1\n", "tag v"+strings.Repeat("1", 255)+"\n", 1))}, tree, "not a valid tag name"},
		{"format differs from the tree's", sha256Objects, tree, "not a sha256 object id"},
		{"unknown format", GitObjects{Format: "md5", Commit: good.Commit}, tree, `object format "md5"`},
		{"oversized commit", GitObjects{Commit: make([]byte, MaxObjectSize+1)}, tree, "over"},
		{"subdirectory without its trees", GitObjects{Commit: sub.Commit, Path: sub.Path}, subTree, "2 components but 0 tree objects"},
		{"subdirectory with a forged tree", GitObjects{Commit: sub.Commit, Path: sub.Path, Trees: [][]byte{sub.Trees[1], sub.Trees[1]}}, subTree, "tree object 0 has id"},
		{"subdirectory, other path", GitObjects{Commit: sub.Commit, Path: "sub/nope", Trees: sub.Trees}, subTree, `no directory "nope"`},
		{"subdirectory is a file", GitObjects{Commit: sub.Commit, Path: "sub/x", Trees: sub.Trees}, subTree, "not a directory"},
		{"unclean path", GitObjects{Commit: sub.Commit, Path: "sub/../sub", Trees: sub.Trees}, subTree, "source path"},
		{"trees for the whole commit", GitObjects{Commit: good.Commit, Trees: sub.Trees}, tree, "tree objects given for the whole commit"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := AttestCommit(c.o, c.tree)
			if !errors.Is(err, ErrCommit) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want ErrCommit containing %q", err, c.want)
			}
		})
	}
	// The refusal names both ids.
	_, err = AttestCommit(*good, otherTree)
	if !strings.Contains(err.Error(), commitID) || !strings.Contains(err.Error(), tree) || !strings.Contains(err.Error(), otherTree) {
		t.Errorf("refusal does not name the commit, its tree and the source's tree: %v", err)
	}
}

func TestReadGitObjectsOutsideACheckout(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	dir := t.TempDir()
	t.Setenv("GIT_CEILING_DIRECTORIES", filepath.Dir(dir))
	if _, err := ReadGitObjects(context.Background(), dir, "HEAD", ""); !errors.Is(err, ErrNotGit) {
		t.Fatalf("got %v, want ErrNotGit", err)
	}
	repo := gitRepo(t, FormatSHA1)
	if _, err := ReadGitObjects(context.Background(), repo, "0123456789012345678901234567890123456789", ""); !errors.Is(err, ErrNotGit) {
		t.Fatalf("unknown commit: got %v, want ErrNotGit", err)
	}
	if _, err := ReadGitObjects(context.Background(), repo, "HEAD", "nope"); !errors.Is(err, ErrNoTag) {
		t.Fatalf("unknown tag: got %v, want ErrNoTag", err)
	}
}

func TestTreeIDSHA256MatchesGit(t *testing.T) {
	dir := gitRepo(t, FormatSHA256)
	got, err := TreeIDFormat(dir, FormatSHA256)
	if err != nil {
		t.Fatal(err)
	}
	if want := git(t, dir, "rev-parse", "HEAD^{tree}"); got != want {
		t.Fatalf("sha256 tree id %s, git says %s", got, want)
	}
}
