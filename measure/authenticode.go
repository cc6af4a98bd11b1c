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
	pe := peImage(img)
	l, err := pe.layout()
	if err != nil {
		return err
	}
	certSize, err := pe.hashHeaders(l, h)
	if err != nil {
		return err
	}
	sections, err := pe.sections(l)
	if err != nil {
		return err
	}
	hashed := l.sizeOfHeaders
	for _, s := range sections {
		h.Write(img[s.off : s.off+s.size])
		hashed += s.size
	}
	if fileSize := int64(len(img)); fileSize > hashed+certSize {
		h.Write(img[hashed : fileSize-certSize])
	}
	return nil
}

// peImage is a PE/COFF image whose fields are read bounds-checked.
type peImage []byte

func (img peImage) u16(off int) (int, error) {
	if off < 0 || off+2 > len(img) {
		return 0, fmt.Errorf("PE field at %#x lies outside the %d-byte image", off, len(img))
	}
	return int(binary.LittleEndian.Uint16(img[off:])), nil
}

func (img peImage) u32(off int) (int64, error) {
	if off < 0 || off+4 > len(img) {
		return 0, fmt.Errorf("PE field at %#x lies outside the %d-byte image", off, len(img))
	}
	return int64(binary.LittleEndian.Uint32(img[off:])), nil
}

// peLayout is where the headers' parts the digest needs lie.
type peLayout struct {
	nSections     int   // NumberOfSections
	table         int   // offset of the section table
	dirBase       int   // offset of the data directories
	nDirs         int64 // NumberOfRvaAndSizes
	checksum      int   // offset of the CheckSum field
	sizeOfHeaders int64 // SizeOfHeaders
}

// layout reads the MZ and PE headers and the optional header's magic, directory count and
// SizeOfHeaders.
func (img peImage) layout() (peLayout, error) {
	var l peLayout
	if len(img) < 0x40 || img[0] != 'M' || img[1] != 'Z' {
		return l, errors.New("not a PE image (no MZ header): the kernel must have an EFI stub")
	}
	lfanew, err := img.u32(0x3c)
	if err != nil {
		return l, err
	}
	if lfanew+24 > int64(len(img)) || string(img[lfanew:lfanew+4]) != "PE\x00\x00" {
		return l, fmt.Errorf("no PE signature at %#x", lfanew)
	}
	coff := int(lfanew) + 4
	if l.nSections, err = img.u16(coff + 2); err != nil {
		return l, err
	}
	optSize, err := img.u16(coff + 16)
	if err != nil {
		return l, err
	}
	opt := coff + 20
	magic, err := img.u16(opt)
	if err != nil {
		return l, err
	}
	var nDirsOff int
	switch magic {
	case 0x10b: // PE32
		l.dirBase, nDirsOff = opt+96, opt+92
	case 0x20b: // PE32+
		l.dirBase, nDirsOff = opt+112, opt+108
	default:
		return l, fmt.Errorf("unknown optional-header magic %#x", magic)
	}
	if l.nDirs, err = img.u32(nDirsOff); err != nil {
		return l, err
	}
	if l.sizeOfHeaders, err = img.u32(opt + 60); err != nil {
		return l, err
	}
	l.checksum = opt + 64
	if l.sizeOfHeaders > int64(len(img)) || l.sizeOfHeaders < int64(l.checksum+4) {
		return l, fmt.Errorf("SizeOfHeaders %#x does not fit the image", l.sizeOfHeaders)
	}
	l.table = opt + optSize
	return l, nil
}

// hashHeaders feeds h the headers without the checksum field and the certificate-table
// directory entry, and returns the certificate table's size.
func (img peImage) hashHeaders(l peLayout, h hash.Hash) (int64, error) {
	const securityDir = 4
	if l.nDirs <= securityDir {
		h.Write(img[:l.checksum])
		h.Write(img[l.checksum+4 : l.sizeOfHeaders])
		return 0, nil
	}
	cd := l.dirBase + securityDir*8
	if int64(cd+8) > l.sizeOfHeaders {
		return 0, errors.New("certificate-table directory entry lies outside the headers")
	}
	certSize, err := img.u32(cd + 4)
	if err != nil {
		return 0, err
	}
	h.Write(img[:l.checksum])
	h.Write(img[l.checksum+4 : cd])
	h.Write(img[cd+8 : l.sizeOfHeaders])
	return certSize, nil
}

// peSection is a section's raw data in the file.
type peSection struct{ off, size int64 }

// sections lists the sections with raw data, in file order.
func (img peImage) sections(l peLayout) ([]peSection, error) {
	var sections []peSection
	for i := 0; i < l.nSections; i++ {
		s := l.table + 40*i
		size, err := img.u32(s + 16)
		if err != nil {
			return nil, err
		}
		off, err := img.u32(s + 20)
		if err != nil {
			return nil, err
		}
		if size == 0 {
			continue
		}
		if off+size > int64(len(img)) {
			return nil, fmt.Errorf("section %d (%#x+%#x) lies outside the %d-byte image", i, off, size, len(img))
		}
		sections = append(sections, peSection{off, size})
	}
	sort.SliceStable(sections, func(i, j int) bool { return sections[i].off < sections[j].off })
	return sections, nil
}
