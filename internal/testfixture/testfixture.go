// Package testfixture builds, once per test process and cached on disk across runs, the real
// things the end-to-end tests boot: the guest init, the guest image (Debian's cloud kernel +
// initramfs), a tiny busybox toolchain and the default gcc toolchain.
//
// The cache lives in $CLOCHE_TEST_CACHE, or the user cache directory's cloche-test. Entries
// are keyed by content (the guest init's digest, the toolchain's package list), so a stale
// entry is never used.
package testfixture

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/internal/atomicfile"
	"github.com/cloche-dev/cloche/internal/fileio"
	"github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/internal/image/toolchain"
)

// CacheDir returns the fixture cache directory, creating it.
func CacheDir(tb testing.TB) string {
	tb.Helper()
	dir := os.Getenv("CLOCHE_TEST_CACHE")
	if dir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			tb.Fatalf("no cache directory: %v", err)
		}
		dir = filepath.Join(base, "cloche-test")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		tb.Fatal(err)
	}
	return dir
}

// WriteTree makes a temporary directory holding files (slash-separated relative path to
// content, mode 0644, parent directories created) and returns its path: a job's source tree,
// or the files of a result archive.
func WriteTree(tb testing.TB, files map[string]string) string {
	tb.Helper()
	dir := tb.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	return dir
}

// RequireQEMU skips when QEMU or root is missing; `make test` installs QEMU first, so CI
// never skips.
func RequireQEMU(tb testing.TB) {
	tb.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		tb.Skip("qemu-system-x86_64 not installed (run scripts/install-deps.sh)")
	}
	if os.Geteuid() != 0 {
		tb.Skip("the end-to-end tests run as root (toolchain images are built with root-owned files)")
	}
}

type once[T any] struct {
	sync.Once
	v   T
	err error
}

func (o *once[T]) get(f func() (T, error)) (T, error) {
	o.Do(func() { o.v, o.err = f() })
	return o.v, o.err
}

var (
	agentOnce   once[string]
	guestOnce   once[string]
	busyboxOnce once[string]
	gccOnce     once[string]
	goOnce      once[string]
	fixtureLock sync.Mutex
)

