package disk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeInputFile(t *testing.T, manifest, archive []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "input.img")
	if err := WriteInput(p, manifest, bytes.NewReader(archive), int64(len(archive))); err != nil {
		t.Fatalf("WriteInput: %v", err)
	}
	return p
}

func readInputFile(t *testing.T, p string, maxManifest, maxArchive int64) (*Input, error) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return ReadInput(f, st.Size(), maxManifest, maxArchive)
}

func TestInputRoundTrip(t *testing.T) {
	cases := map[string]struct{ manifest, archive []byte }{
		"typical":        {[]byte(`{"_type":"https://cloche.dev/job-manifest/v1"}`), bytes.Repeat([]byte("tar!"), 3000)},
		"empty archive":  {[]byte("m"), nil},
		"block-sized":    {bytes.Repeat([]byte("m"), BlockSize), bytes.Repeat([]byte("a"), 2*BlockSize)},
		"block plus one": {bytes.Repeat([]byte("m"), BlockSize+1), []byte("a")},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			p := writeInputFile(t, tc.manifest, tc.archive)
			raw, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if len(raw)%BlockSize != 0 {
				t.Errorf("image is %d bytes, not a multiple of %d", len(raw), BlockSize)
			}
			if string(raw[:16]) != InputMagic {
				t.Errorf("magic %q", raw[:16])
			}
			// The archive starts at the documented offset.
			off := BlockSize + (len(tc.manifest)+BlockSize-1)/BlockSize*BlockSize
			if !bytes.Equal(raw[off:off+len(tc.archive)], tc.archive) {
				t.Error("archive is not at 4096 + roundup(manifestLen, 4096)")
			}
			if !allZero(raw[off+len(tc.archive):]) {
				t.Error("padding after the archive is not zero")
			}

			in, err := readInputFile(t, p, 1<<20, 1<<20)
			if err != nil {
				t.Fatalf("ReadInput: %v", err)
			}
			if !bytes.Equal(in.Manifest, tc.manifest) {
				t.Error("manifest differs")
			}
			got, err := io.ReadAll(in.Archive)
			if err != nil {
				t.Fatal(err)
			}
			if in.ArchiveSize != int64(len(tc.archive)) || !bytes.Equal(got, tc.archive) {
				t.Errorf("archive differs: %d bytes (size %d), want %d", len(got), in.ArchiveSize, len(tc.archive))
			}
		})
	}
}

func TestWriteInputErrors(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "in.img")
	if err := WriteInput(p, nil, bytes.NewReader(nil), 0); err == nil {
		t.Error("empty manifest accepted")
	}
	if err := WriteInput(p, []byte("m"), strings.NewReader("short"), 10); err == nil {
		t.Error("archive shorter than stated accepted")
	}
	if err := WriteInput(p, []byte("m"), strings.NewReader("longer than five"), 5); err == nil {
		t.Error("archive longer than stated accepted")
	}
	if err := WriteInput(p, []byte("m"), strings.NewReader(""), -1); err == nil {
		t.Error("negative size accepted")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("failed writes left %d files behind", len(ents))
	}
}

// header builds an input header block with the given fields.
func inputHeader(magic string, mlen, alen uint64) []byte {
	b := make([]byte, BlockSize)
	copy(b, magic)
	binary.LittleEndian.PutUint64(b[16:], mlen)
	binary.LittleEndian.PutUint64(b[24:], alen)
	return b
}

func TestReadInputRejects(t *testing.T) {
	dev := func(hdr []byte, size int) []byte {
		out := make([]byte, size)
		copy(out, hdr)
		return out
	}
	const devSize = 4 * BlockSize
	tailDirty := inputHeader(InputMagic, 10, 10)
	tailDirty[BlockSize-1] = 1
	cases := []struct {
		name    string
		data    []byte
		size    int64 // devSize passed; defaults to len(data)
		mention string
	}{
		{"bad magic", dev(inputHeader("CLOCHE-OUTPT-V1\x00", 10, 10), devSize), 0, "magic"},
		{"zero disk", make([]byte, devSize), 0, "magic"},
		{"dirty header tail", dev(tailDirty, devSize), 0, "non-zero"},
		{"empty manifest", dev(inputHeader(InputMagic, 0, 10), devSize), 0, "manifest length is 0"},
		{"manifest over cap", dev(inputHeader(InputMagic, 1001, 10), devSize), 0, "limit"},
		{"archive over cap", dev(inputHeader(InputMagic, 10, 2001), devSize), 0, "limit"},
		{"manifest past end", dev(inputHeader(InputMagic, 900, 0), BlockSize+800), 0, "manifest (900 bytes at 4096) extends past the device end"},
		{"archive past end", dev(inputHeader(InputMagic, 10, 2000), 2*BlockSize+1000), 0, "archive (2000 bytes at 8192) extends past"},
		{"manifest fills device, archive after end", dev(inputHeader(InputMagic, 900, 1), BlockSize+950), 0, "archive (1 bytes at 8192) extends past"},
		{"huge lengths", dev(inputHeader(InputMagic, math.MaxUint64, math.MaxUint64), devSize), 0, "limit"},
		{"device smaller than header", make([]byte, 100), 0, "smaller"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			size := tc.size
			if size == 0 {
				size = int64(len(tc.data))
			}
			_, err := ReadInput(bytes.NewReader(tc.data), size, 1000, 2000)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
		})
	}
	// Caps as large as possible must not overflow the region checks.
	_, err := ReadInput(bytes.NewReader(dev(inputHeader(InputMagic, math.MaxInt64, math.MaxInt64), devSize)), devSize, math.MaxInt64, math.MaxInt64)
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "past the device end") {
		t.Fatalf("huge lengths with huge caps: err = %v", err)
	}
	// A device that claims more bytes than it has.
	_, err = ReadInput(bytes.NewReader(dev(inputHeader(InputMagic, 10, 10), BlockSize)), devSize, 1000, 2000)
	if err == nil {
		t.Fatal("short device read accepted")
	}
}

func FuzzReadInput(f *testing.F) {
	valid := append(inputHeader(InputMagic, 5, 7), []byte("hello")...)
	valid = append(valid, make([]byte, BlockSize-5)...)
	valid = append(valid, []byte("archive")...)
	f.Add(valid)
	f.Add(inputHeader(InputMagic, math.MaxUint64, 3))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		const maxManifest, maxArchive = 64 << 10, 1 << 20
		in, err := ReadInput(bytes.NewReader(data), int64(len(data)), maxManifest, maxArchive)
		if err != nil {
			return
		}
		if len(in.Manifest) == 0 || len(in.Manifest) > maxManifest || in.ArchiveSize < 0 || in.ArchiveSize > maxArchive {
			t.Fatalf("accepted out-of-bounds regions: manifest %d, archive %d", len(in.Manifest), in.ArchiveSize)
		}
		n, err := io.Copy(io.Discard, in.Archive)
		if err != nil || n != in.ArchiveSize {
			t.Fatalf("archive read %d of %d bytes: %v", n, in.ArchiveSize, err)
		}
	})
}
