package toolchain

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/cloche-dev/cloche/internal/image/internal/busybox"
	"github.com/cloche-dev/cloche/internal/progress"
	"github.com/cloche-dev/cloche/job"
)

// DefaultPackages make a C toolchain: compiler, make and the C library headers.
var DefaultPackages = []string{"gcc", "make", "libc6-dev"}

// DefaultName is the name the image of DefaultPackages is recorded under.
const DefaultName = "debian-bookworm-gcc"

// DefaultSuite is the Debian release toolchains are assembled from.
const DefaultSuite = "bookworm"

// formatVersion changes whenever the way an image is made changes, so that cached images
// made the old way are not reused.
const formatVersion = "cloche-toolchain-format-1"

// ImageFile is the image's file name inside its cache directory.
const ImageFile = "toolchain.img"

// sourceDateEpoch is passed to mmdebstrap so that what it can make reproducible is.
const sourceDateEpoch = "1"

// aptSourcesDirs are where the host's apt sources live.
const (
	aptSourcesList = "/etc/apt/sources.list"
	aptSourcesDir  = "/etc/apt/sources.list.d"
)

var (
	debianPackage = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
	suiteName     = regexp.MustCompile(`^[a-z][a-z0-9-]*$`)
)

// Options says which toolchain to build.
type Options struct {
	Packages []string // nil means DefaultPackages
	StateDir string   // images are cached under StateDir/toolchains/<key>/
	Name     string   // recorded in the job.Toolchain; defaults to suite:packages
	Suite    string   // default DefaultSuite
	// Progress shows the assembly's phases (it takes minutes the first time); nil shows
	// nothing.
	Progress *progress.Meter
	// Log receives warnings (nil: discarded).
	Log *slog.Logger
}

// Build assembles a Debian root with opts.Packages using mmdebstrap and makes its image
// with FromDir. The image is cached under StateDir/toolchains/<key>/ where key is the
// SHA-256 of (format version, suite, sorted packages); it is rebuilt only when that key
// changes or the cached image no longer matches its metadata. It returns the toolchain
// record and the image path.
func Build(ctx context.Context, opts Options) (*job.Toolchain, string, error) {
	if opts.StateDir == "" {
		return nil, "", errors.New("build toolchain: StateDir is required")
	}
	suite := opts.Suite
	if suite == "" {
		suite = DefaultSuite
	}
	if !suiteName.MatchString(suite) {
		return nil, "", fmt.Errorf("build toolchain: suite %q is not a Debian release name", suite)
	}
	pkgs := opts.Packages
	if pkgs == nil {
		pkgs = DefaultPackages
	}
	pkgs = slices.Clone(pkgs)
	slices.Sort(pkgs)
	pkgs = slices.Compact(pkgs)
	if len(pkgs) == 0 {
		return nil, "", errors.New("build toolchain: no packages given")
	}
	for _, p := range pkgs {
		if !debianPackage.MatchString(p) {
			return nil, "", fmt.Errorf("build toolchain: %q is not a Debian package name", p)
		}
	}
	name := opts.Name
	if name == "" {
		name = suite + ":" + strings.Join(pkgs, ",")
	}
	key := cacheKey(suite, pkgs)
	dir := filepath.Join(opts.StateDir, "toolchains", key)
	imagePath := filepath.Join(dir, ImageFile)

	phase := opts.Progress.Begin(ctx, "toolchain image", "suite", suite, "packages", strings.Join(pkgs, ","))
	if tc, err := Load(imagePath); err == nil {
		tc.Name = name
		phase.Cached("path", imagePath)
		return tc, imagePath, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		if opts.Log != nil {
			opts.Log.WarnContext(ctx, "cached toolchain image unusable; rebuilding", "path", imagePath, "err", err)
		}
	}
	tc, err := assemble(ctx, phase, suite, pkgs, name, dir, imagePath)
	if err != nil {
		phase.Fail(err)
		return nil, "", err
	}
	phase.Done("path", imagePath)
	return tc, imagePath, nil
}

// assemble builds the image at imagePath: a Debian root from mmdebstrap, normalised, then
// made into an image by FromDir.
func assemble(ctx context.Context, phase *progress.Phase, suite string, pkgs []string, name, dir, imagePath string) (*job.Toolchain, error) {
	sources, err := findSourcesFile(suite)
	if err != nil {
		return nil, fmt.Errorf("build toolchain: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("build toolchain: %w", err)
	}
	work, err := os.MkdirTemp(dir, ".root-")
	if err != nil {
		return nil, fmt.Errorf("build toolchain: %w", err)
	}
	defer os.RemoveAll(work)
	root := filepath.Join(work, "root")
	phase.Step(fmt.Sprintf("mmdebstrap: installing %d packages and their dependencies", len(pkgs)))
	cmd := exec.CommandContext(ctx, "mmdebstrap", "--quiet", "--variant=apt", "--format=directory",
		"--include="+strings.Join(pkgs, ","), suite, root, sources)
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH="+sourceDateEpoch, "LC_ALL=C")
	if out, err := cmd.CombinedOutput(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return nil, fmt.Errorf("build toolchain: mmdebstrap not found (see scripts/install-deps.sh): %w", err)
		}
		return nil, fmt.Errorf("build toolchain: mmdebstrap %s: %w: %s", suite, err, tail(out))
	}
	if err := normaliseRoot(root); err != nil {
		return nil, fmt.Errorf("build toolchain: %w", err)
	}
	phase.Step("making the image")
	tc, err := FromDir(ctx, root, imagePath, name)
	if err != nil {
		return nil, fmt.Errorf("build toolchain: %w", err)
	}
	return tc, nil
}

