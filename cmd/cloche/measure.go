package main

import (
	"cmp"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/build"
	"github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/measure"
)

type measureFlags struct {
	tee, kernel, initrd, cmdline, guestImage string
	firmware, vcpuType, guestFeatures, vmm   string
	snpFirmware, tdxFirmware                 string
	mrtdOrder                                string
	vcpus, memory                            int
	cmdlineSet                               bool
}

func newMeasureCmd(g *globals) *cobra.Command {
	f := &measureFlags{}
	cmd := &cobra.Command{
		Use:   "measure --tee sim|snp|tdx [--guest-image DIR | --kernel FILE --initrd FILE --cmdline STRING] [flags]",
		Short: "Compute the launch measurement a guest image will have",
		Long: `Measure recomputes, from the guest image files alone, what the TEE will measure when a guest
is launched from them, and prints it on stdout. A verifier pins the value with
'cloche verify --measurement', or publishes it with 'cloche reference create'.

--tee sim   the simulated secure processor's MEASUREMENT:
              SHA-384("cloche-sim-measurement-v1\x00" || SHA-256(kernel) || SHA-256(initrd) ||
                      u32le(len(cmdline)) || cmdline || u32le(vcpus) || u64le(memory MiB)).
--tee snp   the SEV-SNP launch digest (MEASUREMENT) under QEMU/KVM: the --snp-firmware pages (an
            OvmfPkg/AmdSev build for measured direct boot), its SNP metadata sections, QEMU's
            kernel-hashes table (SHA-256 of the cmdline+NUL, initrd and kernel) when a kernel is
            given, and one VMSA per vCPU for --vcpu-type and --guest-features.
--tee tdx   MRTD from the --tdx-firmware (TDVF) and, with a kernel, RTMR1 and RTMR2, with the
            assumptions they rest on; RTMR0 and RTMR3 cannot be predicted from files alone and
            are named as such.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			f.cmdlineSet = cmd.Flags().Changed("cmdline")
			return runMeasure(g, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.tee, "tee", "sim", "TEE whose measurement to compute: sim, snp or tdx")
	fl.StringVar(&f.guestImage, "guest-image", "", "guest image `DIR` (from 'cloche image guest')")
	fl.StringVar(&f.kernel, "kernel", "", "guest kernel file")
	fl.StringVar(&f.initrd, "initrd", "", "guest initramfs file")
	fl.StringVar(&f.cmdline, "cmdline", "", "guest kernel command line")
	fl.IntVar(&f.vcpus, "vcpus", 2, "guest vCPUs")
	fl.IntVar(&f.memory, "memory", build.DefaultMemoryMiB, "guest memory in MiB (sim; tdx: places the initrd)")
	fl.StringVar(&f.snpFirmware, "snp-firmware", "", "snp: the OVMF AmdSev build QEMU loads with -bios")
	fl.StringVar(&f.tdxFirmware, "tdx-firmware", "", "tdx: the TDVF image QEMU loads with -bios")
	// The old name, for either TEE; one firmware flag name per TEE across commands now.
	fl.StringVar(&f.firmware, "firmware", "", "firmware image loaded with -bios")
	fl.MarkDeprecated("firmware", "use --snp-firmware or --tdx-firmware")
	fl.StringVar(&f.vcpuType, "vcpu-type", "EPYC-v4", "snp: QEMU vCPU type (its CPUID signature is in every VMSA)")
	fl.StringVar(&f.guestFeatures, "guest-features", "0x1", "snp: the VMSA's SEV_FEATURES as the host kernel sets them (0x1 on Linux 6.8+, 0x21 on 6.6-6.7)")
	fl.StringVar(&f.vmm, "vmm", measure.VMMQEMU, "snp: the VMM whose initial vCPU state the VMSAs follow (qemu)")
	fl.StringVar(&f.mrtdOrder, "mrtd-order", "single-pass", "tdx: how the host adds and extends pages: single-pass (upstream KVM) or two-pass (older Intel stacks)")
	return cmd
}

// bootFiles resolves the kernel, initrd and cmdline from --guest-image and the explicit
// flags (explicit flags win). A kernel is required when required is set.
func (f *measureFlags) bootFiles(required bool) (kernel, initrd, cmdline string, err error) {
	kernel, initrd, cmdline = f.kernel, f.initrd, f.cmdline
	if f.guestImage != "" {
		img, err := guestimage.Load(f.guestImage)
		if err != nil {
			return "", "", "", fmt.Errorf("--guest-image: %w", err)
		}
		if kernel == "" {
			kernel = filepath.Join(img.Dir, img.Kernel.Path)
		}
		if initrd == "" {
			initrd = filepath.Join(img.Dir, img.Initrd.Path)
		}
		if !f.cmdlineSet {
			cmdline = img.Cmdline
		}
		return kernel, initrd, cmdline, nil
	}
	if kernel == "" && (initrd != "" || f.cmdlineSet) {
		return "", "", "", errors.New("--initrd and --cmdline need --kernel")
	}
	if required && (kernel == "" || initrd == "" || !f.cmdlineSet) {
		return "", "", "", errors.New("give --guest-image DIR, or all of --kernel, --initrd and --cmdline")
	}
	return kernel, initrd, cmdline, nil
}

func runMeasure(g *globals, f *measureFlags) error {
	if f.vcpus < 1 || f.vcpus > measure.MaxVCPUs {
		return usageError(fmt.Errorf("--vcpus %d: expected 1..%d", f.vcpus, measure.MaxVCPUs))
	}
	if f.memory < 64 {
		return usageError(fmt.Errorf("--memory %d: expected at least 64 MiB", f.memory))
	}
	switch attest.TEE(f.tee) {
	case attest.TEESim:
		if f.firmware != "" || f.snpFirmware != "" || f.tdxFirmware != "" {
			return usageError(errors.New("--snp-firmware/--tdx-firmware: the simulated TEE measures no firmware"))
		}
		kernel, initrd, cmdline, err := f.bootFiles(true)
		if err != nil {
			return err
		}
		m, err := measure.Sim(kernel, initrd, cmdline, f.vcpus, f.memory)
		if err != nil {
			return err
		}
		fmt.Fprintln(g.stdout, hex.EncodeToString(m[:]))
		return nil
	case attest.TEESNP:
		return measureSNP(g.stdout, f)
	case attest.TEETDX:
		return measureTDX(g.stdout, f)
	}
	return usageError(fmt.Errorf("--tee %q: expected sim, snp or tdx", f.tee))
}

func measureSNP(w io.Writer, f *measureFlags) error {
	sig, err := measure.VCPUSignature(f.vcpuType)
	if err != nil {
		return fmt.Errorf("--vcpu-type: %w", err)
	}
	features, err := measure.ParseGuestFeatures(f.guestFeatures)
	if err != nil {
		return fmt.Errorf("--guest-features: %w", err)
	}
	path := cmp.Or(f.snpFirmware, f.firmware)
	if path == "" {
		return usageError(errors.New("--snp-firmware is required for --tee snp (the OVMF image QEMU loads with -bios)"))
	}
	fw, err := measure.ReadFirmware(path)
	if err != nil {
		return fmt.Errorf("--snp-firmware: %w", err)
	}
	kernel, initrd, cmdline, err := f.bootFiles(false)
	if err != nil {
		return err
	}
	o := measure.SNPOptions{Firmware: fw, VCPUs: f.vcpus, VCPUSignature: sig, GuestFeatures: features, VMM: f.vmm}
	if kernel != "" {
		kh, err := measure.HashBootFiles(kernel, initrd, cmdline)
		if err != nil {
			return err
		}
		o.Kernel = &kh
	}
	ld, err := measure.SNPLaunchDigest(o)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, hex.EncodeToString(ld[:]))
	return nil
}

func parseMRTDOrder(s string) (measure.PageAddOrder, error) {
	switch s {
	case "single-pass":
		return measure.SinglePass, nil
	case "two-pass":
		return measure.TwoPass, nil
	}
	return 0, fmt.Errorf("--mrtd-order %q: expected single-pass or two-pass", s)
}

func measureTDX(w io.Writer, f *measureFlags) error {
	order, err := parseMRTDOrder(f.mrtdOrder)
	if err != nil {
		return err
	}
	path := cmp.Or(f.tdxFirmware, f.firmware)
	if path == "" {
		return usageError(errors.New("--tdx-firmware is required for --tee tdx (the TDVF image QEMU loads with -bios)"))
	}
	fw, err := measure.ReadFirmware(path)
	if err != nil {
		return fmt.Errorf("--tdx-firmware: %w", err)
	}
	kernel, initrd, cmdline, err := f.bootFiles(false)
	if err != nil {
		return err
	}
	var boot *measure.TDXBoot
	if kernel != "" {
		if boot, err = measure.TDXBootFromFiles(kernel, initrd, cmdline, uint64(f.memory)); err != nil {
			return err
		}
	}
	v, err := measure.TDX(fw, boot, order)
	if err != nil {
		return err
	}
	writeTDXValues(w, v)
	return nil
}

// writeTDXValues prints one register per line ("NAME hex" or "NAME -" with the reason on
// the following comment line), then the assumptions as comment lines.
func writeTDXValues(w io.Writer, v *measure.TDXValues) {
	fmt.Fprintf(w, "MRTD  %s\n", hex.EncodeToString(v.MRTD[:]))
	fmt.Fprintf(w, "RTMR0 -\n# %s\n", measure.RTMR0Unpredictable)
	for _, r := range []struct {
		name string
		v    *[48]byte
	}{{"RTMR1", v.RTMR1}, {"RTMR2", v.RTMR2}} {
		if r.v == nil {
			fmt.Fprintf(w, "%s -\n# no kernel given: a direct-boot value needs --kernel (or --guest-image)\n", r.name)
			continue
		}
		fmt.Fprintf(w, "%s %s\n", r.name, hex.EncodeToString(r.v[:]))
	}
	fmt.Fprintf(w, "RTMR3 -\n# %s\n", measure.RTMR3Unpredictable)
	fmt.Fprintln(w, "# assumptions:")
	for _, a := range v.Assumptions {
		fmt.Fprintf(w, "# - %s\n", strings.TrimSpace(a))
	}
}
