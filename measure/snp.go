package measure

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// SEV metadata section types (OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm).
type SEVSectionType uint32

const (
	SectionSNPSecMem    SEVSectionType = 1
	SectionSNPSecrets   SEVSectionType = 2
	SectionCPUID        SEVSectionType = 3
	SectionSVSMCAA      SEVSectionType = 4
	SectionKernelHashes SEVSectionType = 0x10
)

func (t SEVSectionType) String() string {
	switch t {
	case SectionSNPSecMem:
		return "SNP_SEC_MEM"
	case SectionSNPSecrets:
		return "SNP_SECRETS"
	case SectionCPUID:
		return "CPUID"
	case SectionSVSMCAA:
		return "SVSM_CAA"
	case SectionKernelHashes:
		return "SNP_KERNEL_HASHES"
	}
	return fmt.Sprintf("unknown(%#x)", uint32(t))
}

// SEVSection is one item of the firmware's SEV metadata: memory QEMU pre-validates (and so
// measures) at launch.
type SEVSection struct {
	GPA  uint32
	Size uint32
	Type SEVSectionType
}

const (
	sevMetadataHeaderSize = 16 // "ASEV", u32 size, u32 version, u32 count
	sevMetadataItemSize   = 12
	// maxSEVSections bounds the count read from the image; real builds have 5-6.
	maxSEVSections = 64
)

// ParseSEVMetadata reads the "ASEV" metadata the footer table points to (its entry holds
// the offset from the end of the image). It returns nil, nil when the table has no such
// entry. Sections must be page-aligned, non-empty, of a known type, below 4 GiB, and must
// not overlap each other or the firmware itself.
func ParseSEVMetadata(fw []byte, t *FooterTable) ([]SEVSection, error) {
	off, ok, err := t.u32Entry(sevMetadataGUID, "SEV metadata")
	if err != nil || !ok {
		return nil, err
	}
	if off < sevMetadataHeaderSize || int64(off) > int64(len(fw)) {
		return nil, fmt.Errorf("%w: SEV metadata offset %#x from the end is outside the %d-byte image", ErrMetadata, off, len(fw))
	}
	start := len(fw) - int(off)
	h := fw[start:]
	if string(h[0:4]) != "ASEV" {
		return nil, fmt.Errorf("%w: SEV metadata at offset %#x starts with %q, expected \"ASEV\"", ErrMetadata, start, h[0:4])
	}
	size := binary.LittleEndian.Uint32(h[4:8])
	version := binary.LittleEndian.Uint32(h[8:12])
	count := binary.LittleEndian.Uint32(h[12:16])
	if version != 1 {
		return nil, fmt.Errorf("%w: SEV metadata version %d, expected 1", ErrMetadata, version)
	}
	if count == 0 || count > maxSEVSections {
		return nil, fmt.Errorf("%w: SEV metadata lists %d sections, expected 1..%d", ErrMetadata, count, maxSEVSections)
	}
	need := uint64(sevMetadataHeaderSize) + uint64(count)*sevMetadataItemSize
	if uint64(size) < need || uint64(size) > uint64(off) {
		return nil, fmt.Errorf("%w: SEV metadata size %d must hold %d sections (%d bytes) and fit in the image", ErrMetadata, size, count, need)
	}
	fwStart := uint64(1<<32) - uint64(len(fw))
	out := make([]SEVSection, count)
	for i := range out {
		it := h[sevMetadataHeaderSize+i*sevMetadataItemSize:]
		s := SEVSection{
			GPA:  binary.LittleEndian.Uint32(it[0:4]),
			Size: binary.LittleEndian.Uint32(it[4:8]),
			Type: SEVSectionType(binary.LittleEndian.Uint32(it[8:12])),
		}
		switch s.Type {
		case SectionSNPSecMem, SectionSNPSecrets, SectionCPUID, SectionSVSMCAA, SectionKernelHashes:
		default:
			return nil, fmt.Errorf("%w: SEV metadata section %d has unknown type %#x", ErrMetadata, i, uint32(s.Type))
		}
		end := uint64(s.GPA) + uint64(s.Size)
		switch {
		case s.Size == 0 || s.GPA%PageSize != 0 || s.Size%PageSize != 0:
			return nil, fmt.Errorf("%w: SEV metadata section %d (%s) at %#x size %#x is empty or not page-aligned", ErrMetadata, i, s.Type, s.GPA, s.Size)
		case end > fwStart:
			return nil, fmt.Errorf("%w: SEV metadata section %d (%s) %#x..%#x overlaps the firmware at %#x", ErrMetadata, i, s.Type, s.GPA, end, fwStart)
		case (s.Type == SectionSNPSecrets || s.Type == SectionCPUID) && s.Size != PageSize:
			return nil, fmt.Errorf("%w: SEV metadata section %d (%s) is %#x bytes, expected one page", ErrMetadata, i, s.Type, s.Size)
		}
		out[i] = s
	}
	sorted := append([]SEVSection(nil), out...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].GPA < sorted[j].GPA })
	for i := 1; i < len(sorted); i++ {
		if uint64(sorted[i-1].GPA)+uint64(sorted[i-1].Size) > uint64(sorted[i].GPA) {
			return nil, fmt.Errorf("%w: SEV metadata sections at %#x and %#x overlap", ErrMetadata, sorted[i-1].GPA, sorted[i].GPA)
		}
	}
	return out, nil
}

