package measure

import (
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"sort"
	"unicode/utf16"
)

// TDVF section types (TDVF design guide, "TDVF metadata"). QEMU launches only these four.
type TDVFSectionType uint32

const (
	TDVFBFV     TDVFSectionType = 0 // boot firmware volume: code, measured
	TDVFCFV     TDVFSectionType = 1 // configuration firmware volume: variables
	TDVFTDHOB   TDVFSectionType = 2 // TD hand-off block, written by the VMM
	TDVFTempMem TDVFSectionType = 3 // temporary memory for the firmware
)

func (t TDVFSectionType) String() string {
	switch t {
	case TDVFBFV:
		return "BFV"
	case TDVFCFV:
		return "CFV"
	case TDVFTDHOB:
		return "TD_HOB"
	case TDVFTempMem:
		return "TempMem"
	}
	return fmt.Sprintf("unknown(%d)", uint32(t))
}

// TDVF section attributes.
const (
	TDVFAttrMRExtend = 1 << 0 // the section's content is extended into MRTD
	TDVFAttrPageAug  = 1 << 1 // pages are accepted later (TDH.MEM.PAGE.AUG), not added at launch
)

// TDVFSection is one section of the TDVF metadata.
type TDVFSection struct {
	DataOffset     uint32
	RawDataSize    uint32
	MemoryAddress  uint64
	MemoryDataSize uint64
	Type           TDVFSectionType
	Attributes     uint32
}

const (
	tdvfHeaderSize  = 16 // "TDVF", u32 length, u32 version, u32 count
	tdvfSectionSize = 32
	maxTDVFSections = 64
)

// ParseTDVFMetadata reads the TDVF metadata the footer table's TDX entry points to (the
// entry holds the offset from the end of the image to the "TDVF" descriptor). Sections must
// be of a type QEMU launches, with known attributes, page-aligned, their data inside the
// image, and must not overlap in guest memory.
func ParseTDVFMetadata(fw []byte, t *FooterTable) ([]TDVFSection, error) {
	off, ok, err := t.u32Entry(tdxMetadataGUID, "TDX metadata")
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: the footer table has no TDX metadata entry (%s): not a TDVF build", ErrMetadata, tdxMetadataGUID)
	}
	if off < tdvfHeaderSize || int64(off) > int64(len(fw)) {
		return nil, fmt.Errorf("%w: TDVF metadata offset %#x from the end is outside the %d-byte image", ErrMetadata, off, len(fw))
	}
	start := len(fw) - int(off)
	h := fw[start:]
	if string(h[0:4]) != "TDVF" {
		return nil, fmt.Errorf("%w: TDVF metadata at offset %#x starts with %q, expected \"TDVF\"", ErrMetadata, start, h[0:4])
	}
	length := binary.LittleEndian.Uint32(h[4:8])
	version := binary.LittleEndian.Uint32(h[8:12])
	count := binary.LittleEndian.Uint32(h[12:16])
	if version != 1 {
		return nil, fmt.Errorf("%w: TDVF metadata version %d, expected 1", ErrMetadata, version)
	}
	if count == 0 || count > maxTDVFSections {
		return nil, fmt.Errorf("%w: TDVF metadata lists %d sections, expected 1..%d", ErrMetadata, count, maxTDVFSections)
	}
	if want := uint64(tdvfHeaderSize) + uint64(count)*tdvfSectionSize; uint64(length) != want || uint64(length) > uint64(off) {
		return nil, fmt.Errorf("%w: TDVF metadata length %d, expected %d for %d sections, inside the image", ErrMetadata, length, want, count)
	}
	out := make([]TDVFSection, count)
	for i := range out {
		b := h[tdvfHeaderSize+i*tdvfSectionSize:]
		s := TDVFSection{
			DataOffset:     binary.LittleEndian.Uint32(b[0:4]),
			RawDataSize:    binary.LittleEndian.Uint32(b[4:8]),
			MemoryAddress:  binary.LittleEndian.Uint64(b[8:16]),
			MemoryDataSize: binary.LittleEndian.Uint64(b[16:24]),
			Type:           TDVFSectionType(binary.LittleEndian.Uint32(b[24:28])),
			Attributes:     binary.LittleEndian.Uint32(b[28:32]),
		}
		if err := checkTDVFSection(i, s, len(fw)); err != nil {
			return nil, err
		}
		out[i] = s
	}
	sorted := append([]TDVFSection(nil), out...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].MemoryAddress < sorted[j].MemoryAddress })
	for i := 1; i < len(sorted); i++ {
		if sorted[i-1].MemoryAddress+sorted[i-1].MemoryDataSize > sorted[i].MemoryAddress {
			return nil, fmt.Errorf("%w: TDVF sections at %#x and %#x overlap", ErrMetadata, sorted[i-1].MemoryAddress, sorted[i].MemoryAddress)
		}
	}
	return out, nil
}

