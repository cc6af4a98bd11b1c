package measure

import (
	"encoding/binary"
)

// fwSpec describes a synthetic OVMF-like firmware image: a footer table with the SEV-ES
// reset block, the SEV hash table address, SEV metadata and TDVF metadata, placed like
// OvmfPkg's reset vector places them. Tests use it to build valid images of any size and
// to break one field at a time.
type fwSpec struct {
	size     int
	resetEIP uint32
	hashGPA  uint32
	sev      []SEVSection
	tdvf     []TDVFSection
	noSEV    bool
	noTDVF   bool
}

const (
	sevMetaOffset  = 0x800 // from the end of the image
	tdvfMetaOffset = 0xc00
)

// amdSevLike is a 4 MiB image shaped like an OvmfPkg/AmdSev build: SNP sections including
// kernel hashes, and a TDVF BFV covering the whole image.
func amdSevLike(size int) fwSpec {
	return fwSpec{
		size:     size,
		resetEIP: 0x80b004,
		hashGPA:  0x810c00,
		sev: []SEVSection{
			{GPA: 0x800000, Size: 0x9000, Type: SectionSNPSecMem},
			{GPA: 0x80a000, Size: 0x3000, Type: SectionSNPSecMem},
			{GPA: 0x80d000, Size: 0x1000, Type: SectionSNPSecrets},
			{GPA: 0x80e000, Size: 0x1000, Type: SectionCPUID},
			{GPA: 0x810000, Size: 0x1000, Type: SectionKernelHashes},
			{GPA: 0x811000, Size: 0xf000, Type: SectionSNPSecMem},
		},
		tdvf: []TDVFSection{
			{DataOffset: 0, RawDataSize: uint32(size), MemoryAddress: 1<<32 - uint64(size), MemoryDataSize: uint64(size), Type: TDVFBFV, Attributes: TDVFAttrMRExtend},
			{MemoryAddress: 0x800000, MemoryDataSize: 0x6000, Type: TDVFTempMem},
			{MemoryAddress: 0x809000, MemoryDataSize: 0x1000, Type: TDVFTDHOB},
		},
	}
}

func buildFirmware(s fwSpec) []byte {
	fw := make([]byte, s.size)
	// Deterministic non-zero content, so that every page hashes differently.
	x := uint32(2463534242)
	for i := 0; i < len(fw)-0x1000; i += 4 {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		binary.LittleEndian.PutUint32(fw[i:], x)
	}
	clear(fw[len(fw)-0x1000:])

	var table []byte
	entry := func(g GUID, data []byte) {
		table = append(table, data...)
		table = binary.LittleEndian.AppendUint16(table, uint16(len(data)+18))
		table = append(table, g[:]...)
	}
	u32 := func(v ...uint32) []byte {
		var b []byte
		for _, x := range v {
			b = binary.LittleEndian.AppendUint32(b, x)
		}
		return b
	}
	if !s.noTDVF {
		entry(tdxMetadataGUID, u32(tdvfMetaOffset))
		m := fw[len(fw)-tdvfMetaOffset:]
		copy(m, "TDVF")
		binary.LittleEndian.PutUint32(m[4:], uint32(16+32*len(s.tdvf)))
		binary.LittleEndian.PutUint32(m[8:], 1)
		binary.LittleEndian.PutUint32(m[12:], uint32(len(s.tdvf)))
		for i, t := range s.tdvf {
			b := m[16+32*i:]
			binary.LittleEndian.PutUint32(b[0:], t.DataOffset)
			binary.LittleEndian.PutUint32(b[4:], t.RawDataSize)
			binary.LittleEndian.PutUint64(b[8:], t.MemoryAddress)
			binary.LittleEndian.PutUint64(b[16:], t.MemoryDataSize)
			binary.LittleEndian.PutUint32(b[24:], uint32(t.Type))
			binary.LittleEndian.PutUint32(b[28:], t.Attributes)
		}
	}
	if !s.noSEV {
		entry(sevMetadataGUID, u32(sevMetaOffset))
		m := fw[len(fw)-sevMetaOffset:]
		copy(m, "ASEV")
		binary.LittleEndian.PutUint32(m[4:], uint32(16+12*len(s.sev)))
		binary.LittleEndian.PutUint32(m[8:], 1)
		binary.LittleEndian.PutUint32(m[12:], uint32(len(s.sev)))
		for i, it := range s.sev {
			copy(m[16+12*i:], u32(it.GPA, it.Size, uint32(it.Type)))
		}
	}
	entry(sevHashTableGUID, u32(s.hashGPA, 0x400))
	entry(sevESResetGUID, u32(s.resetEIP))
	end := len(fw) - footerTrailer
	total := len(table) + footerEntryHeader
	copy(fw[end-total:], table)
	binary.LittleEndian.PutUint16(fw[end-18:], uint16(total))
	copy(fw[end-16:], footerTableGUID[:])
	return fw
}
