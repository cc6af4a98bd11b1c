package guestimage

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cloche-dev/cloche/internal/fileio"
)

// KernelPin is the kernel image package every guest image is built from, by name, version
// and the SHA-256 of the .deb: the kernel is part of the launch measurement, so two hosts
// building the same cloche must boot the same kernel bytes (docs/design.md, "one
// measurement per guest release"). It is bookworm-backports' cloud kernel (6.12), which has
// the SEV-SNP and TDX guest drivers and configfs-tsm as modules; Debian 12's own kernel
// does not. Moving to a new kernel is a change of these three values.
func KernelPin() KernelPackagePin {
	return KernelPackagePin{
		Name:    "linux-image-6.12.95+deb12-cloud-amd64",
		Version: "6.12.95-1~bpo12+1",
		SHA256:  "69c92f43b23821de79576fa4d7c86e2924ae2c1b247a47cc5ed9339e220fbcb7",
	}
}

// KernelPackagePin names one exact kernel image package.
type KernelPackagePin struct {
	Name, Version string
	SHA256        string // of the .deb file
}

// FileName is the name apt-get download gives the .deb (':' in the version escaped as %3a).
func (p KernelPackagePin) FileName() string {
	return fmt.Sprintf("%s_%s_amd64.deb", p.Name, strings.ReplaceAll(p.Version, ":", "%3a"))
}

// ErrKernelUnavailable is wrapped when the pinned kernel package is neither cached nor
// served by this machine's apt sources (the archive dropped the version): the caller
// then has to supply the .deb itself.
var ErrKernelUnavailable = errors.New("the pinned kernel package is not available from apt")

// ErrKernelPin is wrapped when a kernel package is not the pinned one.
var ErrKernelPin = errors.New("kernel package does not match the pin")

// FetchKernelDeb returns the path of the pinned kernel package (KernelPin()) in cacheDir,
// downloading it with apt-get when it is not cached. Both the cached and the downloaded
// file must have the pinned SHA-256, so the result does not depend on what the archive
// serves today.
func FetchKernelDeb(ctx context.Context, cacheDir string) (string, error) {
	return fetchKernelDeb(ctx, cacheDir, KernelPin())
}

func fetchKernelDeb(ctx context.Context, cacheDir string, pin KernelPackagePin) (string, error) {
	if cacheDir == "" {
		return "", errors.New("fetch kernel package: empty cache directory")
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("fetch kernel package: %w", err)
	}
	want := filepath.Join(cacheDir, pin.FileName())
	if _, err := os.Stat(want); err == nil {
		if err := CheckKernelDeb(want, pin); err != nil {
			return "", fmt.Errorf("cached kernel package: %w (remove it to download it again)", err)
		}
		return want, nil
	}

	tmp, err := os.MkdirTemp(cacheDir, ".download-")
	if err != nil {
		return "", fmt.Errorf("fetch kernel package: %w", err)
	}
	defer os.RemoveAll(tmp)
	// No log line here: the caller's progress phase ("kernel package") says what runs,
	// through the caller's logger (this package has none of its own).
	cmd := exec.CommandContext(ctx, "apt-get", "-q", "download", pin.Name+"="+pin.Version)
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%w: apt-get download %s=%s: %v: %s (the kernel package with SHA-256 %s is needed)",
			ErrKernelUnavailable, pin.Name, pin.Version, err, tail(out), pin.SHA256)
	}
	got := filepath.Join(tmp, pin.FileName())
	if err := CheckKernelDeb(got, pin); err != nil {
		return "", fmt.Errorf("downloaded kernel package: %w", err)
	}
	if err := os.Rename(got, want); err != nil {
		return "", fmt.Errorf("fetch kernel package: %w", err)
	}
	return want, nil
}

// CheckKernelDeb checks that deb is the pinned package: its SHA-256 equals the pin's
// (which fixes name and version too).
func CheckKernelDeb(deb string, pin KernelPackagePin) error {
	sum, _, err := fileio.SHA256(deb)
	if err != nil {
		return fmt.Errorf("kernel package: %w", err)
	}
	if sum != pin.SHA256 {
		return fmt.Errorf("%w: %s has SHA-256 %s, the pinned %s %s has %s", ErrKernelPin, deb, sum, pin.Name, pin.Version, pin.SHA256)
	}
	return nil
}

// Limits on what is read from the kernel package and from tools' output.
const (
	maxKernelSize   = 64 << 20
	maxModuleSize   = 32 << 20
	maxInitSize     = 512 << 20
	maxToolOutput   = 1 << 20
	maxModuleCount  = 64
	maxModinfoDepth = 16
)

// debFields reads the Package and Version control fields of a .deb.
func debFields(ctx context.Context, deb string) (name, version string, err error) {
	out, err := exec.CommandContext(ctx, "dpkg-deb", "--showformat=${Package}\n${Version}\n", "--show", deb).Output()
	if err != nil {
		return "", "", fmt.Errorf("dpkg-deb --show %s: %w", deb, exitDetail(err))
	}
	fields := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(fields) != 2 || fields[0] == "" || fields[1] == "" {
		return "", "", fmt.Errorf("dpkg-deb --show %s: unexpected output %q", deb, tail(out))
	}
	return fields[0], fields[1], nil
}

