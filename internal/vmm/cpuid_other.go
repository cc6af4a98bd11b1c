//go:build !amd64

package vmm

import "fmt"

// HostSEVCPUID is only meaningful on x86-64: SEV-SNP exists only on AMD x86-64 CPUs.
func HostSEVCPUID() (SEVCPUID, error) {
	return SEVCPUID{}, fmt.Errorf("vmm: CPUID leaf 0x%X: not an x86-64 host", sevCPUIDLeaf)
}
