package vmm

// cpuid executes the CPUID instruction (cpuid_amd64.s).
func cpuid(leaf, subleaf uint32) (eax, ebx, ecx, edx uint32)

// HostSEVCPUID reads CPUID Fn8000_001F on the CPU this runs on: the AMD memory-encryption
// features and the C-bit position QEMU needs for an SEV-SNP guest.
func HostSEVCPUID() (SEVCPUID, error) {
	maxExt, _, _, _ := cpuid(0x80000000, 0)
	var eax, ebx uint32
	if maxExt >= sevCPUIDLeaf {
		eax, ebx, _, _ = cpuid(sevCPUIDLeaf, 0)
	}
	return ParseSEVCPUID(maxExt, eax, ebx)
}
