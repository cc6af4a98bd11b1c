package measure

import (
	"crypto/sha512"
	"fmt"
)

// RTMR0Unpredictable is said instead of an RTMR0 value: it cannot be predicted from the
// guest image files alone.
const RTMR0Unpredictable = "RTMR0 cannot be predicted from files alone: it measures the TD HOB (memory map), " +
	"the CFV variables, Secure Boot state and the ACPI tables QEMU generates for the host's memory size, " +
	"vCPU count and devices; pin it per host configuration or replay the guest's CCEL event log"

// RTMR3Unpredictable is said instead of an RTMR3 value: the guest extends it at run time.
const RTMR3Unpredictable = "RTMR3 is extended by the guest at run time and has no launch value"

// TDXAssumptions are the conditions under which the predicted TDX values hold; they are
// printed next to the values.
func TDXAssumptions(order PageAddOrder, boot *TDXBoot) []string {
	a := []string{
		fmt.Sprintf("MRTD: QEMU with -bios (TDVF loaded whole, ending at 4 GiB), %s page add/extend (%s)", order,
			map[PageAddOrder]string{SinglePass: "upstream KVM, host Linux 6.16+", TwoPass: "older Intel TDX host stacks"}[order]),
	}
	if boot != nil {
		acpi := boot.ACPIDataSize
		if acpi == 0 {
			acpi = DefaultACPIDataSize
		}
		a = append(a,
			fmt.Sprintf("RTMR1: QEMU direct kernel boot (-kernel) on a q35 machine, %d MiB of guest memory, ACPI data size %#x, no setup_data added by QEMU; OVMF measures the kernel's Authenticode SHA-384 after QEMU patched its setup header", boot.MemoryMiB, acpi),
			"RTMR2: an EFI-stub kernel (Linux 6.1+) that measures its command line (UTF-16LE, NUL-terminated, OVMF's \" initrd=initrd\" appended when there is an initrd) and the initrd it loads")
	}
	return a
}

// TDXValues are the TDX measurement registers predicted for a launch.
type TDXValues struct {
	MRTD [48]byte
	// RTMR1 and RTMR2 are nil when no kernel was given.
	RTMR1, RTMR2 *[48]byte
	Order        PageAddOrder
	Assumptions  []string
}

// TDX predicts MRTD from the TDVF firmware and, with a kernel, RTMR1 and RTMR2.
func TDX(fw []byte, boot *TDXBoot, order PageAddOrder) (*TDXValues, error) {
	m, err := MRTD(fw, order)
	if err != nil {
		return nil, err
	}
	v := &TDXValues{MRTD: m, Order: order, Assumptions: TDXAssumptions(order, boot)}
	if boot != nil {
		r1, err := RTMR1(*boot)
		if err != nil {
			return nil, err
		}
		r2 := RTMR2(*boot)
		v.RTMR1, v.RTMR2 = &r1, &r2
	}
	return v, nil
}

// TDXBootFromFiles reads the kernel and hashes the initrd ("" for none) of a direct boot.
func TDXBootFromFiles(kernel, initrd, cmdline string, memoryMiB uint64) (*TDXBoot, error) {
	if kernel == "" {
		return nil, fmt.Errorf("%w: no kernel file given", ErrInput)
	}
	k, err := readBootFile(kernel)
	if err != nil {
		return nil, fmt.Errorf("%w: kernel: %w", ErrInput, err)
	}
	b := &TDXBoot{Kernel: k, Cmdline: cmdline, MemoryMiB: memoryMiB}
	if initrd != "" {
		h := sha512.New384()
		n, err := hashFile(initrd, h)
		if err != nil {
			return nil, fmt.Errorf("%w: initrd: %w", ErrInput, err)
		}
		b.InitrdSize = n
		copy(b.InitrdSHA384[:], h.Sum(nil))
	}
	return b, nil
}

// Sim is the simulated TEE's MEASUREMENT for a guest launched from these files with this
// shape: exactly what the simulated secure processor puts in its reports
// (SimMeasurement).
func Sim(kernel, initrd, cmdline string, vcpus int, memoryMiB int) ([48]byte, error) {
	if vcpus < 1 || vcpus > MaxVCPUs {
		return [48]byte{}, fmt.Errorf("%w: %d vCPUs, expected 1..%d", ErrInput, vcpus, MaxVCPUs)
	}
	if memoryMiB < 1 {
		return [48]byte{}, fmt.Errorf("%w: memory %d MiB, expected a positive size", ErrInput, memoryMiB)
	}
	in, err := LaunchInputsFromFiles(kernel, initrd, cmdline, uint32(vcpus), uint64(memoryMiB))
	if err != nil {
		return [48]byte{}, fmt.Errorf("%w: %w", ErrInput, err)
	}
	return SimMeasurement(in), nil
}
