package source

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"regexp"
	"strings"
	"syscall"
	"time"
)

var sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Unpack extracts the tar stream r into dest, which must be an existing empty directory.
//
// r must yield exactly wantSize bytes whose SHA-256 is wantSHA256; Unpack hashes while it
// reads and returns an error wrapping ErrDigestMismatch when the digest or size differs
// (the caller must then discard dest). Because the digest is known only at the end, every
// entry is treated as hostile while it is unpacked: Unpack rejects absolute names, ".."
// components and unclean names, duplicate entries, entries below a symlink or a file
// (symlink targets may point anywhere, but nothing is ever written through a symlink),
// hard links, devices, FIFOs and sparse files (ErrUnsafeEntry), and anything over lim
// (ErrLimit); each error names the entry. When an entry is rejected and the stream's
// digest does not match either, the error wraps both sentinels.
//
// Regular files and directories get the archive's permission bits (setuid, setgid and
// sticky are dropped); directories get theirs only after everything is unpacked, so a
// read-only directory can still be filled. With chown, every created object is owned by
// uid:gid (the unprivileged build user); dest itself is left as it is. Parents missing
// from the archive are created with mode 0755, or the mode of a directory entry for them
// that comes later.
func Unpack(ctx context.Context, r io.Reader, wantSHA256 string, wantSize int64, dest string, lim Limits, uid, gid int, chown bool) error {
	return unpack(ctx, r, wantSHA256, wantSize, dest, lim, uid, gid, chown, nil)
}

// UnpackTreeID is Unpack that also returns the git tree id of what it unpacked, in the
// object format f: the id TreeIDFormat(dest, f) would give right after Unpack, computed
// in the same pass. Each regular file is hashed as a git blob while it is written and
// symlink targets are kept, so the unpacked tree is never read back. The id is returned
// only when Unpack would have succeeded (the archive's digest matched and every entry was
// accepted); the checks, limits and errors are Unpack's.
func UnpackTreeID(ctx context.Context, r io.Reader, wantSHA256 string, wantSize int64, dest string, lim Limits, uid, gid int, chown bool, f ObjectFormat) (string, error) {
	if err := f.Check(); err != nil {
		return "", fmt.Errorf("unpack: %w", err)
	}
	t := &memTree{}
	if err := unpack(ctx, r, wantSHA256, wantSize, dest, lim, uid, gid, chown, &treeHasher{f: f, tree: t}); err != nil {
		return "", err
	}
	return t.id(f), nil
}

// treeHasher is what the unpacker records for UnpackTreeID.
type treeHasher struct {
	f    ObjectFormat
	tree *memTree
}

func unpack(ctx context.Context, r io.Reader, wantSHA256 string, wantSize int64, dest string, lim Limits, uid, gid int, chown bool, th *treeHasher) error {
	if !sha256Hex.MatchString(wantSHA256) {
		return fmt.Errorf("unpack: expected digest %q is not 64 lowercase hex digits", wantSHA256)
	}
	if wantSize < 0 {
		return fmt.Errorf("unpack: expected size %d is negative", wantSize)
	}
	if lim.MaxFiles <= 0 || lim.MaxFileSize < 0 || lim.MaxTotalSize < 0 || lim.MaxPathLen <= 0 || lim.MaxDepth <= 0 {
		return fmt.Errorf("unpack: limits %+v must be positive", lim)
	}
	if err := checkEmptyDir(dest); err != nil {
		return fmt.Errorf("unpack: %w", err)
	}
	root, err := os.OpenRoot(dest)
	if err != nil {
		return fmt.Errorf("unpack: %w", err)
	}
	defer root.Close()

	// One byte more than expected is read so that a longer stream is noticed.
	hr := &hashingReader{r: io.LimitReader(r, wantSize+1), h: sha256.New()}
	u := &unpacker{
		ctx: ctx, root: root, lim: lim, uid: uid, gid: gid, chown: chown, th: th,
		kinds: map[string]byte{}, implicit: map[string]int{},
	}
	if err := u.extract(tar.NewReader(hr)); err != nil {
		if ctx.Err() != nil {
			return err
		}
		// A stream that is not the bound archive is the more basic failure: report it,
		// and keep the entry error for the log.
		if derr := checkDigest(ctx, hr, wantSHA256, wantSize); derr != nil {
			return fmt.Errorf("%w (while unpacking: %w)", derr, err)
		}
		return err
	}
	if err := checkDigest(ctx, hr, wantSHA256, wantSize); err != nil {
		return err
	}
	return u.finishDirs()
}

