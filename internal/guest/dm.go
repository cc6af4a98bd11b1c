package guest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Device-mapper is driven through ioctls on /dev/mapper/control, without libdevmapper or
// dmsetup (the initramfs holds nothing but this binary and kernel modules).
//
// Every ioctl takes one buffer that starts with struct dm_ioctl (linux/dm-ioctl.h, ABI 4.x),
// native endian, 312 bytes:
//
//	off  size  field
//	  0    12  version[3] u32   in: the ABI we speak (4.0.0); out: the kernel's
//	 12     4  data_size  u32   size of the whole buffer, header included
//	 16     4  data_start u32   offset of the payload (target specs, status) from the buffer start
//	 20     4  target_count u32
//	 24     4  open_count s32   out only
//	 28     4  flags      u32   DM_READONLY_FLAG, DM_SUSPEND_FLAG, DM_STATUS_TABLE_FLAG, ...
//	 32     4  event_nr   u32
//	 36     4  padding
//	 40     8  dev        u64   out: the device number, in the kernel's huge_encode_dev form
//	                            (the same encoding as unix.Mkdev / unix.Major / unix.Minor)
//	 48   128  name[DM_NAME_LEN]   NUL-terminated device name
//	176   129  uuid[DM_UUID_LEN]   NUL-terminated uuid (unused here)
//	305     7  data[7]             padding, so the payload starts 8-aligned at 312
//
// DM_TABLE_LOAD carries target_count struct dm_target_spec (40 bytes each) at data_start,
// each followed by its NUL-terminated parameter string:
//
//	off  size  field
//	  0     8  sector_start u64  first 512-byte sector the target covers
//	  8     8  length       u64  number of 512-byte sectors
//	 16     4  status       s32  out only
//	 20     4  next         u32  where the next spec starts (8-aligned): for DM_TABLE_LOAD
//	                             relative to this spec, in DM_TABLE_STATUS replies relative
//	                             to data_start (the kernel's asymmetry, not ours)
//	 24    16  target_type[DM_MAX_TYPE_NAME]  e.g. "verity"
//	 40     -  parameter string, NUL-terminated
//
// DM_TABLE_STATUS returns the same layout, with the status string in place of the
// parameters.
const (
	dmIoctlSize      = 312
	dmTargetSpecSize = 40
	dmNameLen        = 128
	dmTypeNameLen    = 16

	dmOffVersion     = 0
	dmOffDataSize    = 12
	dmOffDataStart   = 16
	dmOffTargetCount = 20
	dmOffOpenCount   = 24
	dmOffFlags       = 28
	dmOffEventNr     = 32
	dmOffDev         = 40
	dmOffName        = 48
	dmOffUUID        = 176

	dmSpecOffSectorStart = 0
	dmSpecOffLength      = 8
	dmSpecOffStatus      = 16
	dmSpecOffNext        = 20
	dmSpecOffTargetType  = 24

	// dmBufferSize bounds what the kernel may write back (status strings are short).
	dmBufferSize = 16 << 10
)

// The ABI version cloche speaks: the kernel accepts any request with the same major and a
// minor not above its own.
var dmVersion = [3]uint32{4, 0, 0}

// ErrVerityCorrupted reports that dm-verity found a toolchain block whose hash did not match
// the launch-bound root hash (the reads returned I/O errors to the build).
var ErrVerityCorrupted = errors.New("dm-verity detected a corrupted toolchain block")

// dmTarget is one line of a device-mapper table.
type dmTarget struct {
	SectorStart uint64
	Length      uint64
	Type        string
	Params      string
}

