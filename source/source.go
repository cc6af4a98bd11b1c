// Package source turns a source tree into the deterministic archive that the job manifest
// binds by digest, unpacks such an archive safely inside the guest, and computes the git
// tree id of an unpacked tree so that a verifier can tie the build to a commit.
//
// The archive is a POSIX tar (ustar headers, PAX records only where ustar cannot hold a
// field) whose bytes depend only on the tree's content: entries are sorted by path, every
// mtime is the job's SOURCE_DATE_EPOCH, owners are 0 with empty names, and modes are
// normalised from the owner's exec bit exactly as git records them (directories 0755,
// files 0755 or 0644, symlinks 0777).
package source

import (
	"errors"
	"path"
	"strings"
)

// Sentinel errors; every error of this package that a caller may branch on wraps one.
var (
	// ErrDigestMismatch: the bytes read are not the archive the manifest names (SHA-256 or
	// size differ, or the stream ended early). Whatever was unpacked must be discarded.
	ErrDigestMismatch = errors.New("source archive digest mismatch")
	// ErrUnsafeEntry: an entry would escape the destination, write through a symlink, repeat
	// an earlier entry, or is of a type the archive format does not allow.
	ErrUnsafeEntry = errors.New("unsafe source archive entry")
	// ErrLimit: the archive exceeds one of the Limits.
	ErrLimit = errors.New("source archive exceeds a limit")
)

// Limits bound unpacking. From the guest's point of view the archive is hostile until its
// digest has matched, which only happens at its end, so every entry is bounded on its own.
type Limits struct {
	MaxFiles     int   // entries of any type
	MaxFileSize  int64 // bytes of one regular file
	MaxTotalSize int64 // bytes of all regular files together
	MaxPathLen   int   // bytes of an entry name (and of a symlink target)
	MaxDepth     int   // path components of an entry name
}

// DefaultLimits fit a large repository and still keep a hostile archive from filling the
// guest's memory-backed disk or its inode table.
func DefaultLimits() Limits {
	return Limits{
		MaxFiles:     100_000,
		MaxFileSize:  1 << 30,
		MaxTotalSize: 4 << 30,
		MaxPathLen:   4096,
		MaxDepth:     64,
	}
}

// gitDir is skipped at the top level by Pack and TreeID: it is the checkout's repository
// metadata, not source, and git never records it in a tree.
const gitDir = ".git"

// Normalised permission bits, the only ones Pack writes.
const (
	modeDir     = 0o755
	modeExec    = 0o755
	modeRegular = 0o644
	modeSymlink = 0o777
)

// isExec says whether git would record a file as executable: it looks at the owner's
// exec bit only.
func isExec(perm uint32) bool { return perm&0o100 != 0 }

// cleanEntryName checks a tar entry name (with any trailing "/" of a directory removed)
// and returns it as a clean relative slash path, or a description of what is wrong.
func cleanEntryName(name string) (string, string) {
	switch {
	case name == "":
		return "", "empty name"
	case strings.ContainsRune(name, 0):
		return "", "name contains NUL"
	case strings.HasPrefix(name, "/"):
		return "", "absolute name, expected a relative path"
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", `name contains "..", expected a path inside the archive`
		}
	}
	if path.Clean(name) != name || name == "." {
		return "", "name is not a clean relative path (no \".\", empty components or trailing slashes)"
	}
	return name, ""
}
