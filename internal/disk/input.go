package disk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/cloche-dev/cloche/internal/atomicfile"
)

// WriteInput writes an input disk image to path (host side), atomically: a temporary file
// in the same directory is renamed into place only when complete and synced. archive must
// yield exactly archiveSize bytes.
func WriteInput(path string, manifest []byte, archive io.Reader, archiveSize int64) (err error) {
	if len(manifest) == 0 {
		return errors.New("write input disk: empty manifest")
	}
	if archiveSize < 0 {
		return fmt.Errorf("write input disk: negative archive size %d", archiveSize)
	}
	archiveOff := BlockSize + roundUp(int64(len(manifest)))
	if archiveSize > math.MaxInt64-archiveOff-BlockSize {
		return fmt.Errorf("write input disk: archive size %d too large", archiveSize)
	}
	total := roundUp(archiveOff + archiveSize)

	tmp, err := atomicfile.Create(path)
	if err != nil {
		return fmt.Errorf("write input disk: %w", err)
	}
	defer tmp.Abort()

	var hdr [BlockSize]byte
	copy(hdr[:], InputMagic)
	binary.LittleEndian.PutUint64(hdr[headerLenOffset:], uint64(len(manifest)))
	binary.LittleEndian.PutUint64(hdr[inputArchiveLen:], uint64(archiveSize))
	if _, err := tmp.WriteAt(hdr[:], 0); err != nil {
		return fmt.Errorf("write input disk %s: header: %w", path, err)
	}
	if _, err := tmp.WriteAt(manifest, BlockSize); err != nil {
		return fmt.Errorf("write input disk %s: manifest: %w", path, err)
	}
	if _, err := tmp.Seek(archiveOff, io.SeekStart); err != nil {
		return fmt.Errorf("write input disk %s: %w", path, err)
	}
	n, err := io.CopyN(tmp, archive, archiveSize)
	if err != nil {
		return fmt.Errorf("write input disk %s: archive: copied %d of %d bytes: %w", path, n, archiveSize, err)
	}
	var one [1]byte
	if m, _ := io.ReadFull(archive, one[:]); m != 0 {
		return fmt.Errorf("write input disk %s: archive is longer than the stated %d bytes", path, archiveSize)
	}
	// Truncate pads with zeros (the gaps before the archive are zero already: the file
	// was created empty and written sparsely).
	if err := tmp.Truncate(total); err != nil {
		return fmt.Errorf("write input disk %s: pad: %w", path, err)
	}
	if err := tmp.Commit(0o644); err != nil {
		return fmt.Errorf("write input disk: %w", err)
	}
	return nil
}

// Input is the content of an input disk.
type Input struct {
	Manifest []byte
	// Archive yields exactly ArchiveSize bytes read from the device. Its digest is not
	// checked here: the reader (source.Unpack) checks it against the manifest.
	Archive     io.Reader
	ArchiveSize int64
}

// ReadInput reads the input disk dev of devSize bytes (guest side). It checks the magic,
// that the rest of the header is zero, that manifestLen is 1..maxManifest and archiveLen
// at most maxArchive, and that both regions lie inside devSize, before it allocates
// anything sized by the disk. Every violation wraps ErrMalformed and says which check
// failed.
func ReadInput(dev io.ReaderAt, devSize, maxManifest, maxArchive int64) (*Input, error) {
	if devSize < BlockSize {
		return nil, fmt.Errorf("%w: input device is %d bytes, smaller than its %d-byte header", ErrMalformed, devSize, BlockSize)
	}
	var hdr [BlockSize]byte
	if err := readFullAt(dev, hdr[:], 0); err != nil {
		return nil, fmt.Errorf("read input header: %w", err)
	}
	if string(hdr[:len(InputMagic)]) != InputMagic {
		return nil, fmt.Errorf("%w: input magic is %q, expected %q", ErrMalformed, hdr[:len(InputMagic)], InputMagic)
	}
	if !allZero(hdr[inputHeaderEnd:]) {
		return nil, fmt.Errorf("%w: input header has non-zero bytes after offset %d", ErrMalformed, inputHeaderEnd)
	}
	mlen := binary.LittleEndian.Uint64(hdr[headerLenOffset:])
	alen := binary.LittleEndian.Uint64(hdr[inputArchiveLen:])
	space := uint64(devSize - BlockSize)
	switch {
	case mlen == 0:
		return nil, fmt.Errorf("%w: input manifest length is 0", ErrMalformed)
	case maxManifest < 0 || mlen > uint64(maxManifest):
		return nil, fmt.Errorf("%w: input manifest length %d exceeds the limit of %d bytes", ErrMalformed, mlen, maxManifest)
	case maxArchive < 0 || alen > uint64(maxArchive):
		return nil, fmt.Errorf("%w: input archive length %d exceeds the limit of %d bytes", ErrMalformed, alen, maxArchive)
	case mlen > space:
		return nil, fmt.Errorf("%w: input manifest (%d bytes at %d) extends past the device end (%d bytes)", ErrMalformed, mlen, BlockSize, devSize)
	}
	// mlen <= devSize-BlockSize, so none of this overflows.
	archiveOff := BlockSize + roundUp(int64(mlen))
	if archiveOff > devSize || alen > uint64(devSize-archiveOff) {
		return nil, fmt.Errorf("%w: input archive (%d bytes at %d) extends past the device end (%d bytes)", ErrMalformed, alen, archiveOff, devSize)
	}
	manifest := make([]byte, mlen)
	if err := readFullAt(dev, manifest, BlockSize); err != nil {
		return nil, fmt.Errorf("read input manifest: %w", err)
	}
	return &Input{
		Manifest:    manifest,
		Archive:     io.NewSectionReader(dev, archiveOff, int64(alen)),
		ArchiveSize: int64(alen),
	}, nil
}

// readFullAt fills b from off; a ReaderAt may report io.EOF together with a full read.
func readFullAt(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read %d bytes at %d: got %d: %w", len(b), off, n, err)
}