// Page types of the SNP PAGE_INFO structure (SNP firmware ABI, SNP_LAUNCH_UPDATE).
const (
	pageNormal  = 1
	pageVMSA    = 2
	pageZero    = 3
	pageSecrets = 5
	pageCPUID   = 6
)

// vmsaGPA is where the VMSA pages are recorded: (u64)-1, page-aligned, bits above 47 clear,
// as QEMU/KVM do.
const vmsaGPA = 0xFFFFFFFFF000

// launchDigest is the SNP launch digest being extended page by page.
type launchDigest [48]byte

// update extends the digest with one 0x70-byte PAGE_INFO.
func (ld *launchDigest) update(pageType byte, gpa uint64, contents *[48]byte) {
	var pi [0x70]byte
	copy(pi[0:48], ld[:])
	copy(pi[48:96], contents[:])
	binary.LittleEndian.PutUint16(pi[96:98], 0x70)
	pi[98] = pageType
	// IMI_PAGE, VMPL3/2/1 permissions and the reserved byte stay zero.
	binary.LittleEndian.PutUint64(pi[104:112], gpa)
	*ld = sha512.Sum384(pi[:])
}

func (ld *launchDigest) normalPages(gpa uint64, data []byte) {
	for off := 0; off < len(data); off += PageSize {
		sum := sha512.Sum384(data[off : off+PageSize])
		ld.update(pageNormal, gpa+uint64(off), &sum)
	}
}

func (ld *launchDigest) emptyPages(pageType byte, gpa, size uint64) {
	var zero [48]byte
	for off := uint64(0); off < size; off += PageSize {
		ld.update(pageType, gpa+off, &zero)
	}
}

// SNPFirmwareDigest is the launch digest after the firmware pages alone (sev-snp-measure's
// "OVMF hash"): the image as NORMAL pages ending at 4 GiB.
func SNPFirmwareDigest(fw []byte) ([48]byte, error) {
	if err := checkFirmware(fw); err != nil {
		return [48]byte{}, err
	}
	var ld launchDigest
	ld.normalPages(uint64(1<<32)-uint64(len(fw)), fw)
	return ld, nil
}

// KernelHashes are the SHA-256 digests QEMU puts in the SEV hashes table for measured
// direct boot (sev-guest/sev-snp-guest kernel-hashes=on).
type KernelHashes struct {
	Cmdline, Initrd, Kernel [32]byte
}

