package guest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// KernelPackage is the metapackage whose dependency names the kernel image the guest boots:
// bookworm-backports' cloud kernel (6.12) has the SEV-SNP and TDX guest drivers and
// configfs-tsm as modules, Debian 12's own kernel does not.
const KernelPackage = "linux-image-cloud-amd64"

// KernelSuite is the apt release KernelPackage is taken from.
const KernelSuite = "bookworm-backports"

// Limits on what is read from the kernel package and from tools' output.
const (
	maxKernelSize   = 64 << 20
	maxModuleSize   = 32 << 20
	maxAgentSize    = 512 << 20
	maxToolOutput   = 1 << 20
	maxModuleCount  = 64
	maxModinfoDepth = 16
)

// debName matches the versioned image package that KernelPackage depends on, with its exact
// version: "linux-image-6.12.95+deb12-cloud-amd64 (= 6.12.95-1~bpo12+1)".
var debDependency = regexp.MustCompile(`^(linux-image-[a-z0-9.+~-]+) \(= ([A-Za-z0-9.+~:-]+)\)$`)

// FetchKernelDeb downloads the versioned kernel image package that KernelPackage from
// KernelSuite depends on into cacheDir and returns its path. A cached .deb of the wanted
// version is reused without touching the network. apt checks the download against the
// signed package index, so the cached file is as trustworthy as the host's apt keyring.
func FetchKernelDeb(ctx context.Context, cacheDir string) (string, error) {
	if cacheDir == "" {
		return "", errors.New("fetch kernel package: empty cache directory")
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("fetch kernel package: %w", err)
	}
	name, version, err := resolveKernelPackage(ctx)
	if err != nil {
		// Without apt metadata (offline host, suite not configured) a single cached
		// kernel package is still usable: its name and version are read from the file.
		cached, _ := filepath.Glob(filepath.Join(cacheDir, "linux-image-*-cloud-amd64_*.deb"))
		if len(cached) == 1 {
			slog.WarnContext(ctx, "cannot resolve the kernel package with apt; using the cached one",
				"err", err, "deb", cached[0])
			return cached[0], nil
		}
		return "", fmt.Errorf("fetch kernel package: %w", err)
	}
	// apt-get download names files name_version_arch.deb with ':' escaped as %3a.
	want := filepath.Join(cacheDir, fmt.Sprintf("%s_%s_amd64.deb", name, strings.ReplaceAll(version, ":", "%3a")))
	if _, err := os.Stat(want); err == nil {
		if err := checkDebIdentity(ctx, want, name, version); err != nil {
			return "", fmt.Errorf("cached kernel package: %w", err)
		}
		return want, nil
	}

	tmp, err := os.MkdirTemp(cacheDir, ".download-")
	if err != nil {
		return "", fmt.Errorf("fetch kernel package: %w", err)
	}
	defer os.RemoveAll(tmp)
	slog.InfoContext(ctx, "downloading kernel package", "package", name, "version", version)
	cmd := exec.CommandContext(ctx, "apt-get", "-q", "download", name+"="+version)
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download %s=%s: %w: %s", name, version, err, tail(out))
	}
	got, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(got) != 1 {
		return "", fmt.Errorf("apt-get download %s=%s left %d .deb files, expected 1", name, version, len(got))
	}
	if err := checkDebIdentity(ctx, got[0], name, version); err != nil {
		return "", fmt.Errorf("downloaded kernel package: %w", err)
	}
	if err := os.Rename(got[0], want); err != nil {
		return "", fmt.Errorf("fetch kernel package: %w", err)
	}
	return want, nil
}

// resolveKernelPackage reads (from the local apt cache, no network) which versioned image
// package KernelPackage in KernelSuite depends on.
func resolveKernelPackage(ctx context.Context) (name, version string, err error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "show", "--no-all-versions", KernelPackage+"/"+KernelSuite).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", "", fmt.Errorf("apt-cache show %s/%s: %w: %s (is %s configured? run scripts/install-deps.sh)",
				KernelPackage, KernelSuite, err, tail(ee.Stderr), KernelSuite)
		}
		return "", "", fmt.Errorf("apt-cache show %s/%s: %w", KernelPackage, KernelSuite, err)
	}
	for line := range strings.SplitSeq(string(out), "\n") {
		deps, ok := strings.CutPrefix(line, "Depends:")
		if !ok {
			continue
		}
		for dep := range strings.SplitSeq(deps, ",") {
			if m := debDependency.FindStringSubmatch(strings.TrimSpace(dep)); m != nil {
				return m[1], m[2], nil
			}
		}
	}
	return "", "", fmt.Errorf("apt-cache show %s/%s: no \"linux-image-* (= version)\" dependency found", KernelPackage, KernelSuite)
}

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

func checkDebIdentity(ctx context.Context, deb, name, version string) error {
	gotName, gotVersion, err := debFields(ctx, deb)
	if err != nil {
		return err
	}
	if gotName != name || gotVersion != version {
		return fmt.Errorf("%s is %s %s, expected %s %s", deb, gotName, gotVersion, name, version)
	}
	return nil
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
