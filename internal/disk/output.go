package disk

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"time"
)

// tarTrailer is the end-of-archive marker (two zero blocks) that Close appends; AddFile
// always keeps room for it.
const tarTrailer = 1024

// OutputWriter writes the output disk (guest side): a tar payload from offset BlockSize,
// then, in Close, the header. Block 0 is zeroed before the first payload byte, so the
// disk reads as "no output" until Close has finished.
//
// After an error that leaves the payload inconsistent (a failed device write or a short
// read from an artifact) the writer refuses further calls and Close writes no header.
// ErrOutputTooLarge from AddFile is not such an error: nothing was written, and smaller
// files may still be added.
type OutputWriter struct {
	dev      io.WriterAt
	capacity int64 // payload bytes that fit after the header block
	payload  payloadWriter
	tw       *tar.Writer
	names    map[string]bool
	started  bool
	closed   bool
	err      error
}

// NewOutputWriter prepares to write the output disk dev of devSize bytes.
func NewOutputWriter(dev io.WriterAt, devSize int64) *OutputWriter {
	w := &OutputWriter{
		dev:      dev,
		capacity: max(devSize-BlockSize, 0),
		names:    map[string]bool{},
	}
	w.payload = payloadWriter{dev: dev, h: sha256.New(), capacity: w.capacity}
	w.tw = tar.NewWriter(&w.payload)
	return w
}

// Remaining is how many more payload bytes (tar headers and padding included) fit.
func (w *OutputWriter) Remaining() int64 {
	return max(w.capacity-w.payload.n-tarTrailer, 0)
}

// AddFile adds name (ResultName, EvidenceName, LogName, ErrorName or ArtifactsDir +
// a clean relative path) with exactly size bytes read from r. The entry's mode is 0644,
// or 0755 when r has a Stat method (as *os.File has) reporting the owner's exec bit.
// It returns an error wrapping ErrOutputTooLarge, without writing anything, when the file
// would not fit on the disk (or a document exceeds MaxDocumentSize).
func (w *OutputWriter) AddFile(name string, r io.Reader, size int64) error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return errors.New("output disk: AddFile after Close")
	}
	artifact, err := outputName(name)
	if err != nil {
		return fmt.Errorf("output disk: %w", err)
	}
	if w.names[name] {
		return fmt.Errorf("output disk: entry %q added twice", name)
	}
	if artifact != "" {
		// A file below another artifact's path could never be extracted.
		for p := range w.names {
			if strings.HasPrefix(name, p+"/") || strings.HasPrefix(p, name+"/") {
				return fmt.Errorf("output disk: entry %q conflicts with %q", name, p)
			}
		}
	}
	if len(w.names) >= MaxOutputEntries {
		return fmt.Errorf("%w: more than %d output entries", ErrOutputTooLarge, MaxOutputEntries)
	}
	if size < 0 {
		return fmt.Errorf("output disk: entry %q: negative size %d", name, size)
	}
	if artifact == "" && name != LogName && size > MaxDocumentSize {
		return fmt.Errorf("%w: %s is %d bytes, limit %d", ErrOutputTooLarge, name, size, MaxDocumentSize)
	}
	mode := int64(0o644)
	if st, ok := r.(interface{ Stat() (fs.FileInfo, error) }); ok {
		if fi, err := st.Stat(); err == nil && fi.Mode().Perm()&0o100 != 0 {
			mode = 0o755
		}
	}
	hdr := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     name,
		Size:     size,
		Mode:     mode,
		ModTime:  time.Unix(0, 0),
		Format:   tar.FormatPAX,
	}
	// Measure the header exactly (long or non-ASCII names add PAX records) so that the
	// check below is exact and nothing is written when the file does not fit.
	var probe bytes.Buffer
	if err := tar.NewWriter(&probe).WriteHeader(hdr); err != nil {
		return fmt.Errorf("output disk: entry %q: %w", name, err)
	}
	padded := (size + 511) / 512 * 512
	if size > w.capacity || int64(probe.Len())+padded+tarTrailer > w.capacity-w.payload.n {
		return fmt.Errorf("%w: %s (%d bytes) does not fit, %d bytes left on the output disk",
			ErrOutputTooLarge, name, size, w.Remaining())
	}
	if err := w.start(); err != nil {
		return err
	}
	if err := w.tw.WriteHeader(hdr); err != nil {
		return w.fail(fmt.Errorf("output disk: entry %q: %w", name, err))
	}
	if n, err := io.CopyN(w.tw, r, size); err != nil {
		return w.fail(fmt.Errorf("output disk: entry %q: copied %d of %d bytes: %w", name, n, size, err))
	}
	w.names[name] = true
	return nil
}