// HashBootFiles hashes the files of a direct kernel boot the way QEMU does for the SEV
// hashes table: the kernel file unmodified, the initrd (empty input when initrd is ""), and
// the command line with its terminating NUL.
func HashBootFiles(kernel, initrd, cmdline string) (KernelHashes, error) {
	var k KernelHashes
	if kernel == "" {
		return k, fmt.Errorf("%w: no kernel file given", ErrInput)
	}
	var err error
	if k.Kernel, err = sha256File(kernel); err != nil {
		return k, fmt.Errorf("%w: kernel: %w", ErrInput, err)
	}
	if initrd == "" {
		k.Initrd = sha256.Sum256(nil)
	} else if k.Initrd, err = sha256File(initrd); err != nil {
		return k, fmt.Errorf("%w: initrd: %w", ErrInput, err)
	}
	k.Cmdline = sha256.Sum256(append([]byte(cmdline), 0))
	return k, nil
}

// GUIDs of QEMU's SEV hashes table (target/i386/sev.c).
var (
	hashTableHeaderGUID = mustGUID("9438d606-4f22-4cc9-b479-a793d411fd21")
	hashCmdlineGUID     = mustGUID("97d02dd8-bd20-4c94-aa78-e7714d36ab2a")
	hashInitrdGUID      = mustGUID("44baf731-3a2f-4bd7-9af1-41e29169781d")
	hashKernelGUID      = mustGUID("4de79437-abd2-427f-b835-d5b172d2045b")
)

const (
	hashEntrySize       = 16 + 2 + 32                // GUID, u16 length, SHA-256
	hashTableSize       = 16 + 2 + 3*hashEntrySize   // 168
	paddedHashTableSize = (hashTableSize + 15) &^ 15 // 176: QEMU pads to 16 bytes
)

// Table is QEMU's PaddedSevHashTable: header {GUID, u16 168} then cmdline, initrd and
// kernel entries {GUID, u16 50, SHA-256}, zero-padded to 176 bytes.
func (k KernelHashes) Table() [paddedHashTableSize]byte {
	var t [paddedHashTableSize]byte
	copy(t[0:16], hashTableHeaderGUID[:])
	binary.LittleEndian.PutUint16(t[16:18], hashTableSize)
	off := 18
	for _, e := range []struct {
		g GUID
		h [32]byte
	}{{hashCmdlineGUID, k.Cmdline}, {hashInitrdGUID, k.Initrd}, {hashKernelGUID, k.Kernel}} {
		copy(t[off:off+16], e.g[:])
		binary.LittleEndian.PutUint16(t[off+16:off+18], hashEntrySize)
		copy(t[off+18:off+50], e.h[:])
		off += hashEntrySize
	}
	return t
}

// vCPU types QEMU defines for AMD EPYC guests, with the family, model and stepping of
// their CPUID leaf 1 (target/i386/cpu.c). Versioned aliases share their base model's
// signature.
var vcpuModels = map[string][3]uint32{
	"EPYC":       {23, 1, 2},
	"EPYC-IBPB":  {23, 1, 2},
	"EPYC-Rome":  {23, 49, 0},
	"EPYC-Milan": {25, 1, 1},
	"EPYC-Genoa": {25, 17, 0},
	"EPYC-Turin": {26, 0, 0},
}

var vcpuVersions = map[string]int{"EPYC": 4, "EPYC-Rome": 5, "EPYC-Milan": 3, "EPYC-Genoa": 2, "EPYC-Turin": 1}

// VCPUTypes lists the vCPU type names VCPUSignature accepts.
func VCPUTypes() []string {
	var out []string
	for base := range vcpuModels {
		out = append(out, base)
		for v := 1; v <= vcpuVersions[base]; v++ {
			out = append(out, fmt.Sprintf("%s-v%d", base, v))
		}
	}
	sort.Strings(out)
	return out
}

