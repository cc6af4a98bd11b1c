package toolchain

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
)

// goToolchainModule is the module under which the Go module proxy serves Go releases,
// one version per release and platform: v0.0.1-go1.26.8.linux-amd64.
const goToolchainModule = "golang.org/toolchain"

// goRelease is the shape of a Go release name AddGo accepts: an exact release, never a
// line ("go1.26") that would resolve to whatever is newest.
var goRelease = regexp.MustCompile(`^go1\.[0-9]+\.[0-9]+$`)

// GoDir is where AddGo puts GOROOT in the toolchain root; usr/local/bin/go and gofmt link
// into it, so the build finds go in its PATH.
const GoDir = "usr/local/go"

// AddGo puts the Go release version (e.g. go1.26.8) for linux/amd64 into root: fetched
// by the host's go from its GOPROXY as the module golang.org/toolchain, which go checks
// against the checksum database as for any module. The toolchain image made from root
// then fixes the bytes by its verity root hash.
func AddGo(ctx context.Context, root, version string) error {
	if !goRelease.MatchString(version) {
		return fmt.Errorf("go toolchain: version %q, expected an exact release such as go1.26.8", version)
	}
	work, err := os.MkdirTemp("", "cloche-go-toolchain-")
	if err != nil {
		return fmt.Errorf("go toolchain: %w", err)
	}
	defer os.RemoveAll(work)
	dir, err := downloadGo(ctx, work, version)
	if err != nil {
		return err
	}
	goroot := filepath.Join(root, filepath.FromSlash(GoDir))
	if err := copyTree(dir, goroot); err != nil {
		return fmt.Errorf("go toolchain: copying %s: %w", version, err)
	}
	bin := filepath.Join(root, "usr", "local", "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return fmt.Errorf("go toolchain: %w", err)
	}
	for _, name := range []string{"go", "gofmt"} {
		if err := os.Symlink("../go/bin/"+name, filepath.Join(bin, name)); err != nil {
			return fmt.Errorf("go toolchain: %w", err)
		}
	}
	return nil
}

// downloadGo runs `go mod download` of the release's module into a module cache in work
// and returns the directory it was extracted to.
func downloadGo(ctx context.Context, work, version string) (string, error) {
	mod := goToolchainModule + "@v0.0.1-" + version + ".linux-amd64"
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", mod)
	cmd.Dir = work // outside any module
	cmd.Env = append(os.Environ(), "GOMODCACHE="+filepath.Join(work, "modcache"), "GOFLAGS=-modcacherw", "GO111MODULE=on", "GOTOOLCHAIN=local")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	var got struct{ Dir, Error string }
	if err := json.Unmarshal(stdout.Bytes(), &got); err == nil && got.Error != "" {
		return "", fmt.Errorf("go toolchain: fetching module %s: %s", mod, got.Error)
	}
	if runErr != nil {
		return "", fmt.Errorf("go toolchain: go mod download %s: %w: %s", mod, runErr, strings.TrimSpace(stderr.String()))
	}
	if got.Dir == "" {
		return "", fmt.Errorf("go toolchain: go mod download %s named no directory", mod)
	}
	return got.Dir, nil
}

// copyTree copies the regular files and directories of src, a Go release as the module
// cache extracts it, to dst.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(to, 0o755)
		case !d.Type().IsRegular():
			return fmt.Errorf("%s is not a regular file or directory", p)
		}
		mode := os.FileMode(0o644)
		if goExecutable(filepath.ToSlash(rel)) {
			mode = 0o755
		}
		return copyRegular(p, to, mode)
	})
}

func copyRegular(from, to string, mode os.FileMode) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// goExecutable says whether a file of a Go release is a program. Module zips carry no
// modes, so the module cache has none executable; go, when it switches to a toolchain
// module, makes bin/ and pkg/tool/ executable, and so does this.
func goExecutable(rel string) bool {
	dir := path.Dir(rel)
	return dir == "bin" || strings.HasPrefix(dir, "pkg/tool/")
}