// encodeDMIoctl lays out a dm_ioctl header followed by targets (see the layout above).
// size is the total buffer size (at least the encoded length); the rest stays zero and is
// room for the kernel's answer.
func encodeDMIoctl(name string, flags uint32, targets []dmTarget, size int) ([]byte, error) {
	if name == "" || len(name) >= dmNameLen || strings.ContainsAny(name, "/\x00") {
		return nil, fmt.Errorf("device-mapper name %q must be 1..%d bytes without '/' or NUL", name, dmNameLen-1)
	}
	var payload []byte
	for i, t := range targets {
		if t.Type == "" || len(t.Type) >= dmTypeNameLen || strings.ContainsRune(t.Type, 0) {
			return nil, fmt.Errorf("device-mapper target type %q must be 1..%d bytes", t.Type, dmTypeNameLen-1)
		}
		if strings.ContainsRune(t.Params, 0) {
			return nil, fmt.Errorf("device-mapper target %d parameters contain NUL", i)
		}
		specLen := align8(dmTargetSpecSize + len(t.Params) + 1)
		spec := make([]byte, specLen)
		binary.NativeEndian.PutUint64(spec[dmSpecOffSectorStart:], t.SectorStart)
		binary.NativeEndian.PutUint64(spec[dmSpecOffLength:], t.Length)
		binary.NativeEndian.PutUint32(spec[dmSpecOffNext:], uint32(specLen))
		copy(spec[dmSpecOffTargetType:], t.Type)
		copy(spec[dmTargetSpecSize:], t.Params)
		payload = append(payload, spec...)
	}
	total := dmIoctlSize + len(payload)
	if size < total {
		size = total
	}
	buf := make([]byte, size)
	for i, v := range dmVersion {
		binary.NativeEndian.PutUint32(buf[dmOffVersion+4*i:], v)
	}
	binary.NativeEndian.PutUint32(buf[dmOffDataSize:], uint32(size))
	binary.NativeEndian.PutUint32(buf[dmOffDataStart:], dmIoctlSize)
	binary.NativeEndian.PutUint32(buf[dmOffTargetCount:], uint32(len(targets)))
	binary.NativeEndian.PutUint32(buf[dmOffFlags:], flags)
	copy(buf[dmOffName:], name)
	copy(buf[dmIoctlSize:], payload)
	return buf, nil
}

func align8(n int) int { return (n + 7) &^ 7 }

// dmReply is the part of the kernel's answer cloche reads.
type dmReply struct {
	Version     [3]uint32
	Flags       uint32
	Dev         uint64
	TargetCount uint32
	// Targets holds, for DM_TABLE_STATUS, each target's type and status string.
	Targets []dmTarget
}

// decodeDMReply parses a buffer the kernel filled in, checking every offset against the
// buffer so that a malformed answer is an error, not a panic. Only status replies carry
// targets (other commands echo the request's target_count with no payload), so targets are
// parsed only when withTargets is set.
func decodeDMReply(buf []byte, withTargets bool) (*dmReply, error) {
	if len(buf) < dmIoctlSize {
		return nil, fmt.Errorf("device-mapper reply is %d bytes, shorter than dm_ioctl (%d)", len(buf), dmIoctlSize)
	}
	r := &dmReply{
		Flags:       binary.NativeEndian.Uint32(buf[dmOffFlags:]),
		Dev:         binary.NativeEndian.Uint64(buf[dmOffDev:]),
		TargetCount: binary.NativeEndian.Uint32(buf[dmOffTargetCount:]),
	}
	for i := range r.Version {
		r.Version[i] = binary.NativeEndian.Uint32(buf[dmOffVersion+4*i:])
	}
	if r.Flags&unix.DM_BUFFER_FULL_FLAG != 0 {
		return nil, errors.New("device-mapper reply did not fit the buffer")
	}
	dataSize := int(binary.NativeEndian.Uint32(buf[dmOffDataSize:]))
	start := int(binary.NativeEndian.Uint32(buf[dmOffDataStart:]))
	if dataSize > len(buf) || dataSize < dmIoctlSize {
		dataSize = len(buf)
	}
	if !withTargets {
		return r, nil
	}
	if r.TargetCount > 64 {
		return nil, fmt.Errorf("device-mapper reply lists %d targets, expected at most 64", r.TargetCount)
	}
	off := start
	for i := 0; i < int(r.TargetCount); i++ {
		if off < dmIoctlSize || off+dmTargetSpecSize > dataSize {
			return nil, fmt.Errorf("device-mapper reply target %d at offset %d lies outside the %d-byte reply", i, off, dataSize)
		}
		spec := buf[off:dataSize]
		t := dmTarget{
			SectorStart: binary.NativeEndian.Uint64(spec[dmSpecOffSectorStart:]),
			Length:      binary.NativeEndian.Uint64(spec[dmSpecOffLength:]),
			Type:        cString(spec[dmSpecOffTargetType : dmSpecOffTargetType+dmTypeNameLen]),
		}
		params := spec[dmTargetSpecSize:]
		end := bytes.IndexByte(params, 0)
		if end < 0 {
			return nil, fmt.Errorf("device-mapper reply target %d string is not NUL-terminated", i)
		}
		t.Params = string(params[:end])
		r.Targets = append(r.Targets, t)
		next := int(binary.NativeEndian.Uint32(spec[dmSpecOffNext:]))
		// In replies next is relative to data_start; insist that it moves forward.
		if i+1 < int(r.TargetCount) {
			if start+next <= off {
				return nil, fmt.Errorf("device-mapper reply target %d has a non-advancing next offset %d", i, next)
			}
			off = start + next
		}
	}
	return r, nil
}