// checkDigest reads what the tar reader left (end-of-archive padding, or the rest after
// an error) and compares size and digest with the expected ones.
func checkDigest(ctx context.Context, hr *hashingReader, wantSHA256 string, wantSize int64) error {
	if _, err := io.Copy(io.Discard, &ctxReader{ctx: ctx, r: hr}); err != nil {
		return fmt.Errorf("unpack: read archive: %w", err)
	}
	if hr.n > wantSize {
		return fmt.Errorf("%w: archive is longer than the expected %d bytes", ErrDigestMismatch, wantSize)
	}
	if hr.n < wantSize {
		return fmt.Errorf("%w: archive ended after %d bytes, expected %d", ErrDigestMismatch, hr.n, wantSize)
	}
	if got := hex.EncodeToString(hr.h.Sum(nil)); got != wantSHA256 {
		return fmt.Errorf("%w: archive SHA-256 is %s, expected %s", ErrDigestMismatch, got, wantSHA256)
	}
	return nil
}

func checkEmptyDir(dir string) error {
	st, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("destination %s is not a directory", dir)
	}
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read destination %s: %w", dir, err)
	}
	if len(names) > 0 {
		return fmt.Errorf("destination %s is not empty", dir)
	}
	return nil
}

type unpacker struct {
	ctx        context.Context
	root       *os.Root
	lim        Limits
	uid, gid   int
	chown      bool
	th         *treeHasher     // nil unless the tree id is wanted
	buf        []byte          // copy buffer shared by all files
	kinds      map[string]byte // entry name -> tar type flag of what was created there
	implicit   map[string]int  // directories created as missing parents -> index in dirs
	dirs       []dirMode       // in creation order: parents before children
	files      int
	totalBytes int64
	mtime      *time.Time // every entry's, once the first is read (canonical)
}

// copyBufSize is the buffer that carries file content from the archive to the file.
const copyBufSize = 256 << 10

type dirMode struct {
	name  string
	perm  fs.FileMode
	mtime time.Time
}

func unsafeEntry(name, format string, a ...any) error {
	return fmt.Errorf("%w: %q: %s", ErrUnsafeEntry, name, fmt.Sprintf(format, a...))
}

func overLimit(name, format string, a ...any) error {
	return fmt.Errorf("%w: %q: %s", ErrLimit, name, fmt.Sprintf(format, a...))
}

func (u *unpacker) extract(tr *tar.Reader) error {
	last := "(start of archive)"
	for {
		if err := u.ctx.Err(); err != nil {
			return fmt.Errorf("unpack: %w", err)
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("unpack: read entry after %q: %w", last, err)
		}
		last = hdr.Name
		if err := u.entry(tr, hdr); err != nil {
			return fmt.Errorf("unpack: %w", err)
		}
	}
}

func (u *unpacker) entry(tr *tar.Reader, hdr *tar.Header) error {
	name, err := u.entryName(hdr)
	if err != nil {
		return err
	}
	if err := u.canonical(name, hdr); err != nil {
		return err
	}
	if i, ok := u.implicit[name]; ok && hdr.Typeflag == tar.TypeDir {
		// A directory entry after its content (which created it): take its mode, once.
		delete(u.implicit, name)
		u.dirs[i].perm = fs.FileMode(hdr.Mode) & fs.ModePerm
		u.dirs[i].mtime = hdr.ModTime
		return nil
	}
	if _, dup := u.kinds[name]; dup {
		return unsafeEntry(name, "duplicate entry")
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return unsafeEntry(name, "sparse file, not allowed")
		}
	}
	if err := u.parents(name, hdr.ModTime); err != nil {
		return err
	}
	return u.create(tr, hdr, name)
}