// Close ends the tar stream, syncs the device if it has a Sync method (so the payload is
// durable before the header that vouches for it), and writes the header. The caller
// syncs the device afterwards.
func (w *OutputWriter) Close() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return errors.New("output disk: Close called twice")
	}
	if tarTrailer > w.capacity-w.payload.n {
		return fmt.Errorf("%w: the output disk has no room for the end of the archive", ErrOutputTooLarge)
	}
	if err := w.start(); err != nil {
		return err
	}
	if err := w.tw.Close(); err != nil {
		return w.fail(fmt.Errorf("output disk: finish archive: %w", err))
	}
	if s, ok := w.dev.(interface{ Sync() error }); ok {
		if err := s.Sync(); err != nil {
			return w.fail(fmt.Errorf("output disk: sync payload: %w", err))
		}
	}
	var hdr [BlockSize]byte
	copy(hdr[:], OutputMagic)
	binary.LittleEndian.PutUint64(hdr[headerLenOffset:], uint64(w.payload.n))
	copy(hdr[outputSHA256:outputHeaderEnd], w.payload.h.Sum(nil))
	if _, err := w.dev.WriteAt(hdr[:], 0); err != nil {
		return w.fail(fmt.Errorf("output disk: write header: %w", err))
	}
	w.closed = true
	return nil
}

// start zeroes the header block once, before any payload byte, so that a stale header
// can never vouch for a half-written payload.
func (w *OutputWriter) start() error {
	if w.started {
		return nil
	}
	var zero [BlockSize]byte
	if _, err := w.dev.WriteAt(zero[:], 0); err != nil {
		return w.fail(fmt.Errorf("output disk: clear header: %w", err))
	}
	w.started = true
	return nil
}

func (w *OutputWriter) fail(err error) error {
	w.err = err
	return err
}

// payloadWriter writes sequentially from BlockSize on, hashing and counting.
type payloadWriter struct {
	dev      io.WriterAt
	h        hash.Hash
	n        int64
	capacity int64
}

func (p *payloadWriter) Write(b []byte) (int, error) {
	if int64(len(b)) > p.capacity-p.n {
		return 0, fmt.Errorf("%w: payload exceeds the disk's %d bytes", ErrOutputTooLarge, p.capacity)
	}
	n, err := p.dev.WriteAt(b, BlockSize+p.n)
	p.h.Write(b[:n])
	p.n += int64(n)
	return n, err
}

// Output is what ReadOutput found. Fixed files that were absent are nil (Error: empty).
type Output struct {
	Result, Evidence, Log []byte
	Error                 string
	// Artifacts are the artifacts' paths relative to destDir/artifacts, in payload order.
	Artifacts []string
}

// ReadOutput reads the output disk image file devPath (host side). It checks the magic
// (an all-zero magic is ErrNoOutput), that the rest of the header is zero, that
// payloadLen fits in the file (else ErrMalformed) and in maxBytes (else
// ErrOutputTooLarge), and the payload's SHA-256, before it parses anything. Then it parses
// the tar: only regular files; names must be one of the fixed names or ArtifactsDir + a
// clean relative path; no duplicates; result, evidence and error at most MaxDocumentSize,
// the log at most maxBytes. Artifacts are extracted to destDir/artifacts/<path> (which
// must not exist yet; parents created 0755, files 0644 or 0755 by the owner's exec bit),
// never through a symlink and never outside destDir.
//
// maxBytes caps the whole payload: the artifacts and log the manifest allows
// (MaxOutputBytes) plus room for the documents and tar headers. On error, the caller
// discards destDir.
func ReadOutput(devPath, destDir string, maxBytes int64) (*Output, error) {
	f, err := os.Open(devPath)
	if err != nil {
		return nil, fmt.Errorf("read output disk: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read output disk: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("read output disk %s: not a regular file", devPath)
	}
	size := st.Size()
	if size < BlockSize {
		return nil, fmt.Errorf("%w: output disk %s is %d bytes, smaller than its %d-byte header", ErrMalformed, devPath, size, BlockSize)
	}
	var hdr [BlockSize]byte
	if err := readFullAt(f, hdr[:], 0); err != nil {
		return nil, fmt.Errorf("read output disk %s: header: %w", devPath, err)
	}
	magic := hdr[:len(OutputMagic)]
	if allZero(magic) {
		return nil, fmt.Errorf("%w: %s has no header (the guest did not finish)", ErrNoOutput, devPath)
	}
	if string(magic) != OutputMagic {
		return nil, fmt.Errorf("%w: output magic is %q, expected %q", ErrMalformed, magic, OutputMagic)
	}
	if !allZero(hdr[outputHeaderEnd:]) {
		return nil, fmt.Errorf("%w: output header has non-zero bytes after offset %d", ErrMalformed, outputHeaderEnd)
	}
	plen := binary.LittleEndian.Uint64(hdr[headerLenOffset:])
	if plen > uint64(size-BlockSize) {
		return nil, fmt.Errorf("%w: output payload (%d bytes) extends past the end of the %d-byte disk", ErrMalformed, plen, size)
	}
	if maxBytes < 0 || plen > uint64(maxBytes) {
		return nil, fmt.Errorf("%w: output payload is %d bytes, limit %d", ErrOutputTooLarge, plen, maxBytes)
	}
	payload := io.NewSectionReader(f, BlockSize, int64(plen))
	h := sha256.New()
	if _, err := io.Copy(h, payload); err != nil {
		return nil, fmt.Errorf("read output disk %s: payload: %w", devPath, err)
	}
	if got := h.Sum(nil); !bytes.Equal(got, hdr[outputSHA256:outputHeaderEnd]) {
		return nil, fmt.Errorf("%w: output payload SHA-256 is %x, header says %x", ErrMalformed, got, hdr[outputSHA256:outputHeaderEnd])
	}
	if _, err := payload.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("read output disk %s: %w", devPath, err)
	}

	root, err := os.OpenRoot(destDir)
	if err != nil {
		return nil, fmt.Errorf("read output disk: destination: %w", err)
	}
	defer root.Close()
	x := &extractor{root: root, maxLog: maxBytes, kinds: map[string]byte{}, out: &Output{}}
	if err := x.run(tar.NewReader(payload)); err != nil {
		return nil, fmt.Errorf("read output disk %s: %w", devPath, err)
	}
	return x.out, nil
}

