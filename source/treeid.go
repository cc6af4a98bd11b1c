package source

import (
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// TreeID computes the git tree object id in the SHA-1 object format: TreeIDFormat(dir,
// FormatSHA1).
func TreeID(dir string) (string, error) { return TreeIDFormat(dir, FormatSHA1) }

// TreeIDFormat computes the git tree object id (hex, in the object format f) that `git add -A && git write-tree`
// would give for dir's content: regular files as blobs with mode 100755 when the owner's
// exec bit is set and 100644 otherwise, symlinks as mode 120000 with the target as blob,
// directories as mode 40000 (recursively; directories with nothing in them, even
// recursively, are omitted as git omits them), entries in git's order (a directory sorts
// as its name followed by "/"). The top-level ".git" is skipped. Any other file type is an
// error naming the path. Files ignored by .gitignore are not special: TreeID hashes what
// is there.
func TreeIDFormat(dir string, f ObjectFormat) (string, error) {
	if err := f.Check(); err != nil {
		return "", fmt.Errorf("tree id: %w", err)
	}
	st, err := os.Stat(dir)
	if err != nil {
		return "", fmt.Errorf("tree id: %w", err)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("tree id: %s is not a directory", dir)
	}
	id, _, err := treeOf(f, dir, true)
	if err != nil {
		return "", fmt.Errorf("tree id: %w", err)
	}
	return hex.EncodeToString(id), nil
}

type treeEntry struct {
	mode    string
	name    string
	sortKey string
	id      []byte
}

// treeOf hashes the tree object of dir; empty reports that it has no entries, in which
// case the parent leaves it out. An empty top-level tree still has an id (git's empty tree).
func treeOf(f ObjectFormat, dir string, top bool) (id []byte, empty bool, err error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, false, err
	}
	entries := make([]treeEntry, 0, len(des))
	for _, de := range des {
		name := de.Name()
		if top && name == gitDir {
			continue
		}
		full := filepath.Join(dir, name)
		var e treeEntry
		switch de.Type() {
		case fs.ModeDir:
			sub, subEmpty, err := treeOf(f, full, false)
			if err != nil {
				return nil, false, err
			}
			if subEmpty {
				continue
			}
			e = dirEntry(name, sub)
		case fs.ModeSymlink:
			target, err := os.Readlink(full)
			if err != nil {
				return nil, false, err
			}
			e = symlinkEntry(f, name, target)
		case 0:
			fid, perm, err := fileBlobID(f, full)
			if err != nil {
				return nil, false, err
			}
			e = fileEntry(name, perm, fid)
		default:
			return nil, false, fmt.Errorf("%s is a %v, expected a regular file, directory or symlink", full, de.Type())
		}
		entries = append(entries, e)
	}
	return f.treeObjectID(entries), len(entries) == 0, nil
}

// Tree entry modes, as git writes them in tree objects.
const (
	gitModeDir     = "40000"
	gitModeSymlink = "120000"
	gitModeExec    = "100755"
	gitModeRegular = "100644"
)

// fileMode is the tree entry mode git records for a regular file with permission bits perm.
func fileMode(perm uint32) string {
	if isExec(perm) {
		return gitModeExec
	}
	return gitModeRegular
}

func dirEntry(name string, id []byte) treeEntry {
	return treeEntry{mode: gitModeDir, name: name, sortKey: name + "/", id: id}
}

// fileEntry is a regular file with permission bits perm whose blob id is id.
func fileEntry(name string, perm uint32, id []byte) treeEntry {
	return treeEntry{mode: fileMode(perm), name: name, sortKey: name, id: id}
}

// symlinkEntry is a symlink: git stores its target as a blob.
func symlinkEntry(f ObjectFormat, name, target string) treeEntry {
	return treeEntry{mode: gitModeSymlink, name: name, sortKey: name, id: f.objectID("blob", []byte(target))}
}

