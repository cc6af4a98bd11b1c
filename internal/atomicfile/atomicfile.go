// Package atomicfile writes files so that a reader sees either the old file or the whole new
// one, never a partial write: the data goes to a temp file in the same directory, is synced,
// and is renamed into place.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// File is a temp file that becomes Path on Commit. Abort (safe after Commit) removes it.
type File struct {
	*os.File
	path string
	done bool
}

// Create opens a temp file next to path. The caller writes through the embedded *os.File and
// then calls Commit, or Abort on failure (a deferred Abort is fine).
func Create(path string) (*File, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("create temp file for %s: %w", path, err)
	}
	return &File{File: f, path: path}, nil
}

// TempPath is the path of the temp file, for tools that write to a path themselves.
func (f *File) TempPath() string { return f.File.Name() }

// Commit syncs, sets mode, closes and renames the temp file to its final path.
func (f *File) Commit(mode os.FileMode) error { return f.commit(mode, true) }

// CommitUnsynced is Commit without the fsyncs: a reader still sees the old file or the
// whole new one, but a crash may lose the new one. A caller that syncs the data itself
// (File.Sync) and then commits another file durably in the same directory has both
// renames durable after that directory sync.
func (f *File) CommitUnsynced(mode os.FileMode) error { return f.commit(mode, false) }

// commit sets mode, closes and renames the temp file into place; with durable, the file is
// synced first and its directory after.
func (f *File) commit(mode os.FileMode, durable bool) error {
	if f.done {
		return fmt.Errorf("commit %s: already committed or aborted", f.path)
	}
	f.done = true
	tmp := f.File.Name()
	var err error
	if durable {
		err = f.File.Sync()
	}
	if cerr := f.File.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, mode)
	}
	if err == nil {
		err = os.Rename(tmp, f.path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", f.path, err)
	}
	if !durable {
		return nil
	}
	return syncDir(filepath.Dir(f.path))
}

// CommitNew is Commit for a file that must not be replaced: it links the temp file to the
// final path, which fails with an error wrapping fs.ErrExist when something is there
// already (two processes creating the same file at once: the first one wins, and the other
// reads what it wrote).
func (f *File) CommitNew(mode os.FileMode) error {
	if f.done {
		return fmt.Errorf("commit %s: already committed or aborted", f.path)
	}
	f.done = true
	tmp := f.File.Name()
	defer os.Remove(tmp)
	err := f.File.Sync()
	if cerr := f.File.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, mode)
	}
	if err == nil {
		err = os.Link(tmp, f.path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", f.path, err)
	}
	return syncDir(filepath.Dir(f.path))
}

// Abort discards the temp file unless Commit already succeeded.
func (f *File) Abort() {
	if f.done {
		return
	}
	f.done = true
	f.File.Close()
	os.Remove(f.File.Name())
}

// WriteFile writes data to path atomically with the given mode.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	return write(path, data, func(f *File) error { return f.Commit(mode) })
}

// WriteNewFile writes data to path atomically, failing with an error wrapping fs.ErrExist
// when path exists (CommitNew): a file that must never be replaced, such as a new key.
func WriteNewFile(path string, data []byte, mode os.FileMode) error {
	return write(path, data, func(f *File) error { return f.CommitNew(mode) })
}

// WriteFileUnsynced is WriteFile without the fsyncs: a reader still sees the old file or
// the whole new one, but a crash may lose the new one. For records rewritten often whose
// loss the writer recovers from.
func WriteFileUnsynced(path string, data []byte, mode os.FileMode) error {
	return write(path, data, func(f *File) error { return f.commit(mode, false) })
}

// write writes data to a temp file beside path and commits it.
func write(path string, data []byte, commit func(*File) error) error {
	f, err := Create(path)
	if err != nil {
		return err
	}
	defer f.Abort()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return commit(f)
}

// syncDir makes the rename durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