type extractor struct {
	root    *os.Root
	maxLog  int64
	kinds   map[string]byte // paths created under destDir, and fixed names seen
	entries int
	out     *Output
}

func malformed(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, a...))
}

func (x *extractor) run(tr *tar.Reader) error {
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return malformed("payload tar: %v", err)
		}
		x.entries++
		if x.entries > MaxOutputEntries {
			return malformed("more than %d payload entries", MaxOutputEntries)
		}
		if hdr.Typeflag != tar.TypeReg {
			return malformed("entry %q has type %q, expected a regular file", hdr.Name, hdr.Typeflag)
		}
		for k := range hdr.PAXRecords {
			if strings.HasPrefix(k, "GNU.sparse.") {
				return malformed("entry %q is a sparse file", hdr.Name)
			}
		}
		artifact, err := outputName(hdr.Name)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		if _, dup := x.kinds[hdr.Name]; dup {
			return malformed("entry %q appears twice", hdr.Name)
		}
		if artifact != "" {
			if err := x.artifact(tr, hdr, artifact); err != nil {
				return err
			}
			continue
		}
		limit := int64(MaxDocumentSize)
		if hdr.Name == LogName {
			limit = x.maxLog
		}
		if hdr.Size > limit {
			return fmt.Errorf("%w: %s is %d bytes, limit %d", ErrOutputTooLarge, hdr.Name, hdr.Size, limit)
		}
		b := make([]byte, hdr.Size) // bounded by limit just above
		if _, err := io.ReadFull(tr, b); err != nil {
			return malformed("entry %q: %v", hdr.Name, err)
		}
		x.kinds[hdr.Name] = tar.TypeReg
		switch hdr.Name {
		case ResultName:
			x.out.Result = b
		case EvidenceName:
			x.out.Evidence = b
		case LogName:
			x.out.Log = b
		case ErrorName:
			x.out.Error = string(b)
		}
	}
}

// artifact extracts one artifact below destDir/artifacts, creating each parent itself
// so that every path component is a directory this function made.
func (x *extractor) artifact(tr *tar.Reader, hdr *tar.Header, rel string) error {
	name := strings.TrimSuffix(ArtifactsDir, "/") + "/" + rel
	for i := 0; i < len(name); i++ {
		if name[i] != '/' {
			continue
		}
		p := name[:i]
		switch kind, ok := x.kinds[p]; {
		case !ok:
			if err := x.root.Mkdir(p, 0o755); err != nil {
				return fmt.Errorf("entry %q: create %q: %w", hdr.Name, p, err)
			}
			// Mkdir's mode is masked by the umask; the spec'd mode is not.
			if err := x.root.Chmod(p, 0o755); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			x.kinds[p] = tar.TypeDir
		case kind != tar.TypeDir:
			return malformed("entry %q: %q is a file, not a directory", hdr.Name, p)
		}
	}
	perm := fs.FileMode(0o644)
	if hdr.Mode&0o100 != 0 {
		perm = 0o755
	}
	f, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, perm)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return malformed("entry %q conflicts with an earlier entry", hdr.Name)
		}
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	x.kinds[name] = tar.TypeReg
	n, err := io.Copy(f, tr)
	if err == nil && n != hdr.Size {
		err = fmt.Errorf("wrote %d of %d bytes", n, hdr.Size)
	}
	if err == nil {
		err = f.Chmod(perm)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return malformed("entry %q: %v", hdr.Name, err)
	}
	x.out.Artifacts = append(x.out.Artifacts, rel)
	return nil
}
