package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/internal/testfixture"
)

// BenchmarkGuestFootprint reports what the guest init puts into the measured initramfs: the
// packages it links (go list -deps), the guest init binary's bytes as scripts/build-guest-init.sh
// builds it, and the initramfs built around it. They are sizes, not times: the same in every
// iteration, reported once so `make bench` shows them beside the timings. (Before the attest
// split by role they were 272 packages, 8478846 and 8778240 bytes.)
func BenchmarkGuestFootprint(b *testing.B) {
	dir := b.TempDir()
	initBin := filepath.Join(dir, "cloche-guest")
	if out, err := exec.Command("bash", filepath.Join("..", "..", "scripts", "build-guest-init.sh"), initBin).CombinedOutput(); err != nil {
		b.Fatalf("building the guest init: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	deb, err := guestimage.FetchKernelDeb(ctx, filepath.Join(testfixture.CacheDir(b), "kernel"))
	if err != nil {
		b.Fatalf("kernel package: %v", err)
	}
	img, err := guestimage.Build(ctx, guestimage.Options{KernelDeb: deb, GuestInit: initBin, OutDir: filepath.Join(dir, "image")})
	if err != nil {
		b.Fatalf("guest image: %v", err)
	}
	deps := guestDeps(b)
	for b.Loop() {
		// Nothing to time: the figures are sizes.
	}
	b.ReportMetric(float64(len(deps)), "guest-packages")
	b.ReportMetric(float64(fileSize(b, initBin)), "guest-init-bytes")
	b.ReportMetric(float64(fileSize(b, img.InitrdPath())), "initramfs-bytes")
}

// guestDeps lists the packages the guest init links, as `go list -deps` names them.
func guestDeps(tb testing.TB) []string {
	tb.Helper()
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		tb.Fatalf("go list -deps: %v", err)
	}
	return strings.Fields(string(out))
}

func fileSize(tb testing.TB, path string) int64 {
	tb.Helper()
	st, err := os.Stat(path)
	if err != nil {
		tb.Fatal(err)
	}
	return st.Size()
}