// VCPUSignature is CPUID(1).EAX of a QEMU vCPU type, which QEMU puts in RDX of every
// initial VMSA: stepping | model[3:0]<<4 | family[3:0]<<8 | model[7:4]<<16 | ext-family<<20,
// where a family above 15 is 15 plus the extended family.
func VCPUSignature(vcpuType string) (uint32, error) {
	base := vcpuType
	if i := strings.LastIndex(vcpuType, "-v"); i > 0 {
		if n, err := strconv.Atoi(vcpuType[i+2:]); err == nil {
			if max, ok := vcpuVersions[vcpuType[:i]]; ok && n >= 1 && n <= max {
				base = vcpuType[:i]
			}
		}
	}
	fms, ok := vcpuModels[base]
	if !ok {
		return 0, fmt.Errorf("%w %q: expected one of %s", ErrVCPUType, vcpuType, strings.Join(VCPUTypes(), ", "))
	}
	family, model, stepping := fms[0], fms[1], fms[2]
	extFamily := uint32(0)
	if family > 0xf {
		extFamily = family - 0xf
		family = 0xf
	}
	return extFamily<<20 | (model>>4)<<16 | family<<8 | (model&0xf)<<4 | stepping&0xf, nil
}

// ParseGuestFeatures reads a SEV_FEATURES value such as "0x21" or "1". Bit 0 (SNPActive)
// must be set: every SNP guest's VMSA has it.
func ParseGuestFeatures(s string) (uint64, error) {
	v, err := strconv.ParseUint(strings.TrimSpace(s), 0, 64)
	if err != nil {
		return 0, fmt.Errorf("%w %q: expected a number such as 0x1 or 0x21", ErrGuestFeatures, s)
	}
	if v&1 == 0 {
		return 0, fmt.Errorf("%w %#x: bit 0 (SNPActive) is clear, but every SNP guest sets it", ErrGuestFeatures, v)
	}
	return v, nil
}

// VMM names the hypervisor whose initial vCPU state the VMSAs follow. Only QEMU/KVM is
// supported: EC2 and GCE set other register values.
const VMMQEMU = "qemu"

// SNPOptions describe an SNP launch.
type SNPOptions struct {
	// Firmware is the whole OVMF image loaded with -bios (ends at 4 GiB).
	Firmware []byte
	// Kernel, when set, are the hashes of a measured direct boot (kernel-hashes=on).
	Kernel *KernelHashes
	VCPUs  int
	// VCPUSignature is CPUID(1).EAX of the vCPU type (see VCPUSignature).
	VCPUSignature uint32
	// GuestFeatures is the VMSA's SEV_FEATURES, as the host kernel sets it (0x1 on Linux
	// 6.8+ KVM for most guests, 0x21 when debug-swap is on, the 6.6-6.7 default).
	GuestFeatures uint64
	// VMM is VMMQEMU (the default when empty).
	VMM string
}

// MaxVCPUs bounds the vCPU count of a measured launch.
const MaxVCPUs = 512

// SNPLaunchDigest computes the MEASUREMENT of an SNP launch under QEMU/KVM: the firmware
// as NORMAL pages; the SEV metadata sections in table order (SNP_SEC_MEM and SVSM_CAA as
// ZERO pages, the SECRETS and CPUID pages, SNP_KERNEL_HASHES as one NORMAL page holding the
// hashes table at the table's page offset when a kernel is given, else ZERO pages); then
// one VMSA page per vCPU (the BSP starts at 0xfffffff0, APs at the SEV-ES reset block's
// address).
func SNPLaunchDigest(o SNPOptions) ([48]byte, error) {
	var none [48]byte
	if err := o.check(); err != nil {
		return none, err
	}
	table, sections, apEIP, err := snpFirmwareLayout(o)
	if err != nil {
		return none, err
	}
	var hashPage []byte
	if o.Kernel != nil {
		if hashPage, err = kernelHashPage(o.Kernel, table, sections); err != nil {
			return none, err
		}
	}
	var ld launchDigest
	ld.normalPages(uint64(1<<32)-uint64(len(o.Firmware)), o.Firmware)
	ld.sevSections(sections, hashPage)
	ld.vmsas(o, apEIP)
	return ld, nil
}

