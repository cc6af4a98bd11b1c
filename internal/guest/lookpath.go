package guest

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// BuildPath is the PATH of the build, and the directories argv[0] is looked up in.
const BuildPath = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"

// ErrCommandNotFound is returned when argv[0] names no executable inside the build root.
var ErrCommandNotFound = errors.New("command not found")

// maxSymlinks matches the kernel's limit on symlinks followed in one lookup (ELOOP).
const maxSymlinks = 40

// resolveInRoot resolves p (an absolute path inside root) the way the kernel would after
// chroot(root): every symlink is followed, an absolute target restarts at root, and ".."
// never climbs above root. It returns the host path of the final object. os.Root cannot
// be used here because it refuses absolute symlinks, which Debian toolchains are full of
// (/usr/bin/cc -> /etc/alternatives/cc -> /usr/bin/gcc).
func resolveInRoot(root, p string) (string, error) {
	var done []string // resolved components below root
	rest := strings.Split(p, "/")
	links := 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(done) > 0 {
				done = done[:len(done)-1]
			}
			continue
		}
		host := filepath.Join(root, filepath.Join(done...), c)
		fi, err := os.Lstat(host)
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			links++
			if links > maxSymlinks {
				return "", &fs.PathError{Op: "resolve", Path: p, Err: unix.ELOOP}
			}
			target, err := os.Readlink(host)
			if err != nil {
				return "", err
			}
			if strings.HasPrefix(target, "/") {
				done = nil
			}
			rest = append(strings.Split(target, "/"), rest...)
			continue
		}
		if len(rest) > 0 && !fi.IsDir() && hasMoreComponents(rest) {
			return "", &fs.PathError{Op: "resolve", Path: p, Err: unix.ENOTDIR}
		}
		done = append(done, c)
	}
	return filepath.Join(root, filepath.Join(done...)), nil
}

func hasMoreComponents(rest []string) bool {
	for _, c := range rest {
		if c != "" && c != "." {
			return true
		}
	}
	return false
}

// lookCommand finds argv[0] inside root like a shell would after chroot(root): a name with
// a slash is taken as it is (relative to dir, the working directory inside root), any other
// name is searched in BuildPath. It returns the path inside root to execute. The check is
// that the final object is a regular file with an execute bit; anything else is
// ErrCommandNotFound with a message that says where it looked.
func lookCommand(root, name, dir string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("%w: empty program name", ErrCommandNotFound)
	}
	if strings.Contains(name, "/") {
		p := name
		if !path.IsAbs(p) {
			p = path.Join(dir, p)
		}
		if err := checkExecutable(root, p); err != nil {
			return "", fmt.Errorf("%w: %s (%w)", ErrCommandNotFound, name, err)
		}
		return p, nil
	}
	for _, d := range strings.Split(BuildPath, ":") {
		p := path.Join(d, name)
		if checkExecutable(root, p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s (searched PATH inside the toolchain: %s)", ErrCommandNotFound, name, BuildPath)
}

func checkExecutable(root, p string) error {
	host, err := resolveInRoot(root, p)
	if err != nil {
		return err
	}
	fi, err := os.Stat(host)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", p)
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not executable", p)
	}
	return nil
}
