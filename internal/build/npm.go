package build

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"

	"github.com/cloche-dev/cloche/internal/npmlock"
)

// The npm dependency path: the host fetches every package package-lock.json names with
// the machine's npm (its registry and credentials, `npm cache add` of each entry's
// resolved location) into a fresh npm cache, and packs the cache's content files of the
// lockfile's integrity digests, nothing else: no cache index, no registry metadata. The
// guest checks each against the lockfile (guest.VerifyNPMPackages) and the build's npm
// installs from that cache offline.

// npmLockfiles are the files an npm project needs for its dependencies to be fetched and
// checked, relative to Workdir.
var npmLockfiles = []string{"package.json", npmlock.Name}

// npmResolvedHint says how to write the lockfile an offline install can use.
const npmResolvedHint = "an offline install needs each package's resolved location; write the lockfile with `npm install --package-lock-only --omit-lockfile-registry-resolved=false`"

// readNPMLockfile reads and parses the source's package-lock.json, and refuses entries the
// guest could not check or the build's offline npm could not install: a fetched package
// without integrity, or without a resolved location.
func (o *Options) readNPMLockfile() (*npmlock.Lockfile, error) {
	rel := path.Join(o.Workdir, npmlock.Name)
	f, err := os.Open(filepath.Join(o.SourceDir, filepath.FromSlash(rel)))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, npmlock.MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", rel, err)
	}
	if len(data) > npmlock.MaxSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", rel, npmlock.MaxSize)
	}
	lf, err := npmlock.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("the source's %s: %w", rel, err)
	}
	for _, e := range lf.Fetched() {
		switch {
		case e.Integrity == "":
			return nil, fmt.Errorf("the source's %s: package %s has no integrity, so nothing can check it", rel, e)
		case e.Resolved == "":
			return nil, fmt.Errorf("the source's %s: package %s has no resolved location: %s", rel, e, npmResolvedHint)
		}
		if _, err := npmlock.Strongest(e.Integrity); err != nil {
			return nil, fmt.Errorf("the source's %s: package %s: %w", rel, e, err)
		}
	}
	return lf, nil
}

// fetchNPM fetches the lockfile's packages into a temporary npm cache and copies the
// content file of each one's integrity to tree (at the same path, _cacache/content-v2/...).
func (r *run) fetchNPM(ctx context.Context, tree string) error {
	o := r.o
	lf, err := o.readNPMLockfile()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInput, err)
	}
	cache := filepath.Join(r.work, "npmcache")
	entries := lf.Fetched()
	if err := npmCacheAdd(ctx, filepath.Join(o.SourceDir, filepath.FromSlash(o.Workdir)), cache, entries); err != nil {
		return err
	}
	if err := os.MkdirAll(tree, 0o755); err != nil {
		return err
	}
	var byAlgo map[string]map[string]string // algorithm -> hex digest -> content file
	for _, e := range entries {
		h, err := npmlock.Strongest(e.Integrity)
		if err != nil {
			return fmt.Errorf("%w: package %s: %w", ErrInput, e, err)
		}
		rel := filepath.FromSlash(h.ContentPath())
		to := filepath.Join(tree, rel)
		if _, err := os.Stat(to); err == nil {
			continue // the same content at another place of the lockfile
		}
		from := filepath.Join(cache, rel)
		if _, err := os.Stat(from); errors.Is(err, fs.ErrNotExist) {
			// npm keeps content under its own hash (sha512): find it under the lockfile's.
			if byAlgo == nil {
				byAlgo = map[string]map[string]string{}
			}
			if byAlgo[h.Algorithm] == nil {
				if byAlgo[h.Algorithm], err = hashContent(filepath.Join(cache, filepath.FromSlash(npmlock.ContentDir)), h.Algorithm); err != nil {
					return fmt.Errorf("reading the npm cache: %w", err)
				}
			}
			if from = byAlgo[h.Algorithm][h.Hex()]; from == "" {
				return fmt.Errorf("%w: fetching npm package %s: npm fetched nothing with the lockfile's integrity %s", ErrInput, e, h.SRI())
			}
		}
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			return err
		}
		if err := copyFile(from, to); err != nil {
			return fmt.Errorf("collecting npm package %s: %w", e, err)
		}
	}
	if err := os.RemoveAll(cache); err != nil {
		r.log.Warn("removing the temporary npm cache", "err", err)
	}
	return nil
}

// npmSpec is what `npm cache add` fetches for an entry: its resolved location.
func npmSpec(e *npmlock.Entry) string { return e.Resolved }

// npmCacheAdd runs `npm cache add` in dir (so the project's .npmrc applies) for every
// entry at once, with cache as the cache and the rest of the host's npm configuration.
// When npm fails, each entry is fetched alone to name the first that npm cannot fetch,
// with npm's message.
func npmCacheAdd(ctx context.Context, dir, cache string, entries []*npmlock.Entry) error {
	if len(entries) == 0 {
		return os.MkdirAll(cache, 0o755)
	}
	specs := make([]string, len(entries))
	for i, e := range entries {
		specs[i] = npmSpec(e)
	}
	msg, err := runNPMCacheAdd(ctx, dir, cache, specs...)
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	for _, e := range entries {
		if m, err := runNPMCacheAdd(ctx, dir, cache, npmSpec(e)); err != nil {
			return fmt.Errorf("%w: fetching npm package %s: %w: %s", ErrInput, e, err, m)
		}
	}
	return fmt.Errorf("%w: npm cache add in %s: %w: %s", ErrInput, dir, err, msg)
}

func runNPMCacheAdd(ctx context.Context, dir, cache string, specs ...string) (string, error) {
	args := append([]string{"cache", "add", "--cache", cache, "--prefer-online", "--no-audit", "--no-fund", "--no-update-notifier", "--"}, specs...)
	cmd := exec.CommandContext(ctx, "npm", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return npmMessage(stderr.String()), err
	}
	return "", nil
}

// npmMessage is the gist of npm's error output: its error lines without the prefix and
// the pointer to its log file.
func npmMessage(stderr string) string {
	var lines []string
	for _, l := range strings.Split(stderr, "\n") {
		l = strings.TrimSpace(strings.TrimPrefix(l, "npm error"))
		if l == "" || strings.HasPrefix(l, "A complete log of this run") {
			continue
		}
		if lines = append(lines, l); len(lines) == 8 {
			break
		}
	}
	return strings.Join(lines, "; ")
}

// hashContent hashes every file under an npm content directory with algo, mapping the hex
// digest to the file.
func hashContent(dir, algo string) (map[string]string, error) {
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && p == dir {
			return nil
		}
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		h, err := npmlock.NewHash(algo)
		if err != nil {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := io.Copy(h, f); err != nil {
			return err
		}
		out[fmt.Sprintf("%x", h.Sum(nil))] = p
		return nil
	})
	return out, err
}
