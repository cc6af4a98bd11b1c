package vmm

import (
	"fmt"
	"os"
	"path/filepath"
)

// MaxOutputDiskSize bounds CreateOutputDisk: the disk is sparse, but the guest may fill it.
const MaxOutputDiskSize = 1 << 40

// CreateOutputDisk creates a sparse raw file of size bytes (rounded up to 4096) for the
// guest's output. An existing file at path is replaced atomically, so the guest always starts
// from an all-zero disk and no stale output can be read back as this run's.
func CreateOutputDisk(path string, size int64) error {
	if size <= 0 || size > MaxOutputDiskSize {
		return fmt.Errorf("vmm: output disk size %d, expected 1..%d bytes", size, int64(MaxOutputDiskSize))
	}
	size = (size + 4095) &^ 4095
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("vmm: create output disk %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("vmm: size output disk %s to %d bytes: %w", path, size, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("vmm: close output disk %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("vmm: put output disk in place at %s: %w", path, err)
	}
	ok = true
	return nil
}
