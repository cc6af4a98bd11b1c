package guest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/mod/module"
	"golang.org/x/mod/sumdb/dirhash"

	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/source"
)

// The dependency disk (job.Manifest.Deps) is the host's: its archive digest is bound at
// launch, but the host chose what went into it. What makes it safe to build from is the
// check here, before the command runs, of every module on it against the go.sum of the
// attested source, with `go mod verify`'s hashes: the h1: dirhash of each zip and of
// each go.mod. The build then reads modules only through a GOPROXY on that checked tree.

// DepsDir is where the checked dependencies are in the build root, read-only to the build.
const DepsDir = "/deps"

// depsProxyDir is the module proxy tree inside DepsDir (the GOPROXY of the build).
const depsProxyDir = DepsDir + "/cache/download"

// depsGoModCache is the build's writable module cache: go extracts the checked zips there.
const depsGoModCache = "/tmp/gomodcache"

// maxGoSumSize and maxGoModSize bound what is read into memory from the source and the disk.
const (
	maxGoSumSize = 16 << 20
	maxGoModSize = 16 << 20
)

// ErrModuleMismatch: a module on the dependency disk is not the one go.sum names.
var ErrModuleMismatch = errors.New("dependency module does not match go.sum")

// depsEnv is the environment that points go (or npm) at the checked dependencies and
// nowhere else.
func depsEnv(m *job.Manifest) []string {
	if m.Deps == nil {
		return nil
	}
	if m.Deps.Kind == job.DepsNPM {
		return npmDepsEnv()
	}
	return []string{
		"GOPROXY=file://" + depsProxyDir,
		"GOFLAGS=-mod=readonly",
		"GOSUMDB=off",
		"GONOSUMDB=",
		"GOMODCACHE=" + depsGoModCache,
		"GOTOOLCHAIN=local",
		// No go.env file or workspace can change the settings above (the manifest may
		// not set these either: job.Manifest.Validate).
		"GOENV=off",
		"GOWORK=off",
	}
}

// prepareDeps unpacks the dependency disk into the build root and checks every module
// (or npm package) on it against the source's lockfile, recording them in the result
// record.
func (a *initRun) prepareDeps(ctx context.Context, root *BuildRoot, st *buildState) error {
	m := st.manifest
	if m.Deps == nil {
		return nil
	}
	dir := filepath.Join(root.Dir, filepath.FromSlash(DepsDir))
	if err := a.doStep("unpacking the dependency disk", func() error {
		return unpackDeps(ctx, a.cfg.SysRoot, a.cfg.DevRoot, m.Deps, dir)
	}); err != nil {
		return err
	}
	lockfile := filepath.Join(root.Src, filepath.FromSlash(m.Deps.Lockfile))
	if m.Deps.Kind == job.DepsNPM {
		var pkgs []job.Package
		if err := a.doStep("checking the npm packages against "+m.Deps.Lockfile, func() (err error) {
			pkgs, err = verifyNPMDisk(dir, lockfile, a.log)
			return err
		}); err != nil {
			return err
		}
		a.update(func(st *buildState) { st.result.Packages = pkgs })
		a.log.Info("dependency packages checked against package-lock.json", "packages", len(pkgs))
		return nil
	}
	var mods []job.Module
	if err := a.doStep("checking the dependency modules against "+m.Deps.Lockfile, func() error {
		if err := onlyModuleCache(dir); err != nil {
			return err
		}
		sums, err := readGoSum(lockfile)
		if err != nil {
			return err
		}
		mods, err = VerifyGoModules(filepath.Join(dir, "cache", "download"), sums)
		return err
	}); err != nil {
		return err
	}
	a.update(func(st *buildState) { st.result.Modules = mods })
	a.log.Info("dependency modules checked against go.sum", "modules", len(mods))
	return nil
}

// unpackDeps finds the dependency disk and unpacks its archive into dir (owned by root,
// so the build cannot change a checked dependency).
func unpackDeps(ctx context.Context, sysRoot, devRoot string, deps *job.Deps, dir string) error {
	disks, err := FindDisks(sysRoot, devRoot, SerialDeps)
	if err != nil {
		return err
	}
	f, size, err := OpenBlockDevice(disks[SerialDeps], os.O_RDONLY)
	if err != nil {
		return err
	}
	defer f.Close()
	if size < deps.ArchiveSize {
		return fmt.Errorf("the dependency disk is %d bytes, smaller than the manifest's archive of %d bytes", size, deps.ArchiveSize)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s in the build root: %w", DepsDir, err)
	}
	return source.Unpack(ctx, io.NewSectionReader(f, 0, deps.ArchiveSize), deps.ArchiveSHA256, deps.ArchiveSize, dir, source.DefaultLimits(), 0, 0, false)
}

// onlyModuleCache refuses a dependency archive with anything beside cache/download, the
// module proxy tree that is checked against go.sum: nothing unchecked reaches the build.
func onlyModuleCache(dir string) error {
	for _, d := range []struct{ dir, want string }{{dir, "cache"}, {filepath.Join(dir, "cache"), "download"}} {
		entries, err := os.ReadDir(d.dir)
		if errors.Is(err, os.ErrNotExist) && d.dir != dir {
			return nil // no modules at all
		}
		if err != nil {
			return fmt.Errorf("the dependency archive: %w", err)
		}
		for _, e := range entries {
			if e.Name() != d.want || !e.IsDir() {
				rel, _ := filepath.Rel(dir, filepath.Join(d.dir, e.Name()))
				return fmt.Errorf("%w: the dependency archive holds %s, outside cache/download (only checked modules may reach the build)", ErrModuleMismatch, filepath.ToSlash(rel))
			}
		}
	}
	return nil
}

