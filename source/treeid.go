package source

import (
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
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
			e = treeEntry{mode: "40000", name: name, sortKey: name + "/", id: sub}
		case fs.ModeSymlink:
			target, err := os.Readlink(full)
			if err != nil {
				return nil, false, err
			}
			e = treeEntry{mode: "120000", name: name, sortKey: name, id: f.objectID("blob", []byte(target))}
		case 0:
			fid, exec, err := fileBlobID(f, full)
			if err != nil {
				return nil, false, err
			}
			mode := "100644"
			if exec {
				mode = "100755"
			}
			e = treeEntry{mode: mode, name: name, sortKey: name, id: fid}
		default:
			return nil, false, fmt.Errorf("%s is a %v, expected a regular file, directory or symlink", full, de.Type())
		}
		entries = append(entries, e)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].sortKey < entries[j].sortKey })

	var body []byte
	for _, e := range entries {
		body = append(body, e.mode...)
		body = append(body, ' ')
		body = append(body, e.name...)
		body = append(body, 0)
		body = append(body, e.id...)
	}
	return f.objectID("tree", body), len(entries) == 0, nil
}

// fileBlobID hashes a regular file as a git blob, streaming it; size and exec bit come
// from the open file so that they describe the bytes hashed.
func fileBlobID(format ObjectFormat, p string) (id []byte, exec bool, err error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, false, err
	}
	if !st.Mode().IsRegular() {
		return nil, false, fmt.Errorf("%s changed type while hashing", p)
	}
	h := format.newHash()
	h.Write([]byte("blob " + strconv.FormatInt(st.Size(), 10) + "\x00"))
	n, err := copyPooled(h, io.LimitReader(f, st.Size()))
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", p, err)
	}
	if n != st.Size() {
		return nil, false, fmt.Errorf("%s shrank while hashing", p)
	}
	return h.Sum(nil), isExec(uint32(st.Mode().Perm())), nil
}