// treeObjectID sorts entries into git's order (a directory sorts as its name followed by
// "/") and hashes the tree object they make. It reorders entries.
func (f ObjectFormat) treeObjectID(entries []treeEntry) []byte {
	sort.Slice(entries, func(i, j int) bool { return entries[i].sortKey < entries[j].sortKey })
	var body []byte
	for _, e := range entries {
		body = append(body, e.mode...)
		body = append(body, ' ')
		body = append(body, e.name...)
		body = append(body, 0)
		body = append(body, e.id...)
	}
	return f.objectID("tree", body)
}

// blobHash returns a hash that, once fed exactly size bytes of content, sums to the id of
// the git blob holding them.
func (f ObjectFormat) blobHash(size int64) hash.Hash {
	h := f.newHash()
	h.Write([]byte("blob " + strconv.FormatInt(size, 10) + "\x00"))
	return h
}

// fileBlobID hashes a regular file as a git blob, streaming it; size and exec bit come
// from the open file so that they describe the bytes hashed.
func fileBlobID(format ObjectFormat, p string) (id []byte, perm uint32, err error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	if !st.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("%s changed type while hashing", p)
	}
	h := format.blobHash(st.Size())
	n, err := copyPooled(h, io.LimitReader(f, st.Size()))
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", p, err)
	}
	if n != st.Size() {
		return nil, 0, fmt.Errorf("%s shrank while hashing", p)
	}
	return h.Sum(nil), uint32(st.Mode().Perm()), nil
}

// memTree collects a tree's regular files and symlinks while they are written, so that
// its id comes out without reading the tree back, by TreeIDFormat's rules. Directories
// need no record of their own: one that holds neither, even recursively, is left out of
// git's tree anyway, and every other one is implied by the paths below it.
type memTree struct {
	root memDir
}

type memDir struct {
	leaves map[string]treeEntry // files and symlinks, by name
	dirs   map[string]*memDir   // each with at least one leaf below it
}

// add records a file or symlink entry (see fileEntry, symlinkEntry) at the clean slash
// path name, which must not have been added before. Everything at or below the top-level
// ".git" is skipped, as TreeIDFormat skips it. A name that is both a leaf and a directory
// is an error (Unpack refuses such archives before they get here; the check keeps a
// mistake there from turning into a wrong id).
func (t *memTree) add(name string, e treeEntry) error {
	if name == gitDir || strings.HasPrefix(name, gitDir+"/") {
		return nil
	}
	d, rest := &t.root, name
	for {
		first, after, more := strings.Cut(rest, "/")
		if !more {
			break
		}
		if _, ok := d.leaves[first]; ok {
			return fmt.Errorf("tree id: %q is below a file or symlink", name)
		}
		sub := d.dirs[first]
		if sub == nil {
			if d.dirs == nil {
				d.dirs = map[string]*memDir{}
			}
			sub = &memDir{}
			d.dirs[first] = sub
		}
		d, rest = sub, after
	}
	if _, ok := d.leaves[rest]; ok {
		return fmt.Errorf("tree id: %q added twice", name)
	}
	if _, ok := d.dirs[rest]; ok {
		return fmt.Errorf("tree id: %q is both a directory and a file or symlink", name)
	}
	if d.leaves == nil {
		d.leaves = map[string]treeEntry{}
	}
	e.name, e.sortKey = rest, rest
	d.leaves[rest] = e
	return nil
}

// id is the hex tree id in the object format f.
func (t *memTree) id(f ObjectFormat) string { return hex.EncodeToString(t.root.id(f)) }

func (d *memDir) id(f ObjectFormat) []byte {
	entries := make([]treeEntry, 0, len(d.leaves)+len(d.dirs))
	for _, e := range d.leaves {
		entries = append(entries, e)
	}
	for name, sub := range d.dirs {
		entries = append(entries, dirEntry(name, sub.id(f)))
	}
	return f.treeObjectID(entries)
}
