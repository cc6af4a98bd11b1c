package guest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"

	"github.com/cloche-dev/cloche/internal/npmlock"
	"github.com/cloche-dev/cloche/job"
)

// The npm dependency disk holds the content files of an npm cache (cacache's
// _cacache/content-v2), which npm names by their integrity digest. The guest checks each
// package the source's package-lock.json fetches against the integrity the lockfile gives
// it: the content file of that digest must be on the disk and hash to it. Nothing else
// may be on the disk (no cache index, no registry metadata), so npm, pointed at it
// offline, installs only checked tarballs, and checks their integrity once more itself.

// ErrPackageMismatch: an npm package on the dependency disk is missing or is not the one
// package-lock.json names.
var ErrPackageMismatch = errors.New("dependency package does not match package-lock.json")

// npmDepsEnv points npm at the checked cache, offline. The build command decides
// everything else (scripts, what to install); the manifest may set no npm_config_
// variable (job.Manifest.Validate).
func npmDepsEnv() []string {
	return []string{
		"npm_config_cache=" + DepsDir,
		"npm_config_offline=true",
		// The cache is read-only: npm's logs go to the writable /tmp.
		"npm_config_logs_dir=/tmp/npm-logs",
		"npm_config_update_notifier=false",
		"npm_config_audit=false",
		"npm_config_fund=false",
	}
}

// verifyNPMDisk reads the source's lockfile and checks the unpacked dependency disk dir
// against it.
func verifyNPMDisk(dir, lockfile string, log *slog.Logger) ([]job.Package, error) {
	data, err := readCapped(lockfile, npmlock.MaxSize)
	if err != nil {
		return nil, fmt.Errorf("the source's lockfile: %w", err)
	}
	lf, err := npmlock.Parse(data)
	if err != nil {
		return nil, err
	}
	return VerifyNPMPackages(dir, lf, log)
}

// VerifyNPMPackages checks every package lf fetches (npmlock.Lockfile.Fetched, in path
// order) against the npm cache directory dir: the content file of the strongest hash of
// its integrity (sha1 only when the lockfile gives nothing stronger, with a warning) must
// be there and hash to it. The first package that has no integrity, whose content file is
// missing or whose bytes do not match is the error (wrapping ErrPackageMismatch), naming
// its lockfile path and NAME@VERSION; an optional package (which npm skips on other
// platforms) may be missing. Then every file in dir must be one of the checked content
// files. It returns the checked packages sorted by name and version, each once.
func VerifyNPMPackages(dir string, lf *npmlock.Lockfile, log *slog.Logger) ([]job.Package, error) {
	checked := map[string]bool{}
	pkgs := map[string]job.Package{}
	for _, e := range lf.Fetched() {
		if e.Integrity == "" {
			return nil, fmt.Errorf("%w: package %s is resolved from %s with no integrity in the lockfile: nothing to check it against", ErrPackageMismatch, e, e.Resolved)
		}
		h, err := npmlock.Strongest(e.Integrity)
		if err != nil {
			return nil, fmt.Errorf("%w: package %s: %w", ErrPackageMismatch, e, err)
		}
		if h.Algorithm == "sha1" {
			log.Warn("the lockfile gives only a sha1 integrity for a package: it is checked against that weak hash", "package", e.String())
		}
		rel := h.ContentPath()
		err = checkContentFile(filepath.Join(dir, filepath.FromSlash(rel)), h)
		switch {
		case errors.Is(err, fs.ErrNotExist) && e.Optional:
			log.Info("an optional package is not on the dependency disk (npm skips it here)", "package", e.String())
			continue
		case errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("%w: package %s: its content %s is not on the dependency disk", ErrPackageMismatch, e, rel)
		case err != nil:
			return nil, fmt.Errorf("%w: package %s: %w", ErrPackageMismatch, e, err)
		}
		checked[rel] = true
		p := job.Package{Name: e.Name, Version: e.Version, Integrity: h.SRI(), Resolved: e.Resolved}
		key := e.Name + "@" + e.Version
		if prev, ok := pkgs[key]; ok && prev != p {
			return nil, fmt.Errorf("%w: package %s@%s is in the lockfile twice, with different integrity or resolved location (at %s)", ErrPackageMismatch, e.Name, e.Version, e.Path)
		}
		pkgs[key] = p
	}
	if err := onlyCheckedContent(dir, checked); err != nil {
		return nil, err
	}
	out := make([]job.Package, 0, len(pkgs))
	for _, p := range pkgs {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].Version < out[j].Version
	})
	if len(out) > job.MaxModules {
		return nil, fmt.Errorf("the lockfile names %d packages, more than a result record lists (%d)", len(out), job.MaxModules)
	}
	return out, nil
}

// checkContentFile checks that p is a regular file whose bytes hash to h.
func checkContentFile(p string, h npmlock.Hash) error {
	st, err := os.Lstat(p)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("its content on the dependency disk is not a regular file")
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	hh, err := npmlock.NewHash(h.Algorithm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(hh, f); err != nil {
		return fmt.Errorf("hashing its content: %w", err)
	}
	if got := hh.Sum(nil); !bytes.Equal(got, h.Digest) {
		return fmt.Errorf("its content on the dependency disk hashes to %s-%x, the lockfile says %s", h.Algorithm, got, h.SRI())
	}
	return nil
}

// onlyCheckedContent refuses any file in dir that is not a checked content file: nothing
// unchecked (a cache index, registry metadata, another tarball) reaches the build.
func onlyCheckedContent(dir string, checked map[string]bool) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if rel = filepath.ToSlash(rel); !d.Type().IsRegular() || !checked[rel] {
			return fmt.Errorf("%w: the dependency disk holds %s, which is no content file of a package the lockfile names (only checked packages may reach the build)", ErrPackageMismatch, rel)
		}
		return nil
	})
}
