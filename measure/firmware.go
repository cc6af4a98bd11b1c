// Package measure recomputes, from the guest image files alone, the launch measurements a
// TEE will report for a guest: the SEV-SNP launch digest (MEASUREMENT), the TDX MRTD and the
// RTMRs that depend only on what cloche controls, and the simulated TEE's MEASUREMENT.
//
// Everything read from a firmware image is untrusted input: every size, offset and count
// in its tables is checked against the image before use, and each way a table can be
// malformed has its own error.
package measure

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors callers (and tests) branch on. Each is wrapped with the details.
var (
	// ErrFirmware: the firmware file is missing, empty, truncated or too large.
	ErrFirmware = errors.New("invalid firmware image")
	// ErrFooterTable: OVMF's GUIDed footer table is missing or malformed.
	ErrFooterTable = errors.New("invalid OVMF footer table")
	// ErrMetadata: the SEV or TDVF metadata the footer table points to is malformed.
	ErrMetadata = errors.New("invalid firmware metadata")
	// ErrNoKernelHashes: a kernel was given but the firmware has no SNP_KERNEL_HASHES
	// section, so QEMU cannot measure it and the launch would not bind the kernel.
	ErrNoKernelHashes = errors.New("firmware has no SNP kernel-hashes section")
	// ErrVCPUType: the vCPU type is not one this package knows the CPUID signature of.
	ErrVCPUType = errors.New("unknown vCPU type")
	// ErrGuestFeatures: the guest features (SEV_FEATURES) value is not a valid number.
	ErrGuestFeatures = errors.New("invalid guest features")
	// ErrInput: another launch parameter (vCPU count, VMM, kernel, memory) is invalid.
	ErrInput = errors.New("invalid launch parameter")
)

// PageSize is the granule of every launch measurement.
const PageSize = 4096

// MaxFirmwareSize caps a firmware image: it is mapped just below 4 GiB, and real OVMF
// builds are 2-4 MiB.
const MaxFirmwareSize = 64 << 20

// GUID is an EFI GUID in its in-memory (mixed-endian) byte order, as firmware stores it.
type GUID [16]byte

// ParseGUID reads the canonical text form ("96b582de-1fb2-45f7-baea-a366c55a082d").
func ParseGUID(s string) (GUID, error) {
	var g GUID
	parts := strings.Split(s, "-")
	if len(parts) != 5 || len(parts[0]) != 8 || len(parts[1]) != 4 || len(parts[2]) != 4 || len(parts[3]) != 4 || len(parts[4]) != 12 {
		return g, fmt.Errorf("GUID %q: expected the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", s)
	}
	b, err := hex.DecodeString(strings.Join(parts, ""))
	if err != nil {
		return g, fmt.Errorf("GUID %q: %w", s, err)
	}
	// The first three fields are little-endian integers, the last eight bytes are as written.
	binary.LittleEndian.PutUint32(g[0:4], binary.BigEndian.Uint32(b[0:4]))
	binary.LittleEndian.PutUint16(g[4:6], binary.BigEndian.Uint16(b[4:6]))
	binary.LittleEndian.PutUint16(g[6:8], binary.BigEndian.Uint16(b[6:8]))
	copy(g[8:], b[8:])
	return g, nil
}

func mustGUID(s string) GUID {
	g, err := ParseGUID(s)
	if err != nil {
		panic(err)
	}
	return g
}

// String is the canonical text form.
func (g GUID) String() string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", binary.LittleEndian.Uint32(g[0:4]),
		binary.LittleEndian.Uint16(g[4:6]), binary.LittleEndian.Uint16(g[6:8]), g[8:10], g[10:16])
}

// GUIDs of OVMF's footer table and its entries (OvmfPkg/ResetVector).
var (
	footerTableGUID   = mustGUID("96b582de-1fb2-45f7-baea-a366c55a082d")
	sevMetadataGUID   = mustGUID("dc886566-984a-4798-a75e-5585a7bf67cc")
	sevHashTableGUID  = mustGUID("7255371f-3a3b-4b04-927b-1da6efa8d454")
	sevESResetGUID    = mustGUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
	tdxMetadataGUID   = mustGUID("e47a6535-984a-4798-865e-4685a7bf8ec2")
	footerEntryHeader = 2 + 16 // u16 length, GUID
	// footerTrailer is what follows the table at the end of the image: the reset vector
	// (16 bytes) and padding, 32 bytes in all.
	footerTrailer = 32
)