// hostFiles are files mmdebstrap copies from the host into the new root. They would make
// the image depend on (and reveal) the machine that built it, so they get fixed contents: a
// neutral host name, and no name servers (the build has no network).
var hostFiles = map[string]string{
	"etc/hostname":    "cloche\n",
	"etc/resolv.conf": "",
}

func normaliseRoot(root string) error {
	for rel, content := range hostFiles {
		p := filepath.Join(root, filepath.FromSlash(rel))
		// Remove first: the file may be a symlink that points outside the root.
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("normalise %s: %w", rel, err)
		}
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return fmt.Errorf("normalise %s: %w", rel, err)
		}
		_, err = f.WriteString(content)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Chmod(p, 0o644)
		}
		if err != nil {
			return fmt.Errorf("normalise %s: %w", rel, err)
		}
	}
	return nil
}

func cacheKey(suite string, sortedPkgs []string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n", formatVersion, suite, strings.Join(sortedPkgs, "\n"))
	return hex.EncodeToString(h.Sum(nil))
}

// findSourcesFile returns the host's apt sources file that has an enabled "deb" entry for
// suite; mmdebstrap pastes it into the new root's sources, so no mirror is named here.
func findSourcesFile(suite string) (string, error) {
	var candidates []string
	if m, _ := filepath.Glob(filepath.Join(aptSourcesDir, "*.sources")); m != nil {
		candidates = append(candidates, m...)
	}
	candidates = append(candidates, aptSourcesList)
	if m, _ := filepath.Glob(filepath.Join(aptSourcesDir, "*.list")); m != nil {
		candidates = append(candidates, m...)
	}
	for _, c := range candidates {
		ok, err := hasSuite(c, suite)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return "", err
		}
		if ok {
			return c, nil
		}
	}
	return "", fmt.Errorf("no apt source file in %s or %s has a deb entry for suite %q", aptSourcesList, aptSourcesDir, suite)
}

// hasSuite reports whether an apt sources file (deb822 when it ends in .sources, one-line
// otherwise) has an enabled "deb" entry for suite.
func hasSuite(path, suite string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if strings.HasSuffix(path, ".sources") {
		var types, suites []string
		enabled := true
		flush := func() bool {
			ok := enabled && slices.Contains(types, "deb") && slices.Contains(suites, suite)
			types, suites, enabled = nil, nil, true
			return ok
		}
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if strings.HasPrefix(line, "#") {
				continue
			}
			if line == "" {
				if flush() {
					return true, nil
				}
				continue
			}
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			switch strings.ToLower(strings.TrimSpace(k)) {
			case "types":
				types = strings.Fields(v)
			case "suites":
				suites = strings.Fields(v)
			case "enabled":
				enabled = !strings.EqualFold(strings.TrimSpace(v), "no")
			}
		}
		return flush(), sc.Err()
	}
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || fields[0] != "deb" {
			continue
		}
		rest := fields[1:]
		if strings.HasPrefix(rest[0], "[") {
			for len(rest) > 0 && !strings.HasSuffix(rest[0], "]") {
				rest = rest[1:]
			}
			if len(rest) > 0 {
				rest = rest[1:]
			}
		}
		if len(rest) >= 2 && rest[1] == suite {
			return true, nil
		}
	}
	return false, sc.Err()
}

// BusyboxApplets are the commands MakeBusyboxRoot links to busybox.
var BusyboxApplets = []string{
	"sh", "echo", "cat", "sleep", "true", "false", "cp", "mkdir", "dd", "head", "yes",
	"ls", "rm", "mv", "test", "[", "env", "printf", "sha256sum", "wc", "tr", "sed", "grep", "tail",
}

// MakeBusyboxRoot fills dest with the host's static busybox as /bin/busybox and a symlink
// per applet in BusyboxApplets, plus the guest's mount points: a small toolchain for fast
// tests.
func MakeBusyboxRoot(dest string) error {
	bb, err := busybox.Find()
	if err != nil {
		return fmt.Errorf("busybox root: %w", err)
	}
	have, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox root: %s --list: %w", bb, err)
	}
	applets := strings.Fields(string(have))
	for _, a := range BusyboxApplets {
		if !slices.Contains(applets, a) {
			return fmt.Errorf("busybox root: %s has no %q applet", bb, a)
		}
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		return fmt.Errorf("busybox root: %w", err)
	}
	// Modes are set explicitly: they end up in the image, which must not depend on umask.
	for _, d := range append([]string{".", "bin"}, MountPoints...) {
		p := filepath.Join(dest, d)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("busybox root: %w", err)
		}
		if err := os.Chmod(p, 0o755); err != nil {
			return fmt.Errorf("busybox root: %w", err)
		}
	}
	bin := filepath.Join(dest, "bin", "busybox")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		return fmt.Errorf("busybox root: %w", err)
	}
	if err := os.Chmod(bin, 0o755); err != nil {
		return fmt.Errorf("busybox root: %w", err)
	}
	for _, a := range BusyboxApplets {
		link := filepath.Join(dest, "bin", a)
		if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("busybox root: %w", err)
		}
		if err := os.Symlink("busybox", link); err != nil {
			return fmt.Errorf("busybox root: %w", err)
		}
	}
	return nil
}
