package measure

import (
	"testing"
	"time"

	"github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/internal/testfixture"
)

// BenchmarkSNPGuestImage measures the whole `cloche measure --tee snp` path for the real
// guest image (the 12 MB kernel and initramfs `cloche image guest` builds) with a 4 MiB
// synthetic AmdSev-shaped firmware: hashing the boot files, the firmware pages, the
// metadata sections and the VMSAs. It reports the time per MB of measured input.
func BenchmarkSNPGuestImage(b *testing.B) {
	testfixture.RequireQEMU(b)
	img, err := guestimage.Load(testfixture.GuestImage(b))
	if err != nil {
		b.Fatal(err)
	}
	fw := buildFirmware(amdSevLike(4 << 20))
	input := float64(img.Kernel.Size + img.Initrd.Size + int64(len(fw)))
	b.SetBytes(int64(input))
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		kh, err := HashBootFiles(img.KernelPath(), img.InitrdPath(), img.Cmdline)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := SNPLaunchDigest(SNPOptions{Firmware: fw, Kernel: &kh, VCPUs: 2, VCPUSignature: 0x800f12, GuestFeatures: 1}); err != nil {
			b.Fatal(err)
		}
	}
	perOp := time.Since(start) / time.Duration(b.N)
	b.ReportMetric(float64(perOp.Microseconds())/1000/(input/1e6), "ms/MB")
	b.Logf("measured %.1f MB (kernel %d, initrd %d, firmware %d bytes) in %s per run", input/1e6, img.Kernel.Size, img.Initrd.Size, len(fw), perOp)
}

// BenchmarkSNPFirmwareOnly isolates the firmware pages (SHA-384 per 4 KiB page).
func BenchmarkSNPFirmwareOnly(b *testing.B) {
	fw := buildFirmware(amdSevLike(4 << 20))
	b.SetBytes(int64(len(fw)))
	for i := 0; i < b.N; i++ {
		if _, err := SNPLaunchDigest(SNPOptions{Firmware: fw, VCPUs: 2, VCPUSignature: 0x800f12, GuestFeatures: 1}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMRTD measures the TDX MRTD of a 4 MiB synthetic TDVF.
func BenchmarkMRTD(b *testing.B) {
	fw := buildFirmware(amdSevLike(4 << 20))
	b.SetBytes(int64(len(fw)))
	for i := 0; i < b.N; i++ {
		if _, err := MRTD(fw, SinglePass); err != nil {
			b.Fatal(err)
		}
	}
}
