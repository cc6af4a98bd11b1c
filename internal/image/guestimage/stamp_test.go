package guestimage_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cloche-dev/cloche/internal/filestamp"
	"github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/internal/image/toolchain"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/measure"
)

// fakeImage writes a guest image directory whose kernel and initrd are random bytes of
// about a real image's size (Load does not parse them).
func fakeImage(t testing.TB) (dir string, size int64) {
	t.Helper()
	dir = t.TempDir()
	im := guestimage.Image{KernelVersion: "6.12.0-test-cloud-amd64", KernelPackage: "linux-image-test_1",
		Cmdline: guestimage.DefaultCmdline, GuestInitSHA256: hex.EncodeToString(make([]byte, 32)),
		Modules: guestimage.DefaultModules, Recipe: hex.EncodeToString(make([]byte, 32))}
	for _, f := range []struct {
		name string
		size int
		rec  *guestimage.File
	}{{guestimage.KernelFile, 10 << 20, &im.Kernel}, {guestimage.InitrdFile, 14 << 20, &im.Initrd}} {
		b := make([]byte, f.size)
		rand.Read(b)
		if err := os.WriteFile(filepath.Join(dir, f.name), b, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		*f.rec = guestimage.File{Path: f.name, SHA256: hex.EncodeToString(sum[:]), Size: int64(f.size)}
		size += int64(f.size)
	}
	meta, err := json.Marshal(im)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, guestimage.MetadataFile), meta, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, size
}

// TestLoadReadsNoImageFiles: once the kernel and initrd are stamped, Load (each run does
// one) reads neither; a changed file is read again and refused.
func TestLoadReadsNoImageFiles(t *testing.T) {
	dir, size := fakeImage(t)
	load := func() (*guestimage.Image, int64, error) {
		t.Helper()
		before := testfixture.BytesRead(t)
		im, err := guestimage.Load(dir)
		return im, testfixture.BytesRead(t) - before, err
	}
	if _, n, err := load(); err != nil || n < size {
		t.Fatalf("first Load: %v, read %d bytes of %d: it did not hash the files", err, n, size)
	}
	for _, f := range []string{guestimage.KernelFile, guestimage.InitrdFile} {
		if _, err := os.Stat(filepath.Join(dir, f) + filestamp.Suffix); err != nil {
			t.Errorf("%s has no stamp after Load: %v", f, err)
		}
	}
	if _, n, err := load(); err != nil || n >= 1<<20 {
		t.Errorf("second Load: %v, read %d bytes (the files are %d)", err, n, size)
	}

	initrd := filepath.Join(dir, guestimage.InitrdFile)
	f, err := os.OpenFile(initrd, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0}, 1000); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, _, err := load(); !errors.Is(err, guestimage.ErrModified) {
		t.Errorf("Load after a write to the initrd: %v, want ErrModified", err)
	}
}

// LaunchInputs from the checked digests are what measuring the files gives, so the
// simulated measurement a run computes is unchanged.
func TestLaunchInputsMatchTheFiles(t *testing.T) {
	dir, _ := fakeImage(t)
	im, err := guestimage.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := measure.LaunchInputs{Cmdline: im.Cmdline, VCPUs: 2, MemoryMiB: 2048}
	if got.KernelSHA256, got.InitrdSHA256, err = im.BootDigests(); err != nil {
		t.Fatal(err)
	}
	want, err := measure.LaunchInputsFromFiles(im.KernelPath(), im.InitrdPath(), im.Cmdline, 2, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if got != want || measure.SimMeasurement(got) != measure.SimMeasurement(want) {
		t.Errorf("launch inputs from BootDigests = %+v, measuring the files gives %+v", got, want)
	}
	im.Initrd.SHA256 = "00"
	if _, _, err := im.BootDigests(); err == nil {
		t.Error("BootDigests with a malformed initrd digest succeeded")
	}
}

// BenchmarkRunImageReads: the bytes a run reads to load its images once they are stamped
// (toolchain.Load, guestimage.Load, the simulated launch inputs: what build.Run does before
// the launch), against the images' size, which each run read, twice for the toolchain,
// before the stamps. A busybox toolchain stands in for the gcc one: what is read does not
// depend on the size.
func BenchmarkRunImageReads(b *testing.B) {
	root := b.TempDir()
	if err := toolchain.MakeBusyboxRoot(root); err != nil {
		b.Skipf("no busybox root: %v", err)
	}
	tcImg := filepath.Join(b.TempDir(), "busybox.img")
	tc, err := toolchain.FromDir(context.Background(), root, tcImg, "busybox")
	if err != nil {
		b.Fatal(err)
	}
	dir, size := fakeImage(b)
	if _, err := guestimage.Load(dir); err != nil { // stamps the guest image
		b.Fatal(err)
	}
	b.ResetTimer()
	before := testfixture.BytesRead(b)
	for i := 0; i < b.N; i++ {
		im, err := guestimage.Load(dir)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := toolchain.Load(tcImg); err != nil {
			b.Fatal(err)
		}
		if _, _, err := im.BootDigests(); err != nil {
			b.Fatal(err)
		}
	}
	read := testfixture.BytesRead(b) - before
	b.ReportMetric(float64(read)/float64(b.N), "image-bytes-read/run")
	b.ReportMetric(float64(size+tc.ImageSize), "image-bytes/run")
}