// canonical refuses what Pack never writes and the tree id does not see: a mode other
// than Pack's for the entry's type (the tree id keeps only the owner's exec bit, but the
// build sees every bit: a 0300 directory hides its files from $(wildcard)), and times
// that differ between entries (the tree id ignores them, but they steer make). So the
// tree id, with the manifest's SOURCE_DATE_EPOCH, says all the build can see.
func (u *unpacker) canonical(name string, hdr *tar.Header) error {
	mode := hdr.Mode & 0o7777
	switch {
	case hdr.Typeflag == tar.TypeDir && mode != modeDir,
		hdr.Typeflag == tar.TypeReg && mode != modeRegular && mode != modeExec,
		hdr.Typeflag == tar.TypeSymlink && mode != modeSymlink:
		return unsafeEntry(name, "mode %04o, expected the canonical archive's (files %04o or %04o, directories %04o, symlinks %04o)",
			mode, modeRegular, modeExec, modeDir, modeSymlink)
	}
	t := hdr.ModTime
	if u.mtime == nil {
		u.mtime = &t
	} else if !t.Equal(*u.mtime) {
		return unsafeEntry(name, "modification time %s differs from the archive's first entry's %s (a canonical archive gives every entry SOURCE_DATE_EPOCH)",
			t.UTC().Format(time.RFC3339), u.mtime.UTC().Format(time.RFC3339))
	}
	return nil
}

// entryName counts the entry against the limits and returns its clean name, refusing
// names that could land outside the tree or are over the limits.
func (u *unpacker) entryName(hdr *tar.Header) (string, error) {
	u.files++
	if u.files > u.lim.MaxFiles {
		return "", overLimit(hdr.Name, "more than %d entries", u.lim.MaxFiles)
	}
	if len(hdr.Name) > u.lim.MaxPathLen {
		return "", overLimit(shorten(hdr.Name), "name is %d bytes, limit %d", len(hdr.Name), u.lim.MaxPathLen)
	}
	name := hdr.Name
	if hdr.Typeflag == tar.TypeDir {
		name = strings.TrimSuffix(name, "/")
	} else if strings.HasSuffix(name, "/") {
		return "", unsafeEntry(hdr.Name, "name ends in \"/\" but the entry is not a directory")
	}
	name, why := cleanEntryName(name)
	if why != "" {
		return "", unsafeEntry(hdr.Name, "%s", why)
	}
	// The tree id skips the top-level .git (as git does), so nothing attests what is there;
	// yet the build would see it (a git config can run commands, a file can be collected
	// as an artifact). Pack never writes it.
	if name == ".git" || strings.HasPrefix(name, ".git/") {
		return "", unsafeEntry(hdr.Name, "the top-level .git is not part of the attested source tree, so the archive may not carry it")
	}
	if depth := strings.Count(name, "/") + 1; depth > u.lim.MaxDepth {
		return "", overLimit(name, "%d path components, limit %d", depth, u.lim.MaxDepth)
	}
	return name, nil
}

// create makes the entry's directory, file or symlink; every other type is refused.
func (u *unpacker) create(tr *tar.Reader, hdr *tar.Header, name string) error {
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := u.root.Mkdir(name, 0o700); err != nil {
			return fmt.Errorf("%q: %w", name, err)
		}
		u.kinds[name] = tar.TypeDir
		u.dirs = append(u.dirs, dirMode{name, fs.FileMode(hdr.Mode) & fs.ModePerm, hdr.ModTime})
		return nil
	case tar.TypeReg:
		return u.file(tr, hdr, name)
	case tar.TypeSymlink:
		return u.symlink(hdr.Linkname, name)
	case tar.TypeLink:
		return unsafeEntry(name, "hard link (to %q), not allowed", hdr.Linkname)
	case tar.TypeChar, tar.TypeBlock:
		return unsafeEntry(name, "device node, not allowed")
	case tar.TypeFifo:
		return unsafeEntry(name, "FIFO, not allowed")
	case tar.TypeGNUSparse:
		return unsafeEntry(name, "sparse file, not allowed")
	default:
		return unsafeEntry(name, "entry type %q, expected a regular file, directory or symlink", hdr.Typeflag)
	}
}

