package disk_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/cloche-dev/cloche/internal/disk"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/source"
)

// TestSourceThroughInputDisk follows the source from the host's checkout to the guest's
// unpacked tree: Pack, WriteInput, ReadInput on the image file, Unpack with the digest
// from the host, and the same git tree id on both sides.
func TestSourceThroughInputDisk(t *testing.T) {
	ctx := context.Background()
	src := testfixture.WriteTree(t, map[string]string{"main.go": "package main\n", "pkg/lib.go": "package pkg\n", "build.sh": "#!/bin/sh\n"})
	os.Chmod(filepath.Join(src, "build.sh"), 0o755)
	os.Symlink("main.go", filepath.Join(src, "link"))

	work := t.TempDir()
	archive := filepath.Join(work, "src.tar")
	sum, size, err := source.PackFile(ctx, src, 1_700_000_000, archive)
	if err != nil {
		t.Fatal(err)
	}
	af, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer af.Close()
	img := filepath.Join(work, "input.img")
	if err := disk.WriteInput(img, []byte(`{"manifest":true}`), af, size); err != nil {
		t.Fatal(err)
	}

	dev, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	st, _ := dev.Stat()
	in, err := disk.ReadInput(dev, st.Size(), 256<<10, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	dest := t.TempDir()
	if err := source.Unpack(ctx, in.Archive, sum, in.ArchiveSize, dest, source.DefaultLimits(), 0, 0, false); err != nil {
		t.Fatal(err)
	}
	want, err := source.TreeID(src)
	if err != nil {
		t.Fatal(err)
	}
	got, err := source.TreeID(dest)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("tree id after the trip %s, before %s", got, want)
	}
}
