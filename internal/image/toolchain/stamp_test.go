package toolchain_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cloche-dev/cloche/internal/filestamp"
	"github.com/cloche-dev/cloche/internal/image/toolchain"
	"github.com/cloche-dev/cloche/internal/testfixture"
)

// TestLoadReadsNoImage: Load of an unchanged image reads its stamp, not the image (what a
// run pays no longer grows with the toolchain); a changed image is read and refused, and
// one without a stamp is read once and stamped.
func TestLoadReadsNoImage(t *testing.T) {
	root := t.TempDir()
	if err := toolchain.MakeBusyboxRoot(root); err != nil {
		t.Skipf("no busybox root: %v", err)
	}
	img := filepath.Join(t.TempDir(), "t.img")
	tc, err := toolchain.FromDir(context.Background(), root, img, "busybox")
	if err != nil {
		t.Fatalf("FromDir: %v", err)
	}
	load := func() int64 {
		t.Helper()
		before := testfixture.BytesRead(t)
		if _, err := toolchain.Load(img); err != nil {
			t.Fatalf("Load: %v", err)
		}
		return testfixture.BytesRead(t) - before
	}
	small := tc.ImageSize / 8 // the metadata and the stamp, not the image
	if n := load(); n >= small {
		t.Errorf("Load right after FromDir read %d bytes of a %d-byte image", n, tc.ImageSize)
	}
	if n := load(); n >= small {
		t.Errorf("a second Load read %d bytes of a %d-byte image", n, tc.ImageSize)
	}

	if err := os.Remove(img + filestamp.Suffix); err != nil {
		t.Fatal(err)
	}
	if n := load(); n < tc.ImageSize {
		t.Errorf("Load without a stamp read %d bytes of a %d-byte image: it did not hash it", n, tc.ImageSize)
	}
	if n := load(); n >= small {
		t.Errorf("Load after re-stamping read %d bytes", n)
	}

	// Any write changes the change time: the stamp no longer applies, and the flipped
	// byte is found.
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	f.ReadAt(b[:], 4096)
	b[0] ^= 1
	f.WriteAt(b[:], 4096)
	f.Close()
	if _, err := toolchain.Load(img); !errors.Is(err, toolchain.ErrModified) {
		t.Errorf("Load of a changed image: %v, want ErrModified", err)
	}
}