// FooterTable is OVMF's GUIDed table, which ends 32 bytes before the end of the image. Each
// entry is data || u16 length (data + 18) || GUID, read backwards from the table's own
// entry, whose length covers the whole table.
type FooterTable struct {
	entries map[GUID][]byte
	order   []GUID
}

// Lookup returns the data of the entry with the given GUID.
func (t *FooterTable) Lookup(g GUID) ([]byte, bool) {
	d, ok := t.entries[g]
	return d, ok
}

// GUIDs lists the entries in table order (from the end of the image backwards).
func (t *FooterTable) GUIDs() []GUID { return append([]GUID(nil), t.order...) }

// ParseFooterTable reads the footer table of a firmware image. Every length is checked
// against the table, and the table against the image; a duplicated GUID is an error (a
// reader that kept either copy could be made to disagree with QEMU).
func ParseFooterTable(fw []byte) (*FooterTable, error) {
	if len(fw) < footerTrailer+footerEntryHeader {
		return nil, fmt.Errorf("%w: image is %d bytes, too short to hold one", ErrFooterTable, len(fw))
	}
	end := len(fw) - footerTrailer
	var g GUID
	copy(g[:], fw[end-16:end])
	if g != footerTableGUID {
		return nil, fmt.Errorf("%w: no table GUID %s 32 bytes before the end of the image (found %s): not an OVMF build with SEV/TDX support", ErrFooterTable, footerTableGUID, g)
	}
	total := int(binary.LittleEndian.Uint16(fw[end-18 : end-16]))
	if total < footerEntryHeader || total > end {
		return nil, fmt.Errorf("%w: table length %d must cover its own %d-byte header and fit in the image", ErrFooterTable, total, footerEntryHeader)
	}
	table := fw[end-total : end-footerEntryHeader]
	t := &FooterTable{entries: map[GUID][]byte{}}
	for len(table) > 0 {
		if len(table) < footerEntryHeader {
			return nil, fmt.Errorf("%w: %d stray bytes at the start of the table", ErrFooterTable, len(table))
		}
		n := len(table)
		var eg GUID
		copy(eg[:], table[n-16:])
		size := int(binary.LittleEndian.Uint16(table[n-18 : n-16]))
		if size < footerEntryHeader || size > n {
			return nil, fmt.Errorf("%w: entry %s has length %d, expected %d..%d", ErrFooterTable, eg, size, footerEntryHeader, n)
		}
		if _, dup := t.entries[eg]; dup {
			return nil, fmt.Errorf("%w: entry %s appears twice", ErrFooterTable, eg)
		}
		t.entries[eg] = table[n-size : n-footerEntryHeader]
		t.order = append(t.order, eg)
		table = table[:n-size]
	}
	return t, nil
}

// u32Entry reads an entry whose data starts with a little-endian u32.
func (t *FooterTable) u32Entry(g GUID, what string) (uint32, bool, error) {
	d, ok := t.entries[g]
	if !ok {
		return 0, false, nil
	}
	if len(d) < 4 {
		return 0, true, fmt.Errorf("%w: %s entry %s holds %d bytes, expected at least 4", ErrFooterTable, what, g, len(d))
	}
	return binary.LittleEndian.Uint32(d), true, nil
}

// checkFirmware applies the checks every measurement needs: present, not over the cap, a
// whole number of pages (the image is measured page by page and mapped to end at 4 GiB).
func checkFirmware(fw []byte) error {
	switch {
	case len(fw) == 0:
		return fmt.Errorf("%w: the firmware image is empty", ErrFirmware)
	case len(fw) > MaxFirmwareSize:
		return fmt.Errorf("%w: the firmware image is %d bytes, limit %d", ErrFirmware, len(fw), MaxFirmwareSize)
	case len(fw)%PageSize != 0:
		return fmt.Errorf("%w: the firmware image is %d bytes, not a whole number of 4 KiB pages (truncated?)", ErrFirmware, len(fw))
	}
	return nil
}