// check refuses options no QEMU/KVM SNP launch has.
func (o SNPOptions) check() error {
	if err := checkFirmware(o.Firmware); err != nil {
		return err
	}
	if o.VCPUs < 1 || o.VCPUs > MaxVCPUs {
		return fmt.Errorf("%w: %d vCPUs, expected 1..%d", ErrInput, o.VCPUs, MaxVCPUs)
	}
	if o.VMM != "" && o.VMM != VMMQEMU {
		return fmt.Errorf("%w: VMM %q: only %q is supported (EC2 and GCE start vCPUs with other register values)", ErrInput, o.VMM, VMMQEMU)
	}
	if o.GuestFeatures&1 == 0 {
		return fmt.Errorf("%w %#x: bit 0 (SNPActive) is clear", ErrGuestFeatures, o.GuestFeatures)
	}
	return nil
}

// snpFirmwareLayout reads the firmware's footer table, its SEV metadata sections and the
// APs' start address from the SEV-ES reset block.
func snpFirmwareLayout(o SNPOptions) (*FooterTable, []SEVSection, uint32, error) {
	table, err := ParseFooterTable(o.Firmware)
	if err != nil {
		return nil, nil, 0, err
	}
	sections, err := ParseSEVMetadata(o.Firmware, table)
	if err != nil {
		return nil, nil, 0, err
	}
	if sections == nil {
		return nil, nil, 0, fmt.Errorf("%w: the footer table has no SEV metadata entry (%s): this firmware cannot launch an SNP guest", ErrMetadata, sevMetadataGUID)
	}
	apEIP, ok, err := table.u32Entry(sevESResetGUID, "SEV-ES reset block")
	if err != nil {
		return nil, nil, 0, err
	}
	if !ok {
		return nil, nil, 0, fmt.Errorf("%w: the footer table has no SEV-ES reset block (%s): the APs' start address is unknown", ErrMetadata, sevESResetGUID)
	}
	if o.VCPUs > 1 && apEIP == 0 {
		return nil, nil, 0, fmt.Errorf("%w: the SEV-ES reset block's AP start address is 0", ErrMetadata)
	}
	return table, sections, apEIP, nil
}

// kernelHashPage is the SNP_KERNEL_HASHES page of a measured direct boot: the hashes
// table at the SEV hash table's offset in the page, zeros elsewhere.
func kernelHashPage(k *KernelHashes, table *FooterTable, sections []SEVSection) ([]byte, error) {
	var hs *SEVSection
	for i := range sections {
		if sections[i].Type == SectionKernelHashes {
			hs = &sections[i]
		}
	}
	if hs == nil {
		return nil, fmt.Errorf("%w: a kernel was given, but this firmware's SEV metadata has no SNP_KERNEL_HASHES section, so QEMU could not measure the kernel, initrd and command line (use an OvmfPkg/AmdSev build)", ErrNoKernelHashes)
	}
	gpa, ok, err := table.u32Entry(sevHashTableGUID, "SEV hash table")
	if err != nil {
		return nil, err
	}
	if !ok || gpa == 0 {
		return nil, fmt.Errorf("%w: a kernel was given, but the footer table names no SEV hash table address", ErrNoKernelHashes)
	}
	if hs.Size != PageSize {
		return nil, fmt.Errorf("%w: SNP_KERNEL_HASHES section is %#x bytes, expected one page", ErrMetadata, hs.Size)
	}
	off := gpa & (PageSize - 1)
	if gpa&^(PageSize-1) != hs.GPA || off+paddedHashTableSize > PageSize {
		return nil, fmt.Errorf("%w: SEV hash table at %#x does not fit in the SNP_KERNEL_HASHES page at %#x", ErrMetadata, gpa, hs.GPA)
	}
	t := k.Table()
	hashPage := make([]byte, PageSize)
	copy(hashPage[off:], t[:])
	return hashPage, nil
}

