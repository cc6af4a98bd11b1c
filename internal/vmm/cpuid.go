package vmm

import "fmt"

// sevCPUIDLeaf is CPUID Fn8000_001F, AMD's "Encrypted Memory Capabilities" leaf.
const sevCPUIDLeaf = 0x8000001F

// SEVCPUID is what CPUID Fn8000_001F says about the host's AMD memory encryption. QEMU needs
// CBitPos and ReducedPhysBits for every SEV guest; they differ between CPU generations and
// firmware settings, so cloche reads them instead of assuming a value.
type SEVCPUID struct {
	SME, SEV, SEVES, SNP bool
	// CBitPos is the page-table bit that marks a page encrypted (EBX[5:0]).
	CBitPos uint32
	// ReducedPhysBits is how many physical address bits encryption takes away (EBX[11:6]).
	ReducedPhysBits uint32
}

// ParseSEVCPUID decodes CPUID Fn8000_001F given the highest extended leaf the CPU reports
// (CPUID Fn8000_0000 EAX) and the leaf's EAX and EBX. It fails when the leaf does not exist
// (an Intel CPU, an old AMD CPU, or a hypervisor hiding it) or reports no C-bit although it
// claims SEV.
func ParseSEVCPUID(maxExtLeaf, eax, ebx uint32) (SEVCPUID, error) {
	if maxExtLeaf < sevCPUIDLeaf {
		return SEVCPUID{}, fmt.Errorf("vmm: CPUID leaf 0x%X is not available (highest extended leaf 0x%X): not an AMD CPU with memory encryption", uint32(sevCPUIDLeaf), maxExtLeaf)
	}
	c := SEVCPUID{
		SME:             eax&(1<<0) != 0,
		SEV:             eax&(1<<1) != 0,
		SEVES:           eax&(1<<3) != 0,
		SNP:             eax&(1<<4) != 0,
		CBitPos:         ebx & 0x3f,
		ReducedPhysBits: (ebx >> 6) & 0x3f,
	}
	if (c.SEV || c.SNP) && c.CBitPos == 0 {
		return SEVCPUID{}, fmt.Errorf("vmm: CPUID leaf 0x%X reports SEV but C-bit position 0 (EBX 0x%08x)", uint32(sevCPUIDLeaf), ebx)
	}
	return c, nil
}