// maxGPA bounds a TDVF section's guest physical addresses (52-bit physical address space).
const maxGPA = 1 << 52

func checkTDVFSection(i int, s TDVFSection, fwLen int) error {
	fail := func(format string, a ...any) error {
		return fmt.Errorf("%w: TDVF section %d (%s): %s", ErrMetadata, i, s.Type, fmt.Sprintf(format, a...))
	}
	if s.Attributes&^(TDVFAttrMRExtend|TDVFAttrPageAug) != 0 {
		return fail("unknown attributes %#x", s.Attributes)
	}
	if s.MemoryDataSize == 0 || s.MemoryAddress%PageSize != 0 || s.MemoryDataSize%PageSize != 0 ||
		s.MemoryAddress >= maxGPA || s.MemoryDataSize > maxGPA-s.MemoryAddress {
		return fail("memory %#x size %#x is empty, not page-aligned or beyond the address space", s.MemoryAddress, s.MemoryDataSize)
	}
	switch s.Type {
	case TDVFBFV, TDVFCFV:
		if uint64(s.DataOffset)+uint64(s.RawDataSize) > uint64(fwLen) {
			return fail("data %#x+%#x lies outside the %d-byte image", s.DataOffset, s.RawDataSize, fwLen)
		}
		if uint64(s.RawDataSize) != s.MemoryDataSize {
			return fail("raw data size %#x differs from memory size %#x", s.RawDataSize, s.MemoryDataSize)
		}
	case TDVFTDHOB, TDVFTempMem:
		if s.RawDataSize != 0 || s.DataOffset != 0 {
			return fail("carries %#x bytes of image data at %#x, expected none", s.RawDataSize, s.DataOffset)
		}
		if s.Attributes&TDVFAttrMRExtend != 0 {
			return fail("has MR.EXTEND, but its content is not in the image")
		}
	default:
		return fail("type %d is not one QEMU launches (BFV, CFV, TD_HOB, TempMem)", uint32(s.Type))
	}
	return nil
}

// PageAddOrder is how the VMM interleaves TDH.MEM.PAGE.ADD and TDH.MR.EXTEND.
type PageAddOrder int

const (
	// SinglePass adds then extends each page: upstream KVM's KVM_TDX_INIT_MEM_REGION (the
	// default).
	SinglePass PageAddOrder = iota
	// TwoPass adds all of a section's pages, then extends them: older Intel TDX stacks.
	TwoPass
)

func (o PageAddOrder) String() string {
	if o == TwoPass {
		return "two-pass"
	}
	return "single-pass"
}

