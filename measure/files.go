package measure

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
)

// MaxBootFileSize caps a kernel or initrd read for a measurement.
const MaxBootFileSize = 2 << 30

// ReadFirmware reads a firmware image with the checks every measurement needs. A missing,
// empty, oversized or truncated (not whole pages) file is ErrFirmware.
func ReadFirmware(path string) ([]byte, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: no firmware file given", ErrFirmware)
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s does not exist", ErrFirmware, path)
		}
		return nil, fmt.Errorf("%w: %w", ErrFirmware, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrFirmware, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrFirmware, path)
	}
	if st.Size() > MaxFirmwareSize {
		return nil, fmt.Errorf("%w: %s is %d bytes, limit %d", ErrFirmware, path, st.Size(), MaxFirmwareSize)
	}
	fw, err := io.ReadAll(io.LimitReader(f, MaxFirmwareSize+1))
	if err != nil {
		return nil, fmt.Errorf("%w: reading %s: %w", ErrFirmware, path, err)
	}
	if err := checkFirmware(fw); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return fw, nil
}

// hashFile streams a file through h, capped at MaxBootFileSize, and returns its size.
func hashFile(path string, h hash.Hash) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := io.Copy(h, io.LimitReader(f, MaxBootFileSize+1))
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", path, err)
	}
	if n > MaxBootFileSize {
		return 0, fmt.Errorf("%s is larger than %d bytes", path, int64(MaxBootFileSize))
	}
	return n, nil
}

// readBootFile reads a whole kernel (it is patched and parsed, not only hashed), capped.
func readBootFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxBootFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(b) > MaxBootFileSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, int64(MaxBootFileSize))
	}
	return b, nil
}

func sha256File(path string) ([32]byte, error) {
	var sum [32]byte
	h := sha256.New()
	if _, err := hashFile(path, h); err != nil {
		return sum, err
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}
