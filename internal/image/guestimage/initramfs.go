package guestimage

import (
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/cloche-dev/cloche/internal/atomicfile"
	"github.com/cloche-dev/cloche/internal/image/internal/busybox"
)

// BusyboxReadyMarker is the line the busybox initramfs prints once its /init runs.
const BusyboxReadyMarker = "BUSYBOX-READY"

// mountPoints are the empty directories PID 1 mounts on: devtmpfs, proc, sysfs (configfs
// appears at /sys/kernel/config once loaded), tmpfs scratch space and the guest's disks.
var mountPoints = []string{"dev", "proc", "sys", "tmp", "run", "mnt"}

// entry is one initramfs file before it becomes a cpio record.
type entry struct {
	name         string // relative, slash-separated, no leading '/'
	mode         uint64 // type and permission bits (cpio.S_IF*)
	data         []byte
	rmajor       uint64
	rminor       uint64
	symlinkValue string
}

// initramfs collects entries and writes them as a deterministic newc archive.
type initramfs struct {
	entries map[string]entry
}

func newInitramfs() *initramfs {
	r := &initramfs{entries: map[string]entry{}}
	// The kernel opens /dev/console as PID 1's stdin/stdout/stderr before devtmpfs is
	// mounted, so the node must be in the archive itself; /dev/null likewise.
	r.add(entry{name: "dev/console", mode: cpio.S_IFCHR | 0o600, rmajor: 5, rminor: 1})
	r.add(entry{name: "dev/null", mode: cpio.S_IFCHR | 0o666, rmajor: 1, rminor: 3})
	for _, d := range mountPoints {
		mode := uint64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		r.add(entry{name: d, mode: cpio.S_IFDIR | mode})
	}
	return r
}

func (r *initramfs) add(e entry) {
	e.name = strings.TrimPrefix(path.Clean("/"+e.name), "/")
	r.entries[e.name] = e
	// Linux does not create missing parent directories when unpacking an initramfs.
	for d := path.Dir(e.name); d != "." && d != "/"; d = path.Dir(d) {
		if _, ok := r.entries[d]; !ok {
			r.entries[d] = entry{name: d, mode: cpio.S_IFDIR | 0o755}
		}
	}
}

func (r *initramfs) addFile(name string, data []byte, perm uint64) {
	r.add(entry{name: name, mode: cpio.S_IFREG | perm, data: data})
}

// write writes the archive: records sorted by name (parents sort before their children),
// inode numbers assigned in that order, mtime, uid and gid zero. The bytes depend only on
// the entries.
func (r *initramfs) write(w io.Writer) error {
	names := make([]string, 0, len(r.entries))
	for n := range r.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	rw := cpio.Newc.Writer(w)
	for i, n := range names {
		e := r.entries[n]
		info := cpio.Info{Ino: uint64(i + 1), Mode: e.mode, NLink: 1, Name: n, Rmajor: e.rmajor, Rminor: e.rminor}
		var content []byte
		switch e.mode & cpio.S_IFMT {
		case cpio.S_IFDIR:
			info.NLink = 2
		case cpio.S_IFREG:
			content = e.data
		case cpio.S_IFLNK:
			content = []byte(e.symlinkValue)
		}
		rec := cpio.StaticRecord(content, info)
		if err := rw.WriteRecord(rec); err != nil {
			return fmt.Errorf("write initramfs record %s: %w", n, err)
		}
	}
	if err := cpio.WriteTrailer(rw); err != nil {
		return fmt.Errorf("write initramfs trailer: %w", err)
	}
	return nil
}

// writeFile writes the archive to path atomically.
func (r *initramfs) writeFile(path string) error {
	f, err := atomicfile.Create(path)
	if err != nil {
		return err
	}
	defer f.Abort()
	if err := r.write(f); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return f.Commit(0o644)
}

// busyboxInit is the bare initramfs's /init: print the marker, power off at once. It is the
// floor for the boot benchmark: kernel plus the smallest possible userspace.
const busyboxInit = "#!/bin/busybox sh\n" +
	"/bin/busybox echo " + BusyboxReadyMarker + "\n" +
	"exec /bin/busybox poweroff -f\n"

// MakeBusyboxInitramfs writes a bare initramfs to path: the host's static busybox as
// /bin/busybox and a tiny /init script that prints BusyboxReadyMarker to the console and
// powers off with `poweroff -f`.
func MakeBusyboxInitramfs(path string) error {
	bb, err := busybox.Find()
	if err != nil {
		return fmt.Errorf("busybox initramfs: %w", err)
	}
	data, err := readLimited(bb, maxInitSize)
	if err != nil {
		return fmt.Errorf("busybox initramfs: %w", err)
	}
	r := newInitramfs()
	r.addFile("bin/busybox", data, 0o755)
	r.add(entry{name: "bin/sh", mode: cpio.S_IFLNK | 0o777, symlinkValue: "busybox"})
	r.addFile("init", []byte(busyboxInit), 0o755)
	return r.writeFile(path)
}

// readLimited reads a whole regular file, refusing files larger than limit.
func readLimited(p string, limit int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", p)
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("%s is %d bytes, limit %d", p, fi.Size(), limit)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s grew beyond %d bytes while being read", p, limit)
	}
	return b, nil
}
