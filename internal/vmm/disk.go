package vmm

import (
	"fmt"

	"github.com/cloche-dev/cloche/internal/atomicfile"
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
	f, err := atomicfile.Create(path)
	if err != nil {
		return fmt.Errorf("vmm: create output disk: %w", err)
	}
	defer f.Abort()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("vmm: size output disk %s to %d bytes: %w", path, size, err)
	}
	if err := f.Commit(0o600); err != nil {
		return fmt.Errorf("vmm: put output disk in place: %w", err)
	}
	return nil
}
