// Package filestamp caches the digests of large files that a run uses again and again (the
// toolchain image, the guest kernel and initramfs) in a sidecar file beside each, together
// with what identifies the file on this machine: its device, inode, size, and modification
// and change times in nanoseconds. A digest is taken from the sidecar only while all of
// these are what they were when it was computed; any write, truncation, or replacement
// (a rename over it, a new file under the same name) changes at least the change time,
// which no unprivileged user can set back, so the file is read and hashed again.
//
// The cache saves an honest host the re-reads; it is not what enforces the bytes a guest
// uses: the guest checks the toolchain through dm-verity against the launch-bound root
// hash, and a hardware TEE measures the kernel and initramfs it boots.
package filestamp

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/cloche-dev/cloche/internal/atomicfile"
	"github.com/cloche-dev/cloche/internal/strictjson"
)

// Suffix names the sidecar next to a file (path + Suffix); removing it forces a re-hash.
const Suffix = ".stamp"

// maxSidecar caps what reading a sidecar may cost; a larger one is ignored.
const maxSidecar = 4 << 10

// version is the sidecar format; another version is ignored.
const version = 1

// Digests maps an algorithm's name (e.g. "sha256") to a digest in lowercase hex.
type Digests map[string]string

// Algorithm is a named hash a digest is computed with.
type Algorithm struct {
	Name string
	New  func() hash.Hash
}

// SHA256 is the algorithm every cloche digest of a file uses.
func SHA256() Algorithm { return Algorithm{Name: "sha256", New: sha256.New} }

// identity is what must be unchanged for a recorded digest to still be the file's.
type identity struct {
	Dev     uint64 `json:"dev"`
	Ino     uint64 `json:"ino"`
	Size    int64  `json:"size"`
	MtimeNs int64  `json:"mtimeNs"`
	CtimeNs int64  `json:"ctimeNs"`
}

// sidecar is the content of path + Suffix.
type sidecar struct {
	Version  int      `json:"version"`
	Identity identity `json:"identity"`
	Digests  Digests  `json:"digests"`
}

// Sum returns the digests of the regular file at path under algs (at least one): those
// recorded in its sidecar when the sidecar still identifies the file, otherwise computed
// by reading the file once and recorded for the next call. Failing to record (a read-only
// directory) only costs the next call the same read.
func Sum(path string, algs ...Algorithm) (Digests, error) {
	if len(algs) == 0 {
		return nil, errors.New("filestamp: no algorithm given")
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	id, err := identityOf(fi)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if d, ok := recorded(path, id, algs); ok {
		return d, nil
	}
	d, read, err := compute(path, algs)
	if err != nil {
		return nil, err
	}
	if read != nil {
		_ = record(path, *read, d)
	}
	return d, nil
}

// Record saves digests the caller computed over the bytes it has just written to path
// (it vouches that they are the file's current content), so that the first Sum after
// making a file need not read it back. It fails when the directory is not writable, or
// when the file system's clock does not pass the file's change time soon (clockPassed).
func Record(path string, d Digests) error {
	if len(d) == 0 {
		return errors.New("filestamp: no digest to record")
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	id, err := identityOf(fi)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if !clockPassed(filepath.Dir(path), id.CtimeNs) {
		return fmt.Errorf("record digests of %s: the file system's clock did not pass its change time", path)
	}
	return record(path, id, d)
}

// identityOf is fi's identity; only regular files have one worth recording.
func identityOf(fi fs.FileInfo) (identity, error) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return identity{}, errors.New("file system gives no device and inode numbers")
	}
	if !fi.Mode().IsRegular() {
		return identity{}, fmt.Errorf("not a regular file (%v)", fi.Mode().Type())
	}
	return identity{Dev: uint64(st.Dev), Ino: st.Ino, Size: st.Size,
		MtimeNs: st.Mtim.Nano(), CtimeNs: st.Ctim.Nano()}, nil
}

