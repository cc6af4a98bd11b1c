package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/cloche-dev/cloche/attest"
	guestimage "github.com/cloche-dev/cloche/image/guest"
)

type measureFlags struct {
	tee, kernel, initrd, cmdline, guestImage string
	vcpus, memory                            int
	cmdlineSet                               bool
}

func newMeasureCmd(g *globals) *cobra.Command {
	f := &measureFlags{}
	cmd := &cobra.Command{
		Use:   "measure --tee sim (--guest-image DIR | --kernel FILE --initrd FILE --cmdline STRING) [--vcpus N --memory MiB]",
		Short: "Compute the launch measurement a guest image will have",
		Long: `Measure recomputes, from the guest image files alone, the MEASUREMENT the (simulated)
secure processor puts in every report of a guest launched from them, and prints it in hex.
A verifier pins this value with 'cloche verify --measurement'.

The simulated TEE's measurement is
  SHA-384("cloche-sim-measurement-v1\x00" || SHA-256(kernel) || SHA-256(initrd) ||
          u32le(len(cmdline)) || cmdline || u32le(vcpus) || u64le(memory MiB)).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			f.cmdlineSet = cmd.Flags().Changed("cmdline")
			return runMeasure(g, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.tee, "tee", "sim", "TEE whose measurement to compute (sim in this release)")
	fl.StringVar(&f.guestImage, "guest-image", "", "guest image directory (from `cloche image guest`)")
	fl.StringVar(&f.kernel, "kernel", "", "guest kernel file")
	fl.StringVar(&f.initrd, "initrd", "", "guest initramfs file")
	fl.StringVar(&f.cmdline, "cmdline", "", "guest kernel command line")
	fl.IntVar(&f.vcpus, "vcpus", 2, "guest vCPUs")
	fl.IntVar(&f.memory, "memory", 2048, "guest memory in MiB")
	return cmd
}

func runMeasure(g *globals, f *measureFlags) error {
	if f.tee != "sim" {
		return fmt.Errorf("--tee %s: only the simulated TEE's measurement is computed by this release (expected --tee sim)", f.tee)
	}
	if f.vcpus < 1 || f.vcpus > 512 {
		return fmt.Errorf("--vcpus %d: expected 1..512", f.vcpus)
	}
	if f.memory < 64 {
		return fmt.Errorf("--memory %d: expected at least 64 MiB", f.memory)
	}
	kernel, initrd, cmdline := f.kernel, f.initrd, f.cmdline
	if f.guestImage != "" {
		img, err := guestimage.Load(f.guestImage)
		if err != nil {
			return fmt.Errorf("--guest-image: %w", err)
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
	} else if kernel == "" || initrd == "" || !f.cmdlineSet {
		return errors.New("give --guest-image DIR, or all of --kernel, --initrd and --cmdline")
	}
	in, err := attest.LaunchInputsFromFiles(kernel, initrd, cmdline, uint32(f.vcpus), uint64(f.memory))
	if err != nil {
		return err
	}
	m := attest.SimMeasurement(in)
	fmt.Fprintln(g.stdout, hex.EncodeToString(m[:]))
	return nil
}
