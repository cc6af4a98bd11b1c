package measure

import (
	"testing"
)

// FuzzFirmwareTables feeds arbitrary bytes, as the tail of a firmware image, to the footer
// table, SEV metadata and TDVF metadata parsers and to both measurements. They must never
// panic, and whatever they accept must lie inside the image.
func FuzzFirmwareTables(f *testing.F) {
	f.Add(buildFirmware(amdSevLike(16 << 10))[8<<10:])
	noSEV := amdSevLike(16 << 10)
	noSEV.noSEV = true
	f.Add(buildFirmware(noSEV)[8<<10:])
	f.Add(make([]byte, 64))
	f.Fuzz(func(t *testing.T, tail []byte) {
		if len(tail) > 16<<10 {
			return
		}
		// Pad in front to whole pages, so the tail ends the image as real tables do.
		size := (len(tail) + PageSize - 1) / PageSize * PageSize
		if size == 0 {
			size = PageSize
		}
		fw := make([]byte, size)
		copy(fw[size-len(tail):], tail)

		tbl, err := ParseFooterTable(fw)
		if err != nil {
			return
		}
		for _, g := range tbl.GUIDs() {
			if d, ok := tbl.Lookup(g); !ok || len(d) > len(fw) {
				t.Fatalf("entry %s: %d bytes from a %d-byte image", g, len(d), len(fw))
			}
		}
		if secs, err := ParseSEVMetadata(fw, tbl); err == nil {
			for _, s := range secs {
				if s.Size == 0 || uint64(s.GPA)+uint64(s.Size) > 1<<32 {
					t.Fatalf("accepted SEV section %+v", s)
				}
			}
		}
		if secs, err := ParseTDVFMetadata(fw, tbl); err == nil {
			for _, s := range secs {
				if (s.Type == TDVFBFV || s.Type == TDVFCFV) && uint64(s.DataOffset)+uint64(s.RawDataSize) > uint64(len(fw)) {
					t.Fatalf("accepted TDVF section %+v outside the image", s)
				}
			}
		}
		kh := KernelHashes{}
		_, _ = SNPLaunchDigest(SNPOptions{Firmware: fw, Kernel: &kh, VCPUs: 2, VCPUSignature: 0x800f12, GuestFeatures: 1})
		_, _ = MRTD(fw, SinglePass)
		_, _ = MRTD(fw, TwoPass)
	})
}
