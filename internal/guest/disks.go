package guest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Serial numbers the host gives the three virtio-blk disks (vmm sets them with
// -device virtio-blk-pci,serial=...). The guest finds its disks by serial, never by probe
// order, and refuses duplicates, so a host cannot make it read the wrong disk silently.
const (
	SerialInput     = "cloche-input"
	SerialToolchain = "cloche-toolchain"
	SerialOutput    = "cloche-output"
	// SerialDeps is the dependency disk, present only when the manifest names one.
	SerialDeps = "cloche-deps"
)

// ErrDiskNotFound is returned when no virtio disk carries an expected serial.
var ErrDiskNotFound = errors.New("disk not found")

// BlockDevice is a disk found through sysfs.
type BlockDevice struct {
	Name string // kernel name, e.g. "vdb"
	Path string // device node, e.g. "/dev/vdb"
	Dev  uint64 // device number (unix.Mkdev encoding)
}

// maxSysfsAttr bounds sysfs attribute reads (serials are at most 20 bytes).
const maxSysfsAttr = 4096

func readSysfsAttr(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	buf := make([]byte, maxSysfsAttr)
	n, err := f.Read(buf)
	if err != nil && n == 0 {
		return "", fmt.Errorf("reading %s: %w", p, err)
	}
	return strings.TrimSpace(string(buf[:n])), nil
}

// parseDevNumber parses a sysfs "major:minor" dev attribute.
func parseDevNumber(s string) (uint64, error) {
	maj, min, ok := strings.Cut(s, ":")
	if !ok {
		return 0, fmt.Errorf("device number %q is not major:minor", s)
	}
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(min, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("device number %q is not major:minor", s)
	}
	return unix.Mkdev(uint32(ma), uint32(mi)), nil
}

// FindDisks maps each wanted serial to the virtio disk (sysRoot/block/vd*) that carries it.
// A serial carried by two disks, or by none, is an error.
func FindDisks(sysRoot, devRoot string, serials ...string) (map[string]BlockDevice, error) {
	entries, err := filepath.Glob(filepath.Join(sysRoot, "block", "vd*"))
	if err != nil {
		return nil, err
	}
	sort.Strings(entries)
	want := map[string]bool{}
	for _, s := range serials {
		want[s] = true
	}
	found := map[string]BlockDevice{}
	var seen []string
	for _, dir := range entries {
		name := filepath.Base(dir)
		serial, err := readSysfsAttr(filepath.Join(dir, "serial"))
		if err != nil {
			// A virtio disk without a serial is not one of ours.
			continue
		}
		seen = append(seen, fmt.Sprintf("%s=%q", name, serial))
		if !want[serial] {
			continue
		}
		if prev, dup := found[serial]; dup {
			return nil, fmt.Errorf("two disks carry serial %q (%s and %s): refusing to guess", serial, prev.Name, name)
		}
		devStr, err := readSysfsAttr(filepath.Join(dir, "dev"))
		if err != nil {
			return nil, fmt.Errorf("disk %s (serial %q): %w", name, serial, err)
		}
		dev, err := parseDevNumber(devStr)
		if err != nil {
			return nil, fmt.Errorf("disk %s (serial %q): %w", name, serial, err)
		}
		found[serial] = BlockDevice{Name: name, Path: filepath.Join(devRoot, name), Dev: dev}
	}
	for _, s := range serials {
		if _, ok := found[s]; !ok {
			if len(seen) == 0 {
				seen = []string{"none"}
			}
			return nil, fmt.Errorf("%w: no virtio disk with serial %q (disks seen: %s)", ErrDiskNotFound, s, strings.Join(seen, ", "))
		}
	}
	return found, nil
}

// OpenBlockDevice opens d and checks that the node really is that block device (so a stale
// or substituted node is caught), returning the file and its size in bytes.
func OpenBlockDevice(d BlockDevice, flag int) (*os.File, int64, error) {
	f, err := os.OpenFile(d.Path, flag|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("opening disk %s: %w", d.Path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("stat disk %s: %w", d.Path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK || st.Rdev != d.Dev {
		f.Close()
		return nil, 0, fmt.Errorf("disk node %s is not block device %d:%d", d.Path, unix.Major(d.Dev), unix.Minor(d.Dev))
	}
	size, err := f.Seek(0, 2)
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("size of disk %s: %w", d.Path, err)
	}
	if _, err := f.Seek(0, 0); err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("rewinding disk %s: %w", d.Path, err)
	}
	return f, size, nil
}

// blockDeviceNode finds the /dev node of device number dev through sysfs
// (sysRoot/dev/block/MAJ:MIN points at the device directory named like the node).
func blockDeviceNode(sysRoot, devRoot string, dev uint64) (string, error) {
	link := filepath.Join(sysRoot, "dev", "block", fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev)))
	target, err := os.Readlink(link)
	if err != nil {
		return "", fmt.Errorf("finding the node of block device %d:%d: %w", unix.Major(dev), unix.Minor(dev), err)
	}
	node := filepath.Join(devRoot, filepath.Base(target))
	var st unix.Stat_t
	if err := unix.Stat(node, &st); err != nil {
		return "", fmt.Errorf("block device node %s: %w", node, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK || st.Rdev != dev {
		return "", fmt.Errorf("%s is not block device %d:%d", node, unix.Major(dev), unix.Minor(dev))
	}
	return node, nil
}