// sevSections measures the SEV metadata sections in table order; SNP_KERNEL_HASHES holds
// hashPage when a kernel is given, else zeros.
func (ld *launchDigest) sevSections(sections []SEVSection, hashPage []byte) {
	for _, s := range sections {
		gpa, size := uint64(s.GPA), uint64(s.Size)
		switch s.Type {
		case SectionSNPSecMem, SectionSVSMCAA:
			ld.emptyPages(pageZero, gpa, size)
		case SectionSNPSecrets:
			ld.emptyPages(pageSecrets, gpa, size)
		case SectionCPUID:
			ld.emptyPages(pageCPUID, gpa, size)
		case SectionKernelHashes:
			if hashPage != nil {
				ld.normalPages(gpa, hashPage)
			} else {
				ld.emptyPages(pageZero, gpa, size)
			}
		}
	}
}

// vmsas measures one VMSA page per vCPU: the BSP's starting at 0xfffffff0, the APs' at
// apEIP.
func (ld *launchDigest) vmsas(o SNPOptions, apEIP uint32) {
	bsp := vmsaPage(0xfffffff0, o.VCPUSignature, o.GuestFeatures)
	bspSum := sha512.Sum384(bsp[:])
	var apSum [48]byte
	if o.VCPUs > 1 {
		ap := vmsaPage(apEIP, o.VCPUSignature, o.GuestFeatures)
		apSum = sha512.Sum384(ap[:])
	}
	for i := 0; i < o.VCPUs; i++ {
		if i == 0 {
			ld.update(pageVMSA, vmsaGPA, &bspSum)
		} else {
			ld.update(pageVMSA, vmsaGPA, &apSum)
		}
	}
}

// vmsaPage is the initial VMSA QEMU/KVM (host Linux 6.10+) gives a vCPU that starts at eip:
// real mode, CS based so that CS:IP is eip, the architectural reset values KVM sets, and
// RDX holding the CPUID signature. Offsets follow the VMSA layout (AMD APM vol. 2, B-4).
func vmsaPage(eip, vcpuSig uint32, sevFeatures uint64) [PageSize]byte {
	var p [PageSize]byte
	seg := func(off int, selector, attrib uint16, limit uint32, base uint64) {
		binary.LittleEndian.PutUint16(p[off:], selector)
		binary.LittleEndian.PutUint16(p[off+2:], attrib)
		binary.LittleEndian.PutUint32(p[off+4:], limit)
		binary.LittleEndian.PutUint64(p[off+8:], base)
	}
	u64 := func(off int, v uint64) { binary.LittleEndian.PutUint64(p[off:], v) }
	seg(0x000, 0, 0x93, 0xffff, 0)                           // es
	seg(0x010, 0xf000, 0x9b, 0xffff, uint64(eip&0xffff0000)) // cs
	seg(0x020, 0, 0x93, 0xffff, 0)                           // ss
	seg(0x030, 0, 0x93, 0xffff, 0)                           // ds
	seg(0x040, 0, 0x93, 0xffff, 0)                           // fs
	seg(0x050, 0, 0x93, 0xffff, 0)                           // gs
	seg(0x060, 0, 0, 0xffff, 0)                              // gdtr
	seg(0x070, 0, 0x82, 0xffff, 0)                           // ldtr
	seg(0x080, 0, 0, 0xffff, 0)                              // idtr
	seg(0x090, 0, 0x8b, 0xffff, 0)                           // tr
	u64(0x0d0, 0x1000)                                       // efer: SVME, set by KVM
	u64(0x148, 0x40)                                         // cr4: MCE, set by KVM
	u64(0x158, 0x10)                                         // cr0: ET
	u64(0x160, 0x400)                                        // dr7
	u64(0x168, 0xffff0ff0)                                   // dr6
	u64(0x170, 0x2)                                          // rflags
	u64(0x178, uint64(eip&0xffff))                           // rip
	u64(0x268, 0x0007040600070406)                           // g_pat: the PAT reset value
	u64(0x310, uint64(vcpuSig))                              // rdx: CPUID(1).EAX
	u64(0x3b0, sevFeatures)                                  // sev_features
	u64(0x3e8, 0x1)                                          // xcr0: x87
	binary.LittleEndian.PutUint32(p[0x408:], 0x1f80)         // mxcsr
	binary.LittleEndian.PutUint16(p[0x410:], 0x37f)          // x87 fcw
	return p
}
