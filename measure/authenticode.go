package measure

import (
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"sort"
)

// authenticodeSHA384 is the Authenticode digest of a PE/COFF image as EDK2 computes it when
// it measures an EFI application (Tcg2Dxe, DxeTpm2MeasureBootLib).
func authenticodeSHA384(img []byte) ([48]byte, error) {
	var out [48]byte
	h := sha512.New384()
	if err := authenticode(img, h); err != nil {
		return out, err
	}
	copy(out[:], h.Sum(nil))
	return out, nil
}

// authenticode feeds h the bytes the Authenticode digest covers: the headers without the
// checksum field and the certificate-table directory entry, each section's raw data in
// file order, then whatever follows the sections except the certificate table itself.
func authenticode(img []byte, h hash.Hash) error {
	u16 := func(off int) (int, error) {
		if off < 0 || off+2 > len(img) {
			return 0, fmt.Errorf("PE field at %#x lies outside the %d-byte image", off, len(img))
		}
		return int(binary.LittleEndian.Uint16(img[off:])), nil
	}
	u32 := func(off int) (int64, error) {
		if off < 0 || off+4 > len(img) {
			return 0, fmt.Errorf("PE field at %#x lies outside the %d-byte image", off, len(img))
		}
		return int64(binary.LittleEndian.Uint32(img[off:])), nil
	}
	if len(img) < 0x40 || img[0] != 'M' || img[1] != 'Z' {
		return errors.New("not a PE image (no MZ header): the kernel must have an EFI stub")
	}
	lfanew, err := u32(0x3c)
	if err != nil {
		return err
	}
	if lfanew+24 > int64(len(img)) || string(img[lfanew:lfanew+4]) != "PE\x00\x00" {
		return fmt.Errorf("no PE signature at %#x", lfanew)
	}
	coff := int(lfanew) + 4
	nSections, err := u16(coff + 2)
	if err != nil {
		return err
	}
	optSize, err := u16(coff + 16)
	if err != nil {
		return err
	}
	opt := coff + 20
	magic, err := u16(opt)
	if err != nil {
		return err
	}
	var dirBase, nDirsOff int
	switch magic {
	case 0x10b: // PE32
		dirBase, nDirsOff = opt+96, opt+92
	case 0x20b: // PE32+
		dirBase, nDirsOff = opt+112, opt+108
	default:
		return fmt.Errorf("unknown optional-header magic %#x", magic)
	}
	nDirs, err := u32(nDirsOff)
	if err != nil {
		return err
	}
	sizeOfHeaders, err := u32(opt + 60)
	if err != nil {
		return err
	}
	checksum := opt + 64
	if sizeOfHeaders > int64(len(img)) || sizeOfHeaders < int64(checksum+4) {
		return fmt.Errorf("SizeOfHeaders %#x does not fit the image", sizeOfHeaders)
	}
	const securityDir = 4
	var certSize int64
	if nDirs > securityDir {
		cd := dirBase + securityDir*8
		if int64(cd+8) > sizeOfHeaders {
			return errors.New("certificate-table directory entry lies outside the headers")
		}
		if certSize, err = u32(cd + 4); err != nil {
			return err
		}
		h.Write(img[:checksum])
		h.Write(img[checksum+4 : cd])
		h.Write(img[cd+8 : sizeOfHeaders])
	} else {
		h.Write(img[:checksum])
		h.Write(img[checksum+4 : sizeOfHeaders])
	}

	type section struct{ off, size int64 }
	var sections []section
	table := opt + optSize
	for i := 0; i < nSections; i++ {
		s := table + 40*i
		size, err := u32(s + 16)
		if err != nil {
			return err
		}
		off, err := u32(s + 20)
		if err != nil {
			return err
		}
		if size == 0 {
			continue
		}
		if off+size > int64(len(img)) {
			return fmt.Errorf("section %d (%#x+%#x) lies outside the %d-byte image", i, off, size, len(img))
		}
		sections = append(sections, section{off, size})
	}
	sort.SliceStable(sections, func(i, j int) bool { return sections[i].off < sections[j].off })
	hashed := sizeOfHeaders
	for _, s := range sections {
		h.Write(img[s.off : s.off+s.size])
		hashed += s.size
	}
	if fileSize := int64(len(img)); fileSize > hashed+certSize {
		h.Write(img[hashed : fileSize-certSize])
	}
	return nil
}