// extractedKernel is an unpacked kernel image package.
type extractedKernel struct {
	version    string // e.g. 6.12.95+deb12-cloud-amd64
	vmlinuz    string // path of boot/vmlinuz-<version>
	modulesDir string // path of lib/modules/<version>
}

// extractKernel unpacks deb into dir and locates the kernel and its modules.
func extractKernel(ctx context.Context, deb, dir string) (*extractedKernel, error) {
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("dpkg-deb -x %s: %w: %s", deb, err, tail(out))
	}
	kernels, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		return nil, fmt.Errorf("kernel package %s holds %d boot/vmlinuz-* files, expected 1", deb, len(kernels))
	}
	version := strings.TrimPrefix(filepath.Base(kernels[0]), "vmlinuz-")
	modulesDir := filepath.Join(dir, "lib", "modules", version)
	if fi, err := os.Stat(modulesDir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("kernel package %s has no lib/modules/%s directory", deb, version)
	}
	return &extractedKernel{version: version, vmlinuz: kernels[0], modulesDir: modulesDir}, nil
}

// moduleName normalises a module or file name the way the kernel does: no directory, no
// .ko/.ko.xz/... suffix, '-' and '_' equivalent (the kernel uses '_').
func moduleName(s string) string {
	s = filepath.Base(s)
	if i := strings.Index(s, ".ko"); i >= 0 {
		s = s[:i]
	}
	return strings.ReplaceAll(s, "-", "_")
}

// moduleIndex maps module names to their paths relative to the modules directory.
type moduleIndex struct {
	dir     string
	paths   map[string]string // name -> relative path, e.g. kernel/drivers/md/dm-mod.ko.xz
	builtin map[string]bool
}

func indexModules(modulesDir string) (*moduleIndex, error) {
	idx := &moduleIndex{dir: modulesDir, paths: map[string]string{}, builtin: map[string]bool{}}
	err := filepath.WalkDir(modulesDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() || !isModuleFile(d.Name()) {
			return nil
		}
		rel, err := filepath.Rel(modulesDir, p)
		if err != nil {
			return err
		}
		name := moduleName(d.Name())
		if prev, dup := idx.paths[name]; dup {
			return fmt.Errorf("module %s found twice: %s and %s", name, prev, rel)
		}
		idx.paths[name] = filepath.ToSlash(rel)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules in %s: %w", modulesDir, err)
	}
	// modules.builtin lists what is compiled into the kernel: asking for such a module
	// is not an error, there is just nothing to load.
	if b, err := os.ReadFile(filepath.Join(modulesDir, "modules.builtin")); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if line = strings.TrimSpace(line); line != "" {
				idx.builtin[moduleName(line)] = true
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read modules.builtin: %w", err)
	}
	return idx, nil
}

func isModuleFile(name string) bool {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(name, ext) {
			return true
		}
	}
	return false
}

// moduleDepends reads a module's "depends=" from its .modinfo section with kmod's modinfo,
// which handles the compressed module formats.
func moduleDepends(ctx context.Context, path string) ([]string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "modinfo", "-F", "depends", path)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return nil, fmt.Errorf("modinfo not found (install kmod, see scripts/install-deps.sh): %w", err)
		}
		return nil, fmt.Errorf("modinfo -F depends %s: %w: %s", path, err, tail(stderr.Bytes()))
	}
	if stdout.Len() > maxToolOutput {
		return nil, fmt.Errorf("modinfo -F depends %s: output of %d bytes exceeds the limit", path, stdout.Len())
	}
	var deps []string
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		for d := range strings.SplitSeq(sc.Text(), ",") {
			if d = strings.TrimSpace(d); d != "" {
				deps = append(deps, moduleName(d))
			}
		}
	}
	return deps, nil
}

// moduleClosure returns the loadable modules needed for want, dependencies before the
// modules that use them. The order is fixed by want's order and each module's depends list
// (sorted), so the same inputs always give the same list.
func moduleClosure(ctx context.Context, idx *moduleIndex, want []string) ([]string, error) {
	var order []string
	state := map[string]int{} // 0 unseen, 1 visiting, 2 done
	var visit func(name string, depth int, from string) error
	visit = func(name string, depth int, from string) error {
		switch state[name] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle through %s", name)
		}
		if depth > maxModinfoDepth {
			return fmt.Errorf("module dependency chain deeper than %d at %s", maxModinfoDepth, name)
		}
		rel, ok := idx.paths[name]
		if !ok {
			if idx.builtin[name] {
				state[name] = 2
				return nil
			}
			if from != "" {
				return fmt.Errorf("module %s (needed by %s) is neither in the kernel package nor built in", name, from)
			}
			return fmt.Errorf("module %s is neither in the kernel package nor built in", name)
		}
		state[name] = 1
		deps, err := moduleDepends(ctx, filepath.Join(idx.dir, rel))
		if err != nil {
			return err
		}
		slices.Sort(deps)
		for _, d := range deps {
			if err := visit(d, depth+1, name); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, name)
		if len(order) > maxModuleCount {
			return fmt.Errorf("module closure exceeds %d modules", maxModuleCount)
		}
		return nil
	}
	for _, w := range want {
		if err := visit(moduleName(w), 0, ""); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// tail returns the last part of a tool's output for an error message.
func tail(b []byte) string {
	const n = 2000
	s := strings.TrimSpace(string(b))
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}

func exitDetail(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%w: %s", err, tail(ee.Stderr))
	}
	return err
}
