package guest

import (
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

	"golang.org/x/sys/unix"

	"github.com/cloche-dev/cloche/job"
)

// Sentinel errors of artifact collection.
var (
	ErrArtifactNoMatch  = errors.New("artifact pattern matched no file")
	ErrArtifactNotFile  = errors.New("artifact is not a regular file")
	ErrOutputOverCap    = errors.New("output larger than the cap")
	ErrArtifactChanged  = errors.New("artifact changed after it was hashed")
	ErrTooManyArtifacts = errors.New("too many artifacts")
)

// checkError carries a message that reads on its own and the sentinel callers branch on.
type checkError struct {
	kind error
	msg  string
}

func (e *checkError) Error() string { return e.msg }
func (e *checkError) Unwrap() error { return e.kind }

func checkErrorf(kind error, format string, a ...any) error {
	return &checkError{kind: kind, msg: fmt.Sprintf(format, a...)}
}

// maxWalkEntries bounds the walk of the build tree, which the build controls.
const maxWalkEntries = 2_000_000

// ArtifactFile is an artifact and where it lives in the guest.
type ArtifactFile struct {
	job.Artifact
	HostPath string
}

// fileID identifies a file's state well enough to tell whether the build touched it: any
// write changes ctime (which no unprivileged call can set back), a rename-over changes the
// inode.
type fileID struct {
	Ino   uint64
	Ctime unix.Timespec
	Size  int64
}

// TreeSnapshot records the regular files of the source tree before the build, for
// manifests with an empty artifact list ("every file the build created or changed").
type TreeSnapshot map[string]fileID

// SnapshotTree records every regular file below dir.
func SnapshotTree(dir string) (TreeSnapshot, error) {
	snap := TreeSnapshot{}
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if n++; n > maxWalkEntries {
			return fmt.Errorf("source tree has more than %d entries", maxWalkEntries)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		snap[filepath.ToSlash(rel)] = fileID{Ino: st.Ino, Ctime: st.Ctim, Size: st.Size}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot of the source tree: %w", err)
	}
	return snap, nil
}

// CollectArtifacts finds the artifacts below srcDir after the build.
//
// With patterns, every non-directory entry whose slash path matches a pattern (path.Match)
// must be a regular file (a symlink, FIFO, device or socket is ErrArtifactNotFile), and every
// pattern must match at least one file (ErrArtifactNoMatch). Directories are never
// artifacts and are not an error. With no patterns, the artifacts are the regular files
// that are new or changed compared with before (other types are skipped), and there must be
// at least one.
//
// The sizes of all artifacts plus logSize must not exceed capBytes (ErrOutputOverCap).
// The result is sorted by path, with each file's SHA-256.
func CollectArtifacts(srcDir string, patterns []string, before TreeSnapshot, logSize, capBytes int64) ([]ArtifactFile, error) {
	found, err := findArtifacts(srcDir, patterns, before)
	if err != nil {
		return nil, err
	}
	if err := checkArtifactCount(found, len(patterns) == 0); err != nil {
		return nil, err
	}
	total := logSize
	for _, a := range found {
		total += a.Size
	}
	if total > capBytes {
		return nil, checkErrorf(ErrOutputOverCap, "output larger than the cap: %d bytes > %d bytes", total, capBytes)
	}
	sort.Slice(found, func(i, j int) bool { return found[i].Path < found[j].Path })
	if err := hashArtifacts(found); err != nil {
		return nil, err
	}
	return found, nil
}