// MRTD computes the TD's build-time measurement: SHA-384 over 128-byte records, per page of
// each section (PAGE.AUG sections are not added at launch) a MEM.PAGE.ADD record with the
// page's GPA, and for MR.EXTEND sections per 256-byte chunk an MR.EXTEND record with the
// chunk's GPA followed by the chunk itself.
func MRTD(fw []byte, order PageAddOrder) ([48]byte, error) {
	var none [48]byte
	if err := checkFirmware(fw); err != nil {
		return none, err
	}
	t, err := ParseFooterTable(fw)
	if err != nil {
		return none, err
	}
	sections, err := ParseTDVFMetadata(fw, t)
	if err != nil {
		return none, err
	}
	h := sha512.New384()
	var rec [128]byte
	add := func(gpa uint64) {
		clear(rec[:])
		copy(rec[:], "MEM.PAGE.ADD")
		binary.LittleEndian.PutUint64(rec[16:24], gpa)
		h.Write(rec[:])
	}
	extend := func(s TDVFSection, page uint64) {
		for chunk := uint64(0); chunk < PageSize; chunk += 256 {
			clear(rec[:])
			copy(rec[:], "MR.EXTEND")
			binary.LittleEndian.PutUint64(rec[16:24], s.MemoryAddress+page*PageSize+chunk)
			h.Write(rec[:])
			off := uint64(s.DataOffset) + page*PageSize + chunk
			h.Write(fw[off : off+256])
		}
	}
	for _, s := range sections {
		pages := s.MemoryDataSize / PageSize
		doAdd := s.Attributes&TDVFAttrPageAug == 0
		doExtend := s.Attributes&TDVFAttrMRExtend != 0
		switch order {
		case TwoPass:
			for p := uint64(0); doAdd && p < pages; p++ {
				add(s.MemoryAddress + p*PageSize)
			}
			for p := uint64(0); doExtend && p < pages; p++ {
				extend(s, p)
			}
		default:
			for p := uint64(0); p < pages; p++ {
				if doAdd {
					add(s.MemoryAddress + p*PageSize)
				}
				if doExtend {
					extend(s, p)
				}
			}
		}
	}
	var m [48]byte
	copy(m[:], h.Sum(nil))
	return m, nil
}

// RTMRExtend is RTMR = SHA-384(RTMR || digest), as TDG.MR.RTMR.EXTEND does.
func RTMRExtend(rtmr [48]byte, digest [48]byte) [48]byte {
	var b [96]byte
	copy(b[:48], rtmr[:])
	copy(b[48:], digest[:])
	return sha512.Sum384(b[:])
}

// ReplayRTMR extends a zero RTMR with each digest in turn.
func ReplayRTMR(digests [][48]byte) [48]byte {
	var r [48]byte
	for _, d := range digests {
		r = RTMRExtend(r, d)
	}
	return r
}

// TDXBoot describes what the RTMRs of a direct kernel boot depend on.
type TDXBoot struct {
	// Kernel is the bzImage as given to QEMU's -kernel (an EFI-stub kernel).
	Kernel []byte
	// InitrdSHA384 and InitrdSize describe the initrd; InitrdSize 0 means none.
	InitrdSHA384 [48]byte
	InitrdSize   int64
	Cmdline      string
	// MemoryMiB is the guest RAM (-m): QEMU places the initrd below the top of low memory
	// and writes its address into the kernel's setup header.
	MemoryMiB uint64
	// ACPIDataSize is the room QEMU reserves for ACPI tables at the top of low memory
	// (pc/q35 machine types since QEMU 2.x: 0x28000). Zero means that default.
	ACPIDataSize uint32
}

// DefaultACPIDataSize is QEMU's acpi_data_size for current pc and q35 machine types.
const DefaultACPIDataSize = 0x28000

// Digests of the fixed EFI events OVMF logs into RTMR1 around the kernel (the strings are
// hashed without a terminating NUL; the separator is four zero bytes).
var (
	evCallingEFIApp    = sha512.Sum384([]byte("Calling EFI Application from Boot Option"))
	evSeparator        = sha512.Sum384([]byte{0, 0, 0, 0})
	evExitBootServices = sha512.Sum384([]byte("Exit Boot Services Invocation"))
	evExitBootSuccess  = sha512.Sum384([]byte("Exit Boot Services Returned with Success"))
)

// RTMR1 predicts RTMR1 of a TDX guest booted by OVMF from QEMU's -kernel: the Authenticode
// SHA-384 of the kernel after QEMU patched its setup header, then "Calling EFI Application
// from Boot Option", the separator, and the two Exit Boot Services events.
func RTMR1(b TDXBoot) ([48]byte, error) {
	patched, err := patchSetupHeader(b)
	if err != nil {
		return [48]byte{}, err
	}
	kh, err := authenticodeSHA384(patched)
	if err != nil {
		return [48]byte{}, fmt.Errorf("%w: kernel: %w", ErrInput, err)
	}
	return ReplayRTMR([][48]byte{kh, evCallingEFIApp, evSeparator, evExitBootServices, evExitBootSuccess}), nil
}

