package build

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/internal/image/toolchain"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/internal/vmm"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/measure"
)

// The simulated launch is measured from the digests guestimage.Load checked, without
// reading the kernel and initrd again: here they do not even exist.
func TestSimLaunchMeasuredFromCheckedDigests(t *testing.T) {
	o := &Options{Spec: job.Spec{TEE: attest.TEESim, VCPUs: 2, MemoryMiB: 2048}, SimDir: t.TempDir()}
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

// TestRunReadsNoImageFiles: a run with stamped images reads neither the guest kernel and
// initrd nor the toolchain image on the host (QEMU, a child, reads what it boots).
func TestRunReadsNoImageFiles(t *testing.T) {
	e := newEnv(t)
	gimg, err := guestimage.Load(e.guestImage) // stamps the images if they were not
	if err != nil {
		t.Fatal(err)
	}
	tc, err := toolchain.Load(e.toolchain)
	if err != nil {
		t.Fatal(err)
	}
	o := e.options(t, testfixture.WriteTree(t, map[string]string{"build.sh": "mkdir -p dist\necho hi > dist/x\n"}), "sh", "build.sh")
	before := testfixture.BytesRead(t)
	if _, err := Run(context.Background(), o); err != nil {
		t.Fatalf("Run: %v", err)
	}
	images := gimg.Kernel.Size + gimg.Initrd.Size + tc.ImageSize
	if n := testfixture.BytesRead(t) - before; n >= images/8 {
		t.Errorf("the run read %d bytes on the host; its images are %d", n, images)
	}
}
