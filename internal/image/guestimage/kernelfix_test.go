package guestimage_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/internal/testfixture"
)

// requiredKernelFixes are upstream fixes the guest kernel must carry because without them
// the host can attack the guest through an interface the guest cannot avoid. Debian's
// changelog in the kernel package lists every upstream stable change it includes, so the
// test reads the pinned package's own changelog rather than trusting a version comparison.
var requiredKernelFixes = []string{
	// Before it, the host-written out_len of the TDX GetQuote buffer (shared memory) was
	// trusted, letting a host make the guest copy past the buffer (first in 6.12.85).
	"virt: tdx-guest: Fix handling of host controlled 'quote' buffer length",
}

func TestPinnedKernelCarriesSecurityFixes(t *testing.T) {
	deb, err := guestimage.FetchKernelDeb(context.Background(), filepath.Join(testfixture.CacheDir(t), "kernel"))
	if err != nil {
		t.Skipf("pinned kernel package not available here: %v", err)
	}
	dir := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "-x", deb, dir).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -x: %v: %s", err, out)
	}
	logs, _ := filepath.Glob(filepath.Join(dir, "usr/share/doc/*/changelog.gz"))
	if len(logs) != 1 {
		t.Fatalf("expected one Debian changelog in %s, found %v", deb, logs)
	}
	changelog := readGzip(t, logs[0])
	for _, fix := range requiredKernelFixes {
		if !bytes.Contains(changelog, []byte(fix)) {
			t.Errorf("pinned kernel %s lacks the upstream fix %q", guestimage.KernelPin().Version, fix)
		}
	}
}

func readGzip(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(io.LimitReader(zr, 64<<20))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
