package build

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/attest"
	guestimage "github.com/cloche-dev/cloche/image/guest"
	"github.com/cloche-dev/cloche/measure"
	"github.com/cloche-dev/cloche/vmm"
)

// The simulated launch is measured from the digests guestimage.Load checked, without
// reading the kernel and initrd again: here they do not even exist.
func TestSimLaunchMeasuredFromCheckedDigests(t *testing.T) {
	o := &Options{TEE: attest.TEESim, SimDir: t.TempDir(), VCPUs: 2, MemoryMiB: 2048}
	o.setDefaults()
	h, err := newHostTEE(o)
	if err != nil {
		t.Fatal(err)
	}
	gimg := &guestimage.Image{Dir: filepath.Join(t.TempDir(), "absent"), Cmdline: guestimage.DefaultCmdline,
		Kernel: guestimage.File{Path: guestimage.KernelFile, SHA256: strings.Repeat("ab", 32), Size: 1},
		Initrd: guestimage.File{Path: guestimage.InitrdFile, SHA256: strings.Repeat("cd", 32), Size: 1}}
	var cfg vmm.Config
	if err := h.configure(&cfg, o, gimg, [32]byte{7}); err != nil {
		t.Fatalf("configure: %v", err)
	}
	in := measure.LaunchInputs{Cmdline: gimg.Cmdline, VCPUs: 2, MemoryMiB: 2048}
	for i := range in.KernelSHA256 {
		in.KernelSHA256[i], in.InitrdSHA256[i] = 0xab, 0xcd
	}
	if h.launch.Measurement != measure.SimMeasurement(in) || h.launch.HostData != [32]byte{7} || cfg.SimService == nil {
		t.Errorf("simulated launch %x, want the measurement of the recorded digests", h.launch.Measurement)
	}
}