func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// dmControl is an open /dev/mapper/control.
type dmControl struct{ f *os.File }

func openDMControl(devRoot string) (*dmControl, error) {
	p := devRoot + "/mapper/control"
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the device-mapper control device %s (is dm-mod loaded?): %w", p, err)
	}
	return &dmControl{f: f}, nil
}

func (c *dmControl) Close() error { return c.f.Close() }

// ioctl issues one device-mapper command; what names the command in errors.
func (c *dmControl) ioctl(req uint, what string, buf []byte) (*dmReply, error) {
	withTargets := req == unix.DM_TABLE_STATUS
	rc, err := c.f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("device-mapper %s: %w", what, err)
	}
	var errno unix.Errno
	if cerr := rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), uintptr(unsafe.Pointer(&buf[0])))
	}); cerr != nil {
		return nil, fmt.Errorf("device-mapper %s: %w", what, cerr)
	}
	if errno != 0 {
		return nil, fmt.Errorf("device-mapper %s: %w", what, errno)
	}
	r, err := decodeDMReply(buf, withTargets)
	if err != nil {
		return nil, fmt.Errorf("device-mapper %s: %w", what, err)
	}
	return r, nil
}

// createDevice runs DM_DEV_CREATE and returns the new device's number.
func (c *dmControl) createDevice(name string) (uint64, error) {
	buf, err := encodeDMIoctl(name, 0, nil, dmIoctlSize)
	if err != nil {
		return 0, err
	}
	r, err := c.ioctl(unix.DM_DEV_CREATE, "create "+name, buf)
	if err != nil {
		return 0, err
	}
	return r.Dev, nil
}

// loadTable runs DM_TABLE_LOAD (into the inactive slot).
func (c *dmControl) loadTable(name string, flags uint32, targets []dmTarget) error {
	buf, err := encodeDMIoctl(name, flags, targets, 0)
	if err != nil {
		return err
	}
	_, err = c.ioctl(unix.DM_TABLE_LOAD, "table load "+name, buf)
	return err
}

// resume runs DM_DEV_SUSPEND without DM_SUSPEND_FLAG, which swaps the loaded table in and
// makes the device usable.
func (c *dmControl) resume(name string) error {
	buf, err := encodeDMIoctl(name, 0, nil, dmIoctlSize)
	if err != nil {
		return err
	}
	_, err = c.ioctl(unix.DM_DEV_SUSPEND, "resume "+name, buf)
	return err
}

// remove runs DM_DEV_REMOVE.
func (c *dmControl) remove(name string) error {
	buf, err := encodeDMIoctl(name, 0, nil, dmIoctlSize)
	if err != nil {
		return err
	}
	_, err = c.ioctl(unix.DM_DEV_REMOVE, "remove "+name, buf)
	return err
}

// status runs DM_TABLE_STATUS (info, not table) and returns the active targets' status.
func (c *dmControl) status(name string) ([]dmTarget, error) {
	buf, err := encodeDMIoctl(name, 0, nil, dmBufferSize)
	if err != nil {
		return nil, err
	}
	r, err := c.ioctl(unix.DM_TABLE_STATUS, "status "+name, buf)
	if err != nil {
		return nil, err
	}
	return r.Targets, nil
}