// readGoSum reads a go.sum into a map from "MODULE VERSION" (and "MODULE VERSION/go.mod")
// to its hash. A malformed line is an error: go would refuse it too.
func readGoSum(p string) (map[string]string, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("the source's lockfile: %w", err)
	}
	defer f.Close()
	sums := map[string]string{}
	sc := bufio.NewScanner(io.LimitReader(f, maxGoSumSize))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 3 {
			return nil, fmt.Errorf("%s:%d: expected MODULE VERSION HASH, got %q", p, n, sc.Text())
		}
		sums[fields[0]+" "+fields[1]] = fields[2]
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", p, err)
	}
	return sums, nil
}

// proxyEntry is one file of a module proxy tree: MODULE/@v/VERSION.EXT, unescaped.
type proxyEntry struct {
	mod, version, ext string
}

// parseProxyPath reads a path relative to a module proxy tree's root.
func parseProxyPath(rel string) (proxyEntry, error) {
	escMod, file, ok := strings.Cut(rel, "/@v/")
	ext := path.Ext(file)
	if !ok || strings.Contains(file, "/") || (ext != ".mod" && ext != ".zip" && ext != ".info") {
		return proxyEntry{}, fmt.Errorf("the dependency disk holds %s, which is no module proxy file (MODULE/@v/VERSION.mod, .zip or .info)", rel)
	}
	mod, err := module.UnescapePath(escMod)
	if err != nil {
		return proxyEntry{}, fmt.Errorf("the dependency disk holds %s: %w", rel, err)
	}
	version, err := module.UnescapeVersion(strings.TrimSuffix(file, ext))
	if err != nil {
		return proxyEntry{}, fmt.Errorf("the dependency disk holds %s: %w", rel, err)
	}
	if err := module.Check(mod, version); err != nil {
		return proxyEntry{}, fmt.Errorf("the dependency disk holds %s: %w", rel, err)
	}
	return proxyEntry{mod: mod, version: version, ext: ext}, nil
}

// VerifyGoModules checks every module of the module proxy tree dir against sums (go.sum):
// each zip's h1: hash against "MODULE VERSION", each go.mod's against "MODULE
// VERSION/go.mod", as `go mod verify` does. Files are taken in lexical order, and the first
// that is not in go.sum or does not match is the error (wrapping ErrModuleMismatch), naming
// the module. It returns the checked modules sorted by path and version.
func VerifyGoModules(dir string, sums map[string]string) ([]job.Module, error) {
	mods := map[string]*job.Module{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("the dependency disk holds %s, which is not a regular file", rel)
		}
		e, err := parseProxyPath(filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		if e.ext == ".info" {
			return nil // the version's time: served as it is, nothing is built from it
		}
		key := e.mod + " " + e.version
		if mods[key] == nil {
			mods[key] = &job.Module{Path: e.mod, Version: e.version}
		}
		return verifyProxyFile(p, e, sums, mods[key])
	})
	if err != nil {
		return nil, err
	}
	return sortedModules(mods)
}

// verifyProxyFile checks one .zip or .mod against go.sum and records its digests in mod.
func verifyProxyFile(p string, e proxyEntry, sums map[string]string, mod *job.Module) error {
	var got, key string
	var sum string
	var err error
	switch e.ext {
	case ".zip":
		key = e.mod + " " + e.version
		if got, err = dirhash.HashZip(p, dirhash.Hash1); err != nil {
			return fmt.Errorf("%w: module %s@%s: hashing its zip: %w", ErrModuleMismatch, e.mod, e.version, err)
		}
		if sum, err = fileSHA256(p); err != nil {
			return err
		}
		mod.ZipH1, mod.ZipSHA256 = got, sum
	case ".mod":
		key = e.mod + " " + e.version + "/go.mod"
		if got, sum, err = hashGoMod(p); err != nil {
			return fmt.Errorf("module %s@%s: %w", e.mod, e.version, err)
		}
		mod.ModH1, mod.ModSHA256 = got, sum
	}
	want, ok := sums[key]
	switch {
	case !ok:
		return fmt.Errorf("%w: module %s@%s (%s) is on the dependency disk but not in go.sum", ErrModuleMismatch, e.mod, e.version, e.ext)
	case got != want:
		return fmt.Errorf("%w: module %s@%s: the %s on the dependency disk hashes to %s, go.sum says %s", ErrModuleMismatch, e.mod, e.version, e.ext, got, want)
	}
	return nil
}

// hashGoMod is go.sum's "/go.mod" hash of a go.mod file (dirhash.Hash1 over the one file
// named go.mod) and the file's SHA-256.
func hashGoMod(p string) (h1, sum string, err error) {
	data, err := readCapped(p, maxGoModSize)
	if err != nil {
		return "", "", err
	}
	h1, err = dirhash.Hash1([]string{"go.mod"}, func(string) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
	if err != nil {
		return "", "", err
	}
	s := sha256.Sum256(data)
	return h1, hex.EncodeToString(s[:]), nil
}

func readCapped(p string, limit int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", p, limit)
	}
	return data, nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hashing %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// sortedModules returns the modules sorted by path and version; every module must have
// its go.mod (a zip alone cannot take part in the module graph).
func sortedModules(mods map[string]*job.Module) ([]job.Module, error) {
	out := make([]job.Module, 0, len(mods))
	for _, m := range mods {
		if m.ModH1 == "" {
			return nil, fmt.Errorf("%w: module %s@%s has no go.mod on the dependency disk", ErrModuleMismatch, m.Path, m.Version)
		}
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Path != out[j].Path {
			return out[i].Path < out[j].Path
		}
		return out[i].Version < out[j].Version
	})
	return out, nil
}