// RTMR2 predicts RTMR2: the kernel's EFI stub measures its load options (the command line
// in UTF-16LE with a NUL, to which OVMF appends " initrd=initrd" when there is an initrd),
// then the initrd's SHA-384 when there is one.
func RTMR2(b TDXBoot) [48]byte {
	cmdline := b.Cmdline
	if b.InitrdSize > 0 {
		cmdline += " initrd=initrd"
	}
	u := utf16.Encode([]rune(cmdline + "\x00"))
	buf := make([]byte, 2*len(u))
	for i, c := range u {
		binary.LittleEndian.PutUint16(buf[2*i:], c)
	}
	events := [][48]byte{sha512.Sum384(buf)}
	if b.InitrdSize > 0 {
		events = append(events, b.InitrdSHA384)
	}
	return ReplayRTMR(events)
}

// patchSetupHeader returns a copy of the kernel with the setup-header fields QEMU's
// x86_load_linux writes before handing the kernel to the firmware (Linux boot protocol,
// Documentation/arch/x86/boot.rst): type_of_loader, CAN_USE_HEAP and heap_end_ptr, the
// command line pointer, and the initrd's address and size.
func patchSetupHeader(b TDXBoot) ([]byte, error) {
	k := b.Kernel
	if len(k) < 0x1000 {
		return nil, fmt.Errorf("%w: kernel is %d bytes, too short for a bzImage", ErrInput, len(k))
	}
	if string(k[0x202:0x206]) != "HdrS" {
		return nil, fmt.Errorf("%w: kernel has no Linux boot-protocol header (no \"HdrS\" at 0x202)", ErrInput)
	}
	protocol := binary.LittleEndian.Uint16(k[0x206:0x208])
	if protocol < 0x20c {
		return nil, fmt.Errorf("%w: kernel boot protocol %#x is older than 2.12, which no EFI-stub kernel has", ErrInput, protocol)
	}
	out := append([]byte(nil), k...)
	const loadedHigh = 0x01
	realAddr, cmdlineAddr := uint32(0x10000), uint32(0x20000)
	if out[0x211]&loadedHigh == 0 {
		realAddr, cmdlineAddr = 0x90000, 0x9a000
	}
	out[0x210] = 0xb0                                                              // type_of_loader: QEMU
	out[0x211] |= 0x80                                                             // loadflags: CAN_USE_HEAP
	binary.LittleEndian.PutUint16(out[0x224:], uint16(cmdlineAddr-realAddr-0x200)) // heap_end_ptr
	binary.LittleEndian.PutUint32(out[0x228:], cmdlineAddr)                        // cmd_line_ptr
	if b.InitrdSize > 0 {
		initrdMax := uint32(0x37ffffff)
		if xlf := binary.LittleEndian.Uint16(out[0x236:0x238]); xlf&0x40 != 0 { // XLF_CAN_BE_LOADED_ABOVE_4G
			initrdMax = 0xffffffff
		}
		mem := b.MemoryMiB << 20
		if mem == 0 {
			return nil, fmt.Errorf("%w: the guest memory size is needed to place the initrd", ErrInput)
		}
		// q35: low memory ends at 2 GiB when the guest has 2.75 GiB or more, else with RAM.
		below4G := mem
		if mem >= 0xb0000000 {
			below4G = 0x80000000
		}
		acpi := uint64(b.ACPIDataSize)
		if acpi == 0 {
			acpi = DefaultACPIDataSize
		}
		if below4G <= acpi+1 {
			return nil, fmt.Errorf("%w: %d MiB of memory leaves no room for the initrd", ErrInput, b.MemoryMiB)
		}
		if uint64(initrdMax) >= below4G-acpi {
			initrdMax = uint32(below4G - acpi - 1)
		}
		if b.InitrdSize >= int64(initrdMax) {
			return nil, fmt.Errorf("%w: initrd of %d bytes does not fit below %#x", ErrInput, b.InitrdSize, initrdMax)
		}
		addr := (initrdMax - uint32(b.InitrdSize)) &^ 0xfff
		binary.LittleEndian.PutUint32(out[0x218:], addr)                 // ramdisk_image
		binary.LittleEndian.PutUint32(out[0x21c:], uint32(b.InitrdSize)) // ramdisk_size
	}
	return out, nil
}
