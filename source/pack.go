package source

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/cloche-dev/cloche/internal/atomicfile"
)

// packEntry is one file system object found under the packed directory.
type packEntry struct {
	name string // slash-separated, relative to the packed directory
	info fs.FileInfo
}

// Pack writes a deterministic tar of dir to w and returns the archive's SHA-256 (hex) and
// size. Entries are sorted by path (so a directory always precedes its content), every
// mtime is time.Unix(epoch, 0), uid/gid are 0 with empty user and group names, and
// permissions are normalised: directories 0755, regular files 0755 when the owner's exec
// bit is set and 0644 otherwise, symlinks 0777. Only regular files, directories and
// symlinks are allowed; anything else is an error naming the path. The top-level ".git"
// is skipped. A file that changes size while it is packed is an error, not a silent
// short archive.
func Pack(ctx context.Context, dir string, epoch int64, w io.Writer) (sha256hex string, size int64, err error) {
	// A symlink as dir itself is followed (WalkDir would not descend into it).
	resolved, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", 0, fmt.Errorf("pack %s: %w", dir, err)
	}
	dir = resolved
	st, err := os.Stat(dir)
	if err != nil {
		return "", 0, fmt.Errorf("pack %s: %w", dir, err)
	}
	if !st.IsDir() {
		return "", 0, fmt.Errorf("pack %s: not a directory", dir)
	}
	entries, err := collect(ctx, dir)
	if err != nil {
		return "", 0, err
	}

	h := sha256.New()
	cw := &countingWriter{w: io.MultiWriter(w, h)}
	tw := tar.NewWriter(cw)
	mtime := time.Unix(epoch, 0)
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return "", 0, fmt.Errorf("pack %s: %w", dir, err)
		}
		if err := writeEntry(ctx, tw, dir, e, mtime); err != nil {
			return "", 0, fmt.Errorf("pack %s: %w", dir, err)
		}
	}
	if err := tw.Close(); err != nil {
		return "", 0, fmt.Errorf("pack %s: finish archive: %w", dir, err)
	}
	return hex.EncodeToString(h.Sum(nil)), cw.n, nil
}

// collect lists every object under dir except the top-level .git, sorted by name.
func collect(ctx context.Context, dir string) ([]packEntry, error) {
	var entries []packEntry
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("pack: walk %s: %w", p, err)
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("pack: %w", err)
		}
		if p == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return fmt.Errorf("pack: %s: %w", p, err)
		}
		rel = filepath.ToSlash(rel)
		if rel == gitDir {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return fmt.Errorf("pack: stat %s: %w", p, err)
		}
		switch info.Mode().Type() {
		case 0, fs.ModeDir, fs.ModeSymlink:
		default:
			return fmt.Errorf("pack: %s is a %v, expected a regular file, directory or symlink", p, info.Mode().Type())
		}
		entries = append(entries, packEntry{name: rel, info: info})
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Byte order of the full path. WalkDir's per-directory order differs from it (e.g.
	// "a-b" < "a/x"), so sort explicitly; a prefix always sorts first, so parents still
	// precede their content.
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	return entries, nil
}

func writeEntry(ctx context.Context, tw *tar.Writer, dir string, e packEntry, mtime time.Time) error {
	hdr := &tar.Header{
		Name:    e.name,
		ModTime: mtime,
		Format:  tar.FormatPAX,
	}
	full := filepath.Join(dir, filepath.FromSlash(e.name))
	switch e.info.Mode().Type() {
	case fs.ModeDir:
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
		hdr.Mode = modeDir
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", e.name, err)
		}
		return nil
	case fs.ModeSymlink:
		target, err := os.Readlink(full)
		if err != nil {
			return fmt.Errorf("%s: %w", e.name, err)
		}
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = target
		hdr.Mode = modeSymlink
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", e.name, err)
		}
		return nil
	}

	// Regular file. Open without following a symlink that replaced it since the walk, and
	// take size and mode from the open file so that header and content agree.
	f, err := os.OpenFile(full, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", e.name, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("%s: %w", e.name, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: changed type while packing", e.name)
	}
	hdr.Typeflag = tar.TypeReg
	hdr.Size = st.Size()
	hdr.Mode = modeRegular
	if isExec(uint32(st.Mode().Perm())) {
		hdr.Mode = modeExec
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("%s: %w", e.name, err)
	}
	n, err := copyPooled(tw, &ctxReader{ctx: ctx, r: io.LimitReader(f, hdr.Size)})
	if err != nil {
		return fmt.Errorf("%s: %w", e.name, err)
	}
	if n != hdr.Size {
		return fmt.Errorf("%s: shrank from %d to %d bytes while packing", e.name, hdr.Size, n)
	}
	var one [1]byte
	if m, _ := f.Read(one[:]); m != 0 {
		return fmt.Errorf("%s: grew beyond %d bytes while packing", e.name, hdr.Size)
	}
	return nil
}

// PackFile packs dir like Pack into the file path, atomically: the archive is written to
// a temporary file in the same directory and renamed into place only when complete.
func PackFile(ctx context.Context, dir string, epoch int64, dst string) (sha256hex string, size int64, err error) {
	tmp, err := atomicfile.Create(dst)
	if err != nil {
		return "", 0, fmt.Errorf("pack: %w", err)
	}
	defer tmp.Abort()
	sum, n, err := Pack(ctx, dir, epoch, tmp)
	if err != nil {
		return "", 0, err
	}
	if err := tmp.Commit(0o644); err != nil {
		return "", 0, fmt.Errorf("pack: %w", err)
	}
	return sum, n, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// copyBufs holds the buffers copyPooled uses.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyPooled is io.Copy with a pooled buffer: packing or unpacking many small files would
// otherwise allocate (and clear) 32 KiB for each. dst's ReadFrom, if it has one, is not
// used (os.File's falls back to io.Copy for a reader that is not a file).
func copyPooled(dst io.Writer, src io.Reader) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	return io.CopyBuffer(struct{ io.Writer }{dst}, src, *bp)
}

// ctxReader stops a long copy when the context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// hashingReader hashes and counts what passes through it.
type hashingReader struct {
	r io.Reader
	h hash.Hash
	n int64
}

func (h *hashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	h.n += int64(n)
	return n, err
}