// symlink creates name pointing to target (which may point anywhere: nothing is ever
// written through it, see parents).
func (u *unpacker) symlink(target, name string) error {
	switch {
	case target == "":
		return unsafeEntry(name, "symlink with an empty target")
	case strings.ContainsRune(target, 0):
		return unsafeEntry(name, "symlink target contains NUL")
	case len(target) > u.lim.MaxPathLen:
		return overLimit(name, "symlink target is %d bytes, limit %d", len(target), u.lim.MaxPathLen)
	}
	if err := u.root.Symlink(target, name); err != nil {
		return fmt.Errorf("%q: %w", name, err)
	}
	u.kinds[name] = tar.TypeSymlink
	if u.th != nil {
		if err := u.th.tree.add(name, symlinkEntry(u.th.f, name, target)); err != nil {
			return err
		}
	}
	if u.chown {
		if err := u.root.Lchown(name, u.uid, u.gid); err != nil {
			return fmt.Errorf("%q: %w", name, err)
		}
	}
	return nil
}

// parents makes sure every parent of name is a directory this archive created (creating
// missing ones), so that nothing is ever written through a symlink or below a file.
func (u *unpacker) parents(name string, mtime time.Time) error {
	for i := 0; i < len(name); i++ {
		if name[i] != '/' {
			continue
		}
		p := name[:i]
		switch kind, ok := u.kinds[p]; {
		case !ok:
			if err := u.root.Mkdir(p, 0o700); err != nil {
				return fmt.Errorf("%q: create parent %q: %w", name, p, err)
			}
			u.kinds[p] = tar.TypeDir
			u.implicit[p] = len(u.dirs)
			u.dirs = append(u.dirs, dirMode{p, 0o755, mtime})
		case kind == tar.TypeSymlink:
			return unsafeEntry(name, "parent %q is a symlink; nothing is written through symlinks", p)
		case kind != tar.TypeDir:
			return unsafeEntry(name, "parent %q is not a directory", p)
		}
	}
	return nil
}

func (u *unpacker) file(tr *tar.Reader, hdr *tar.Header, name string) error {
	if hdr.Size > u.lim.MaxFileSize {
		return overLimit(name, "%d bytes, limit %d per file", hdr.Size, u.lim.MaxFileSize)
	}
	if hdr.Size > u.lim.MaxTotalSize-u.totalBytes {
		return overLimit(name, "total size exceeds the limit of %d bytes", u.lim.MaxTotalSize)
	}
	u.totalBytes += hdr.Size
	// O_EXCL and O_NOFOLLOW: never open something that is already there, least of all
	// through a symlink at the last component.
	f, err := u.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("%q: %w", name, err)
	}
	u.kinds[name] = tar.TypeReg
	perm := fs.FileMode(hdr.Mode) & fs.ModePerm
	// struct{ io.Writer } hides the file's ReaderFrom (which finds no file to copy from and
	// falls back to a fresh buffer per file), so that one buffer serves every file.
	var out io.Writer = struct{ io.Writer }{f}
	var blob hash.Hash
	if u.th != nil {
		blob = u.th.f.blobHash(hdr.Size)
		out = io.MultiWriter(f, blob)
	}
	if u.buf == nil {
		u.buf = make([]byte, copyBufSize)
	}
	n, err := io.CopyBuffer(out, &ctxReader{ctx: u.ctx, r: tr}, u.buf)
	if err == nil && n != hdr.Size {
		err = fmt.Errorf("wrote %d of %d bytes", n, hdr.Size)
	}
	if err == nil && blob != nil {
		err = u.th.tree.add(name, fileEntry(name, uint32(perm), blob.Sum(nil)))
	}
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil && u.chown {
		err = f.Chown(u.uid, u.gid)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = u.root.Chtimes(name, hdr.ModTime, hdr.ModTime)
	}
	if err != nil {
		return fmt.Errorf("%q: %w", name, err)
	}
	return nil
}

// finishDirs gives directories their final mode and owner, children before parents.
func (u *unpacker) finishDirs() error {
	for i := len(u.dirs) - 1; i >= 0; i-- {
		d := u.dirs[i]
		if u.chown {
			if err := u.root.Lchown(d.name, u.uid, u.gid); err != nil {
				return fmt.Errorf("unpack: %q: %w", d.name, err)
			}
		}
		if err := u.root.Chmod(d.name, d.perm); err != nil {
			return fmt.Errorf("unpack: %q: %w", d.name, err)
		}
		if err := u.root.Chtimes(d.name, d.mtime, d.mtime); err != nil {
			return fmt.Errorf("unpack: %q: %w", d.name, err)
		}
	}
	return nil
}

// shorten keeps an over-long name readable in an error message.
func shorten(s string) string {
	if len(s) <= 80 {
		return s
	}
	return s[:80] + "..."
}