// compute reads the file once through every algorithm. read is the identity the file had
// throughout the read, nil when it changed meanwhile (the digests are then of whatever
// was read, and are not recorded).
func compute(path string, algs []Algorithm) (Digests, *identity, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	before, err := statIdentity(f)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	// Sampled before the read, so that a change during or after it moves the change time.
	recordable := clockPassed(filepath.Dir(path), before.CtimeNs)
	hs := make([]hash.Hash, len(algs))
	ws := make([]io.Writer, len(algs))
	for i, a := range algs {
		hs[i] = a.New()
		ws[i] = hs[i]
	}
	n, err := io.Copy(io.MultiWriter(ws...), f)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	d := Digests{}
	for i, a := range algs {
		d[a.Name] = hex.EncodeToString(hs[i].Sum(nil))
	}
	after, err := statIdentity(f)
	if err != nil || after != before || n != before.Size || !recordable {
		return d, nil, nil
	}
	return d, &before, nil
}

func statIdentity(f *os.File) (identity, error) {
	fi, err := f.Stat()
	if err != nil {
		return identity{}, err
	}
	return identityOf(fi)
}

// recorded returns the sidecar's digests when it may be trusted for the file as it is
// now (see trusted) and holds a well-formed digest for every algorithm.
func recorded(path string, id identity, algs []Algorithm) (Digests, bool) {
	b, ok := readSidecar(path+Suffix, id)
	if !ok {
		return nil, false
	}
	var s sidecar
	if strictjson.Decode(b, &s) != nil || s.Version != version || s.Identity != id {
		return nil, false
	}
	d := Digests{}
	for _, a := range algs {
		v, ok := s.Digests[a.Name]
		if !ok || !isHex(v, a.New().Size()) {
			return nil, false
		}
		d[a.Name] = v
	}
	return d, true
}

// readSidecar reads a sidecar that may be trusted: a regular file of at most maxSidecar
// bytes, written by this user or root and writable by no one else, and newer than the
// file's last change (record writes one only after the clock has passed it, clockPassed;
// an older one was made or copied some other way).
func readSidecar(p string, id identity) ([]byte, bool) {
	f, err := os.Open(p)
	if err != nil {
		return nil, false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Size() > maxSidecar || fi.Mode().Perm()&0o022 != 0 {
		return nil, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || (int(st.Uid) != os.Geteuid() && st.Uid != 0) || st.Mtim.Nano() <= id.CtimeNs {
		return nil, false
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSidecar+1))
	if err != nil || len(b) > maxSidecar {
		return nil, false
	}
	return b, true
}

// record writes the sidecar for a file with identity id.
func record(path string, id identity, d Digests) error {
	b, err := json.Marshal(sidecar{Version: version, Identity: id, Digests: maps.Clone(d)})
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(path+Suffix, b, 0o644); err != nil {
		return fmt.Errorf("record digests of %s: %w", path, err)
	}
	return nil
}

// tickWait bounds how long clockPassed waits for the file system's clock to pass a change
// time: a few ticks of a coarse clock at most.
const (
	tickWait  = 50 * time.Millisecond
	tickRetry = 2 * time.Millisecond
)

// clockPassed reports whether the file system's clock in dir, sampled by creating a probe
// file there, is past ctimeNs, waiting up to tickWait for it. Only then does every later
// change to a file there give it a later change time. File times come from a coarse clock
// (a jiffy, or a second on some file systems): a file changed in the same tick as it was
// stat'ed keeps its change time, so a digest computed then must not be recorded.
func clockPassed(dir string, ctimeNs int64) bool {
	for deadline := time.Now().Add(tickWait); ; time.Sleep(tickRetry) {
		// The last probe is one begun after the deadline: a probe that passes it only
		// because the process was not scheduled meanwhile is not a reason to give up.
		last := time.Now().After(deadline)
		f, err := os.CreateTemp(dir, ".filestamp-probe-*")
		if err != nil {
			return false
		}
		fi, err := f.Stat()
		f.Close()
		os.Remove(f.Name())
		if err != nil {
			return false
		}
		if fi.ModTime().UnixNano() > ctimeNs {
			return true
		}
		if last {
			return false
		}
	}
}

func isHex(s string, n int) bool {
	if len(s) != 2*n {
		return false
	}
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
