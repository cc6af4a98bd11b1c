package source

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "HOME="+dir,
		"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.invalid",
		"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.invalid")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestTreeIDMatchesGit(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	trees := map[string][]file{
		"sample": withoutGit(sampleTree()),
		// Names where git's order (directories as name + "/") differs from plain byte order.
		"ordering": {
			{name: "foo.c", content: "1"},
			{name: "foo/bar", content: "2"},
			{name: "foo-bar", content: "3"},
			{name: "foo0", content: "4"},
			{name: "a/b/c/d/e", content: "deep"},
			{name: "a/b.txt", content: "b"},
			{name: "a/b-", content: "c"},
		},
		"only empty dirs": {
			{name: "keep", content: "k"},
			{name: "e1/e2/e3", dir: true},
		},
		"exec and links": {
			{name: "x", content: "#!/bin/sh\n", mode: 0o755},
			{name: "nx", content: "#!/bin/sh\n", mode: 0o644},
			{name: "l1", link: "x"},
			{name: "l2", link: "/absolute/path"},
			{name: "dir/l3", link: "../x"},
		},
	}
	for name, files := range trees {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			makeTree(t, dir, files)
			git(t, dir, "init", "-q")
			git(t, dir, "config", "core.fileMode", "true")
			git(t, dir, "add", "-A")
			want := git(t, dir, "write-tree")
			git(t, dir, "commit", "-q", "-m", "x")
			if head := git(t, dir, "rev-parse", "HEAD^{tree}"); head != want {
				t.Fatalf("git disagrees with itself: %s vs %s", head, want)
			}
			got, err := TreeID(dir)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Fatalf("TreeID = %s, git write-tree = %s", got, want)
			}
		})
	}
}

func TestTreeIDEmptyAndChanges(t *testing.T) {
	dir := t.TempDir()
	id, err := TreeID(dir)
	if err != nil {
		t.Fatal(err)
	}
	if id != "4b825dc642cb6eb9a060e54bf8d69288fbee4904" { // git's well-known empty tree
		t.Fatalf("empty tree id %s", id)
	}
	makeTree(t, dir, []file{{name: "f", content: "x"}})
	base, _ := TreeID(dir)
	os.Chmod(filepath.Join(dir, "f"), 0o755)
	exe, _ := TreeID(dir)
	if exe == base {
		t.Error("exec bit does not change the tree id")
	}
	// .git at the top is ignored.
	makeTree(t, dir, []file{{name: ".git/config", content: "x"}})
	if withGit, _ := TreeID(dir); withGit != exe {
		t.Error("top-level .git changed the tree id")
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err == nil {
		if _, err := TreeID(dir); err == nil || !strings.Contains(err.Error(), "fifo") {
			t.Errorf("TreeID with a FIFO: %v, want an error naming it", err)
		}
	}
	if _, err := TreeID(filepath.Join(dir, "f")); err == nil {
		t.Error("TreeID of a file succeeded")
	}
}

// withoutGit drops the .git entries: git init makes its own, and git refuses a file
// named .git below the top.
func withoutGit(files []file) []file {
	var out []file
	for _, f := range files {
		if !strings.Contains("/"+f.name, "/.git") {
			out = append(out, f)
		}
	}
	return out
}
