package guest

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// mergedUsrRoot builds a Debian-style root: bin -> usr/bin, alternatives with absolute
// symlinks, a non-executable file, a directory on PATH named like a command, a loop.
func mergedUsrRoot(t *testing.T) string {
	t.Helper()
	r := t.TempDir()
	mk := func(p string, mode os.FileMode) {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(r, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(r, p), []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	ln := func(target, p string) {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(r, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(r, p)); err != nil {
			t.Fatal(err)
		}
	}
	mk("usr/bin/gcc-12", 0o755)
	mk("usr/bin/readme", 0o644)
	mk("usr/sbin/only-sbin", 0o755)
	mk("src/proj/build.sh", 0o755)
	ln("usr/bin", "bin")
	ln("usr/sbin", "sbin")
	ln("/etc/alternatives/cc", "usr/bin/cc")
	ln("/usr/bin/gcc-12", "etc/alternatives/cc")
	ln("gcc-12", "usr/bin/gcc")
	ln("../../../../../../usr/bin/gcc-12", "usr/bin/dotdot") // ".." stops at the root
	ln("/nonexistent/x", "usr/bin/dangling")
	ln("loop2", "usr/bin/loop1")
	ln("loop1", "usr/bin/loop2")
	ln("/etc/passwd", "usr/bin/escape") // the host's /etc/passwd must not be found
	if err := os.MkdirAll(filepath.Join(r, "usr/local/bin/dirname"), 0o755); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestLookCommand(t *testing.T) {
	r := mergedUsrRoot(t)
	for name, want := range map[string]string{
		"gcc-12":           "/usr/bin/gcc-12",
		"cc":               "/usr/bin/cc", // via an absolute alternatives symlink
		"gcc":              "/usr/bin/gcc",
		"dotdot":           "/usr/bin/dotdot",
		"only-sbin":        "/usr/sbin/only-sbin",
		"/bin/gcc":         "/bin/gcc", // through bin -> usr/bin
		"./build.sh":       "/src/proj/build.sh",
		"../proj/build.sh": "/src/proj/build.sh",
	} {
		got, err := lookCommand(r, name, "/src/proj")
		if err != nil || got != want {
			t.Errorf("lookCommand(%q) = %q, %v; expected %q", name, got, err, want)
		}
	}
	for _, name := range []string{"readme", "dangling", "loop1", "escape", "dirname", "nosuch", "/usr/bin/readme", "./missing.sh"} {
		got, err := lookCommand(r, name, "/src/proj")
		if !errors.Is(err, ErrCommandNotFound) {
			t.Errorf("lookCommand(%q) = %q, %v; expected ErrCommandNotFound", name, got, err)
		}
	}
	_, err := lookCommand(r, "nosuch", "/src")
	if err == nil || err.Error() != "command not found: nosuch (searched PATH inside the toolchain: "+BuildPath+")" {
		t.Errorf("message: %v", err)
	}
}

func TestResolveInRoot(t *testing.T) {
	r := mergedUsrRoot(t)
	got, err := resolveInRoot(r, "/bin/cc")
	if err != nil || got != filepath.Join(r, "usr/bin/gcc-12") {
		t.Errorf("/bin/cc resolved to %q, %v", got, err)
	}
	if _, err := resolveInRoot(r, "/usr/bin/loop1"); err == nil || !strings.Contains(err.Error(), "too many levels of symbolic links") {
		t.Errorf("symlink loop: %v", err)
	}
	if _, err := resolveInRoot(r, "/usr/bin/gcc-12/x"); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("file as directory: %v", err)
	}
	if got, err := resolveInRoot(r, "/../../usr/bin/gcc-12"); err != nil || got != filepath.Join(r, "usr/bin/gcc-12") {
		t.Errorf(".. above the root: %q, %v", got, err)
	}
}