// findArtifacts walks srcDir for the files patterns match (or, with no patterns, the
// regular files new or changed since before) and checks that every pattern matched.
func findArtifacts(srcDir string, patterns []string, before TreeSnapshot) ([]ArtifactFile, error) {
	matched := make([]int, len(patterns))
	var found []ArtifactFile
	n := 0
	err := filepath.WalkDir(srcDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if n++; n > maxWalkEntries {
			return fmt.Errorf("build tree has more than %d entries", maxWalkEntries)
		}
		if d.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(srcDir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		var a *ArtifactFile
		if len(patterns) == 0 {
			a, err = changedFile(p, rel, d, before)
		} else {
			a, err = matchedFile(p, rel, d, patterns, matched)
		}
		if a != nil {
			found = append(found, *a)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("collecting artifacts: %w", err)
	}
	for i, pat := range patterns {
		if matched[i] == 0 {
			return nil, checkErrorf(ErrArtifactNoMatch, "artifact pattern %q matched no file", pat)
		}
	}
	return found, nil
}

// changedFile is the artifact at p if it is a regular file that is not in before
// unchanged; nil otherwise.
func changedFile(p, rel string, d fs.DirEntry, before TreeSnapshot) (*ArtifactFile, error) {
	if !d.Type().IsRegular() {
		return nil, nil
	}
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return nil, err
	}
	if old, ok := before[rel]; ok && old == (fileID{Ino: st.Ino, Ctime: st.Ctim, Size: st.Size}) {
		return nil, nil
	}
	return &ArtifactFile{Artifact: job.Artifact{Path: rel, Size: st.Size}, HostPath: p}, nil
}

// matchedFile counts in matched the patterns rel matches and, if any does, is the artifact
// at p, which must be a regular file; nil if no pattern matches.
func matchedFile(p, rel string, d fs.DirEntry, patterns []string, matched []int) (*ArtifactFile, error) {
	hit := ""
	for i, pat := range patterns {
		if ok, _ := path.Match(pat, rel); ok {
			matched[i]++
			if hit == "" {
				hit = pat
			}
		}
	}
	if hit == "" {
		return nil, nil
	}
	if !d.Type().IsRegular() {
		return nil, checkErrorf(ErrArtifactNotFile, "artifact %q (matched by pattern %q) is a %s, not a regular file", rel, hit, typeName(d.Type()))
	}
	info, err := d.Info()
	if err != nil {
		return nil, err
	}
	return &ArtifactFile{Artifact: job.Artifact{Path: rel, Size: info.Size()}, HostPath: p}, nil
}

// checkArtifactCount insists on at least one changed file when the manifest lists no
// patterns, and on no more than job.MaxArtifacts.
func checkArtifactCount(found []ArtifactFile, changedFiles bool) error {
	if changedFiles && len(found) == 0 {
		return checkErrorf(ErrArtifactNoMatch, "the command created or changed no file in the source tree (the manifest lists no artifact patterns, so those files are the artifacts)")
	}
	if len(found) > job.MaxArtifacts {
		return checkErrorf(ErrTooManyArtifacts, "%d artifacts, limit %d", len(found), job.MaxArtifacts)
	}
	return nil
}

// hashArtifacts sets each artifact's SHA-256, checking that its size has not changed
// since the walk.
func hashArtifacts(found []ArtifactFile) error {
	for i := range found {
		sum, size, err := hashRegularFile(found[i].HostPath)
		if err != nil {
			return fmt.Errorf("hashing artifact %q: %w", found[i].Path, err)
		}
		if size != found[i].Size {
			return checkErrorf(ErrArtifactChanged, "artifact %q was %d bytes, now %d", found[i].Path, found[i].Size, size)
		}
		found[i].SHA256 = sum
	}
	return nil
}

func typeName(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeDevice != 0:
		return "device"
	default:
		return "non-regular file"
	}
}

// openRegular opens p without following a final symlink and insists on a regular file.
func openRegular(p string) (*os.File, int64, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, 0, checkErrorf(ErrArtifactNotFile, "%s is a %s, not a regular file", p, typeName(fi.Mode()))
	}
	return f, fi.Size(), nil
}

func hashRegularFile(p string) (string, int64, error) {
	f, size, err := openRegular(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	if n != size {
		return "", 0, checkErrorf(ErrArtifactChanged, "%s: read %d bytes of %d", p, n, size)
	}
	return hex.EncodeToString(h.Sum(nil)), size, nil
}