// repoRoot finds the module root from this source file's location.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// GuestInit builds cmd/cloche-guest with scripts/build-guest-init.sh, as the Makefile does.
// The result is stored under its own digest: worktrees sharing one cache each build their own
// guest init, and a name shared by all would let one overwrite another's between build and use.
func GuestInit(tb testing.TB) string {
	tb.Helper()
	p, err := agentOnce.get(func() (string, error) {
		dir := filepath.Join(CacheDir(tb), "bin")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", err
		}
		tmp, err := os.MkdirTemp(dir, "build-")
		if err != nil {
			return "", err
		}
		defer os.RemoveAll(tmp)
		built := filepath.Join(tmp, "cloche-guest")
		cmd := exec.Command("bash", filepath.Join(repoRoot(), "scripts", "build-guest-init.sh"), built)
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("building the guest init: %v\n%s", err, b)
		}
		data, err := os.ReadFile(built)
		if err != nil {
			return "", err
		}
		sum := sha256.Sum256(data)
		out := filepath.Join(dir, "cloche-guest-"+hex.EncodeToString(sum[:8]))
		return out, atomicfile.WriteFile(out, data, 0o755)
	})
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// GuestImage returns a guest image directory built around the current guest init.
func GuestImage(tb testing.TB) string {
	tb.Helper()
	agent := GuestInit(tb)
	dir, err := guestOnce.get(func() (string, error) {
		fixtureLock.Lock()
		defer fixtureLock.Unlock()
		sum, _, err := fileio.SHA256(agent)
		if err != nil {
			return "", err
		}
		dir := filepath.Join(CacheDir(tb), "guest-image", sum[:16])
		if img, err := guestimage.Load(dir); err == nil && img.UpToDate(sum) {
			return dir, nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		deb, err := guestimage.FetchKernelDeb(ctx, filepath.Join(CacheDir(tb), "kernel"))
		if err != nil {
			return "", err
		}
		if _, err := guestimage.Build(ctx, guestimage.Options{KernelDeb: deb, GuestInit: agent, OutDir: dir}); err != nil {
			return "", err
		}
		return dir, nil
	})
	if err != nil {
		tb.Fatalf("guest image: %v", err)
	}
	return dir
}

// BusyboxToolchain returns a small toolchain image (busybox-static) for fast tests.
func BusyboxToolchain(tb testing.TB) string {
	tb.Helper()
	p, err := busyboxOnce.get(func() (string, error) {
		fixtureLock.Lock()
		defer fixtureLock.Unlock()
		out := filepath.Join(CacheDir(tb), "toolchains", "busybox.img")
		if _, err := toolchain.Load(out); err == nil {
			return out, nil
		}
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return "", err
		}
		root, err := os.MkdirTemp("", "busybox-root-")
		if err != nil {
			return "", err
		}
		defer os.RemoveAll(root)
		if err := toolchain.MakeBusyboxRoot(root); err != nil {
			return "", err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if _, err := toolchain.FromDir(ctx, root, out, "busybox"); err != nil {
			return "", err
		}
		return out, nil
	})
	if err != nil {
		tb.Fatalf("busybox toolchain: %v", err)
	}
	return p
}

// GCCToolchain returns the default Debian toolchain image (gcc, make, libc6-dev), built
// with mmdebstrap on first use (a few minutes) and cached.
func GCCToolchain(tb testing.TB) string {
	tb.Helper()
	p, err := gccOnce.get(func() (string, error) {
		fixtureLock.Lock()
		defer fixtureLock.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		defer cancel()
		_, path, err := toolchain.Build(ctx, toolchain.Options{Packages: toolchain.DefaultPackages, StateDir: CacheDir(tb), Name: toolchain.DefaultName})
		return path, err
	})
	if err != nil {
		tb.Fatalf("gcc toolchain: %v", err)
	}
	return p
}

// CopyRepo copies the repository's files (tracked and new, as git lists them) into dst, so
// a test can build a variant of cloche (e.g. with reference values embedded, as a release
// does) without touching this checkout.
func CopyRepo(tb testing.TB, dst string) {
	tb.Helper()
	root := repoRoot()
	out, err := exec.Command("git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		tb.Fatalf("git ls-files: %v", err)
	}
	for _, rel := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		b, err := os.ReadFile(filepath.Join(root, rel))
		if os.IsNotExist(err) {
			continue // deleted in the work tree
		}
		if err != nil {
			tb.Fatal(err)
		}
		p := filepath.Join(dst, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
}

// BytesRead returns how many bytes this process's threads have read so far through read
// system calls (rchar in /proc/self/task/*/io): a test takes the difference around a call
// to show that it did not read a large file, with no hook in the code under test. Children
// are not counted (QEMU reading the kernel it boots is not the host reading it), nor are
// threads that exited, which Go's hashing never runs on. It skips without /proc.
func BytesRead(tb testing.TB) int64 {
	tb.Helper()
	files, err := filepath.Glob("/proc/self/task/*/io")
	if err != nil || len(files) == 0 {
		tb.Skipf("no per-thread I/O counters in /proc (%v)", err)
	}
	var total int64
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // the thread exited meanwhile
		}
		n, err := rchar(string(b))
		if err != nil {
			tb.Fatalf("%s: %v", f, err)
		}
		total += n
	}
	return total
}

func rchar(io string) (int64, error) {
	for line := range strings.SplitSeq(io, "\n") {
		if v, ok := strings.CutPrefix(line, "rchar: "); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("no rchar line")
}

// GoToolchain returns a toolchain image of the busybox root plus the Go release version
// (such as go1.26.8) from the module proxy (toolchain.AddGo), built once and cached.
func GoToolchain(tb testing.TB, version string) string {
	tb.Helper()
	p, err := goOnce.get(func() (string, error) {
		fixtureLock.Lock()
		defer fixtureLock.Unlock()
		out := filepath.Join(CacheDir(tb), "toolchains", version+"-busybox.img")
		if _, err := toolchain.Load(out); err == nil {
			return out, nil
		}
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return "", err
		}
		root, err := os.MkdirTemp("", "go-root-")
		if err != nil {
			return "", err
		}
		defer os.RemoveAll(root)
		if err := toolchain.MakeBusyboxRoot(root); err != nil {
			return "", err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		if err := toolchain.AddGo(ctx, root, version); err != nil {
			return "", err
		}
		if _, err := toolchain.FromDir(ctx, root, out, version); err != nil {
			return "", err
		}
		return out, nil
	})
	if err != nil {
		tb.Fatalf("go toolchain: %v", err)
	}
	return p
}

// ToolchainDigest is the dm-verity root hash of the toolchain image at path, what a
// verifier pins (cloche verify --toolchain-digest).
func ToolchainDigest(tb testing.TB, path string) string {
	tb.Helper()
	tc, err := toolchain.Load(path)
	if err != nil {
		tb.Fatalf("toolchain digest: %v", err)
	}
	return tc.VerityRootHash
}
