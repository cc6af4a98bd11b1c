package build

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"

	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/source"
)

// The dependency path (Spec.Deps): the host fetches what the lockfile names and packs it
// onto a disk of its own. The host is untrusted here as everywhere: the guest checks every
// module (or npm package) against the go.sum (package-lock.json) in the attested source
// before the build, so what is fetched here only decides whether a build can run, never
// what it builds from.

// depsDownloadDir is the module proxy tree inside GOMODCACHE that goes onto the disk.
const depsDownloadDir = "cache/download"

// goLockfiles are the files a Go module needs for its dependencies to be fetched and
// checked, relative to Workdir.
var goLockfiles = []string{"go.mod", "go.sum"}

// CheckDeps checks spec.Deps against the source in sourceDir as Run will (a known kind,
// its lockfile present), for callers that read the job before anything slow happens.
func CheckDeps(spec job.Spec, sourceDir string) error {
	return (&Options{Spec: spec, SourceDir: sourceDir}).checkDeps()
}

// checkDeps checks Options.Deps and that the lockfile it names is in the source, before
// anything slow happens.
func (o *Options) checkDeps() error {
	var lockfiles []string
	switch o.Deps {
	case "":
		return nil
	case job.DepsGo:
		lockfiles = goLockfiles
	case job.DepsNPM:
		lockfiles = npmLockfiles
	default:
		return inputErr("Deps", fmt.Sprintf("%q", o.Deps), "expected %q, %q or none", job.DepsGo, job.DepsNPM)
	}
	for _, name := range lockfiles {
		rel := path.Join(o.Workdir, name)
		st, err := os.Stat(filepath.Join(o.SourceDir, filepath.FromSlash(rel)))
		switch {
		case err != nil:
			return inputErr("Deps", fmt.Sprintf("%q", o.Deps), "the source has no %s (dependencies of kind %s are fetched for it): %w", rel, o.Deps, err)
		case !st.Mode().IsRegular():
			return inputErr("Deps", fmt.Sprintf("%q", o.Deps), "the source's %s is not a regular file", rel)
		}
	}
	if o.Deps == job.DepsNPM {
		if _, err := o.readNPMLockfile(); err != nil {
			return inputErr("Deps", fmt.Sprintf("%q", o.Deps), "%w", err)
		}
	}
	return nil
}

// prepareDeps is the dependency step of prepareInput: fetch what the lockfile names into
// a temporary cache, keep the part the guest checks and pack it. It returns the manifest's
// record of the archive and the archive's path; nil without Options.Deps.
func (r *run) prepareDeps(ctx context.Context) (*job.Deps, string, error) {
	o := r.o
	tree := filepath.Join(r.work, "deps")
	switch o.Deps {
	case "":
		return nil, "", nil
	case job.DepsNPM:
		if err := r.fetchNPM(ctx, tree); err != nil {
			return nil, "", err
		}
	default:
		if err := r.fetchGo(ctx, tree); err != nil {
			return nil, "", err
		}
	}
	if o.afterDepsDownload != nil {
		if err := o.afterDepsDownload(tree); err != nil {
			return nil, "", err
		}
	}
	archive := filepath.Join(r.work, "deps.tar")
	sum, size, err := source.PackFile(ctx, tree, 0, archive)
	if err != nil {
		return nil, "", fmt.Errorf("packing the dependencies: %w", err)
	}
	r.log.Info("dependencies packed", "sha256", sum, "bytes", size)
	return &job.Deps{Kind: o.Deps, Lockfile: path.Join(o.Workdir, job.DepsLockfile(o.Deps)), ArchiveSHA256: sum, ArchiveSize: size}, archive, nil
}

// fetchGo fetches the modules go.sum names into a temporary module cache and copies its
// proxy tree to tree.
func (r *run) fetchGo(ctx context.Context, tree string) error {
	o := r.o
	modcache := filepath.Join(r.work, "gomodcache")
	if err := goModDownload(ctx, filepath.Join(o.SourceDir, filepath.FromSlash(o.Workdir)), modcache); err != nil {
		return err
	}
	if err := copyProxyTree(filepath.Join(modcache, filepath.FromSlash(depsDownloadDir)), filepath.Join(tree, filepath.FromSlash(depsDownloadDir))); err != nil {
		return fmt.Errorf("collecting the fetched modules: %w", err)
	}
	// Its proxy tree is copied; the extracted sources are not needed.
	if err := os.RemoveAll(modcache); err != nil {
		r.log.Warn("removing the temporary module cache", "err", err)
	}
	return nil
}

// downloadedModule is the part of `go mod download -json` output read here.
type downloadedModule struct {
	Path, Version, Error string
}

// goModDownload runs `go mod download` in dir with modcache as GOMODCACHE and the host's
// GOPROXY (and the rest of its environment); -modcacherw leaves the cache removable. A module that cannot be fetched is named
// with go's error.
func goModDownload(ctx context.Context, dir, modcache string) error {
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOMODCACHE="+modcache, "GOFLAGS=-mod=mod -modcacherw")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	dec := json.NewDecoder(&stdout)
	for {
		var m downloadedModule
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			break // go said nothing more in JSON; its stderr explains
		}
		if m.Error != "" {
			return fmt.Errorf("%w: fetching module %s@%s: %s", ErrInput, m.Path, m.Version, m.Error)
		}
	}
	if runErr != nil {
		return fmt.Errorf("%w: go mod download in %s: %w: %s", ErrInput, dir, runErr, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// proxyFile says whether a file of the module cache's download tree is one a module proxy
// serves for a version: VERSION.mod, .zip or .info under MODULE/@v/. Lock files, zip
// hashes, version lists and the checksum database's tiles stay behind.
func proxyFile(rel string) bool {
	dir, name := path.Split(rel)
	if !strings.HasSuffix(dir, "/@v/") || strings.HasPrefix(rel, "sumdb/") {
		return false
	}
	switch path.Ext(name) {
	case ".mod", ".zip", ".info":
		return true
	}
	return false
}

// copyProxyTree copies the proxy files of the download tree src to dst.
func copyProxyTree(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil || !d.Type().IsRegular() || !proxyFile(filepath.ToSlash(rel)) {
			return err
		}
		to := filepath.Join(dst, rel)
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			return err
		}
		return copyFile(p, to)
	})
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copying %s: %w", from, err)
	}
	return out.Close()
}

// writeDepsDisk writes the dependency archive as a raw disk: the archive, padded with
// zeros to whole blocks. The guest reads exactly the manifest's archiveSize bytes.
func writeDepsDisk(archive, diskPath string) error {
	if err := copyFile(archive, diskPath); err != nil {
		return fmt.Errorf("writing the dependency disk: %w", err)
	}
	st, err := os.Stat(diskPath)
	if err != nil {
		return err
	}
	if err := os.Truncate(diskPath, (st.Size()+4095)&^4095); err != nil {
		return fmt.Errorf("padding the dependency disk: %w", err)
	}
	return nil
}