// VerityParams are the dm-verity parameters of a toolchain image whose data area and hash
// tree live on the same device (veritysetup format --no-superblock, 4096-byte blocks).
type VerityParams struct {
	// Dev is the device number of the image ("major:minor" in the table).
	Dev        uint64
	DataBlocks int64
	HashOffset int64
	RootHash   string
	Salt       string
}

const verityBlockSize = 4096

// verityTable returns the single verity target covering the data area. Without
// restart_on_corruption / panic_on_corruption a bad block reads as EIO, which the build
// sees and cloche reports through the target status afterwards.
func verityTable(p VerityParams) (dmTarget, error) {
	if p.DataBlocks <= 0 || p.HashOffset != p.DataBlocks*verityBlockSize {
		return dmTarget{}, fmt.Errorf("verity parameters: hash offset %d must equal data blocks %d * %d", p.HashOffset, p.DataBlocks, verityBlockSize)
	}
	if !isLowerHex(p.RootHash) || len(p.RootHash) != 64 {
		return dmTarget{}, fmt.Errorf("verity root hash %q must be 64 lowercase hex digits", p.RootHash)
	}
	salt := p.Salt
	if salt == "" {
		salt = "-"
	} else if !isLowerHex(salt) || len(salt)%2 != 0 {
		return dmTarget{}, fmt.Errorf("verity salt %q must be lowercase hex of whole bytes", p.Salt)
	}
	dev := fmt.Sprintf("%d:%d", unix.Major(p.Dev), unix.Minor(p.Dev))
	params := fmt.Sprintf("1 %s %s %d %d %d %d sha256 %s %s",
		dev, dev, verityBlockSize, verityBlockSize, p.DataBlocks, p.HashOffset/verityBlockSize, p.RootHash, salt)
	return dmTarget{
		SectorStart: 0,
		Length:      uint64(p.DataBlocks) * (verityBlockSize / 512),
		Type:        "verity",
		Params:      params,
	}, nil
}

func isLowerHex(s string) bool {
	for _, c := range []byte(s) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// setupVerity creates the read-only verity device name over p.Dev and returns its device
// number. On error nothing is left behind.
func setupVerity(devRoot, name string, p VerityParams) (dev uint64, err error) {
	target, err := verityTable(p)
	if err != nil {
		return 0, err
	}
	ctl, err := openDMControl(devRoot)
	if err != nil {
		return 0, err
	}
	defer ctl.Close()
	dev, err = ctl.createDevice(name)
	if err != nil {
		return 0, err
	}
	defer func() {
		if err != nil {
			if rerr := ctl.remove(name); rerr != nil {
				err = fmt.Errorf("%w (and removing it again: %v)", err, rerr)
			}
		}
	}()
	// verity refuses a writable table ("Device must be readonly").
	if err := ctl.loadTable(name, unix.DM_READONLY_FLAG, []dmTarget{target}); err != nil {
		return 0, fmt.Errorf("%w (table %q: a wrong root hash, salt or geometry is rejected here or on first read)", err, target.Params)
	}
	if err := ctl.resume(name); err != nil {
		return 0, err
	}
	return dev, nil
}

// verityStatus returns ErrVerityCorrupted when the verity target of name has seen a bad
// block ("C"), nil when all reads so far verified ("V").
func verityStatus(devRoot, name string) error {
	ctl, err := openDMControl(devRoot)
	if err != nil {
		return err
	}
	defer ctl.Close()
	targets, err := ctl.status(name)
	if err != nil {
		return err
	}
	return parseVerityStatus(targets)
}

func parseVerityStatus(targets []dmTarget) error {
	if len(targets) != 1 || targets[0].Type != "verity" {
		return fmt.Errorf("device-mapper status: expected one verity target, got %d targets", len(targets))
	}
	fields := strings.Fields(targets[0].Params)
	if len(fields) == 0 {
		return errors.New("device-mapper status: empty verity status")
	}
	switch fields[0] {
	case "V":
		return nil
	case "C":
		return ErrVerityCorrupted
	default:
		return fmt.Errorf("device-mapper status: unknown verity status %q, expected V or C", fields[0])
	}
}
