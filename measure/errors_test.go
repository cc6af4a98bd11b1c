package measure

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSyntheticFirmwareIsValid(t *testing.T) {
	fw := buildFirmware(amdSevLike(1 << 20))
	tbl, err := ParseFooterTable(fw)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(tbl.GUIDs()); n != 4 {
		t.Fatalf("footer table has %d entries, want 4", n)
	}
	sev, err := ParseSEVMetadata(fw, tbl)
	if err != nil || len(sev) != 6 {
		t.Fatalf("SEV metadata: %v, %d sections", err, len(sev))
	}
	if _, err := ParseTDVFMetadata(fw, tbl); err != nil {
		t.Fatal(err)
	}
	kh := KernelHashes{}
	a, err := SNPLaunchDigest(SNPOptions{Firmware: fw, Kernel: &kh, VCPUs: 2, VCPUSignature: 0x800f12, GuestFeatures: 1})
	if err != nil {
		t.Fatal(err)
	}
	kh.Kernel[0] = 1
	b, err := SNPLaunchDigest(SNPOptions{Firmware: fw, Kernel: &kh, VCPUs: 2, VCPUSignature: 0x800f12, GuestFeatures: 1})
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Fatal("changing the kernel hash did not change the launch digest")
	}
}

func TestReadFirmwareErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	full := buildFirmware(amdSevLike(64 << 10))
	for name, path := range map[string]string{
		"missing":   filepath.Join(dir, "nope.fd"),
		"no path":   "",
		"empty":     write("empty.fd", nil),
		"truncated": write("truncated.fd", full[:len(full)-100]),
		"directory": dir,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ReadFirmware(path)
			if !errors.Is(err, ErrFirmware) {
				t.Fatalf("error = %v, want ErrFirmware", err)
			}
		})
	}
	if _, err := ReadFirmware(write("ok.fd", full)); err != nil {
		t.Fatalf("valid image: %v", err)
	}
}

// TestMalformedTables breaks one field at a time and expects the error kind naming it.
func TestMalformedTables(t *testing.T) {
	const size = 64 << 10
	snp := func(fw []byte) error {
		_, err := SNPLaunchDigest(SNPOptions{Firmware: fw, VCPUs: 2, VCPUSignature: 0x800f12, GuestFeatures: 1})
		return err
	}
	tdx := func(fw []byte) error {
		_, err := MRTD(fw, SinglePass)
		return err
	}
	end := size - footerTrailer
	sevAt := size - sevMetaOffset
	tdvfAt := size - tdvfMetaOffset
	put32 := func(fw []byte, off int, v uint32) { binary.LittleEndian.PutUint32(fw[off:], v) }
	for _, tc := range []struct {
		name   string
		spec   func(*fwSpec)
		mangle func([]byte)
		run    func([]byte) error
		want   error
		text   string
	}{
		{name: "no footer GUID", mangle: func(fw []byte) { fw[end-1] ^= 0xff }, run: snp, want: ErrFooterTable, text: "not an OVMF build"},
		{name: "table longer than image", mangle: func(fw []byte) { binary.LittleEndian.PutUint16(fw[end-18:], 0xffff) }, run: snp, want: ErrFooterTable},
		{name: "table length below header", mangle: func(fw []byte) { binary.LittleEndian.PutUint16(fw[end-18:], 3) }, run: snp, want: ErrFooterTable},
		{name: "entry length zero", mangle: func(fw []byte) { binary.LittleEndian.PutUint16(fw[end-18-18:], 0) }, run: snp, want: ErrFooterTable, text: "has length 0"},
		{name: "entry length past table", mangle: func(fw []byte) { binary.LittleEndian.PutUint16(fw[end-18-18:], 0x7000) }, run: snp, want: ErrFooterTable},
		{name: "duplicate entry", mangle: func(fw []byte) {
			// Make the hash-table entry's GUID equal the reset block's.
			copy(fw[end-18-22-16:end-18-22], sevESResetGUID[:])
		}, run: snp, want: ErrFooterTable, text: "twice"},
		{name: "SEV metadata offset outside image", mangle: nil, spec: nil, run: func(fw []byte) error {
			tbl, _ := ParseFooterTable(fw)
			d, _ := tbl.Lookup(sevMetadataGUID)
			binary.LittleEndian.PutUint32(d, uint32(len(fw)+1))
			return snp(fw)
		}, want: ErrMetadata, text: "outside"},
		{name: "SEV signature", mangle: func(fw []byte) { copy(fw[sevAt:], "XSEV") }, run: snp, want: ErrMetadata, text: "ASEV"},
		{name: "SEV version", mangle: func(fw []byte) { put32(fw, sevAt+8, 2) }, run: snp, want: ErrMetadata, text: "version"},
		{name: "SEV count zero", mangle: func(fw []byte) { put32(fw, sevAt+12, 0) }, run: snp, want: ErrMetadata},
		{name: "SEV count huge", mangle: func(fw []byte) { put32(fw, sevAt+12, 1<<30) }, run: snp, want: ErrMetadata},
		{name: "SEV size too small", mangle: func(fw []byte) { put32(fw, sevAt+4, 20) }, run: snp, want: ErrMetadata},
		{name: "SEV section unaligned", mangle: func(fw []byte) { put32(fw, sevAt+16, 0x800010) }, run: snp, want: ErrMetadata, text: "page-aligned"},
		{name: "SEV section unknown type", mangle: func(fw []byte) { put32(fw, sevAt+16+8, 7) }, run: snp, want: ErrMetadata, text: "unknown type"},
		{name: "SEV sections overlap", spec: func(s *fwSpec) { s.sev[1].GPA = 0x804000 }, run: snp, want: ErrMetadata, text: "overlap"},
		{name: "SEV section over firmware", spec: func(s *fwSpec) { s.sev[0].GPA = 1<<32 - 0x2000 }, run: snp, want: ErrMetadata, text: "overlaps the firmware"},
		{name: "SEV secrets two pages", spec: func(s *fwSpec) { s.sev[2].Size = 0x2000; s.sev[3].GPA = 0x80f000 }, run: snp, want: ErrMetadata, text: "one page"},
		{name: "no SEV metadata", spec: func(s *fwSpec) { s.noSEV = true }, run: snp, want: ErrMetadata, text: "cannot launch an SNP guest"},
		{name: "AP reset address zero", spec: func(s *fwSpec) { s.resetEIP = 0 }, run: snp, want: ErrMetadata, text: "AP start"},
		{name: "no TDVF metadata", spec: func(s *fwSpec) { s.noTDVF = true }, run: tdx, want: ErrMetadata, text: "not a TDVF build"},
		{name: "TDVF signature", mangle: func(fw []byte) { copy(fw[tdvfAt:], "XDVF") }, run: tdx, want: ErrMetadata, text: "TDVF"},
		{name: "TDVF version", mangle: func(fw []byte) { put32(fw, tdvfAt+8, 0) }, run: tdx, want: ErrMetadata, text: "version"},
		{name: "TDVF length mismatch", mangle: func(fw []byte) { put32(fw, tdvfAt+4, 17) }, run: tdx, want: ErrMetadata, text: "length"},
		{name: "TDVF data outside image", spec: func(s *fwSpec) { s.tdvf[0].DataOffset = 0x1000 }, run: tdx, want: ErrMetadata, text: "outside"},
		{name: "TDVF unknown type", spec: func(s *fwSpec) { s.tdvf[1].Type = 4 }, run: tdx, want: ErrMetadata, text: "not one QEMU launches"},
		{name: "TDVF unknown attribute", spec: func(s *fwSpec) { s.tdvf[1].Attributes = 4 }, run: tdx, want: ErrMetadata, text: "attributes"},
		{name: "TDVF HOB extended", spec: func(s *fwSpec) { s.tdvf[2].Attributes = TDVFAttrMRExtend }, run: tdx, want: ErrMetadata, text: "MR.EXTEND"},
		{name: "TDVF sections overlap", spec: func(s *fwSpec) { s.tdvf[2].MemoryAddress = 0x805000 }, run: tdx, want: ErrMetadata, text: "overlap"},
		{name: "TDVF section unaligned", spec: func(s *fwSpec) { s.tdvf[1].MemoryDataSize = 0x6001 }, run: tdx, want: ErrMetadata, text: "page-aligned"},
		{name: "TDVF raw size differs", spec: func(s *fwSpec) { s.tdvf[0].RawDataSize -= 0x1000 }, run: tdx, want: ErrMetadata, text: "differs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := amdSevLike(size)
			if tc.spec != nil {
				tc.spec(&spec)
			}
			fw := buildFirmware(spec)
			if tc.mangle != nil {
				tc.mangle(fw)
			}
			err := tc.run(fw)
			if !errors.Is(err, tc.want) {
				t.Fatalf("error = %v, want %v", err, tc.want)
			}
			if tc.text != "" && !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("error %q does not mention %q", err, tc.text)
			}
		})
	}
}

func TestSNPParameterErrors(t *testing.T) {
	fw := buildFirmware(amdSevLike(64 << 10))
	noHashes := amdSevLike(64 << 10)
	noHashes.sev = noHashes.sev[:4]
	fwNoHashes := buildFirmware(noHashes)
	kh := &KernelHashes{}
	for _, tc := range []struct {
		name string
		o    SNPOptions
		want error
	}{
		{"zero vCPUs", SNPOptions{Firmware: fw, VCPUs: 0, GuestFeatures: 1}, ErrInput},
		{"too many vCPUs", SNPOptions{Firmware: fw, VCPUs: MaxVCPUs + 1, GuestFeatures: 1}, ErrInput},
		{"other VMM", SNPOptions{Firmware: fw, VCPUs: 1, GuestFeatures: 1, VMM: "ec2"}, ErrInput},
		{"features without SNPActive", SNPOptions{Firmware: fw, VCPUs: 1, GuestFeatures: 0x20}, ErrGuestFeatures},
		{"no firmware", SNPOptions{VCPUs: 1, GuestFeatures: 1}, ErrFirmware},
		{"firmware not whole pages", SNPOptions{Firmware: fw[:len(fw)-1], VCPUs: 1, GuestFeatures: 1}, ErrFirmware},
		{"kernel without hashes section", SNPOptions{Firmware: fwNoHashes, Kernel: kh, VCPUs: 1, GuestFeatures: 1}, ErrNoKernelHashes},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := SNPLaunchDigest(tc.o); !errors.Is(err, tc.want) {
				t.Fatalf("error = %v, want %v", err, tc.want)
			}
		})
	}
	// Without a kernel the same firmware measures fine.
	if _, err := SNPLaunchDigest(SNPOptions{Firmware: fwNoHashes, VCPUs: 1, GuestFeatures: 1}); err != nil {
		t.Fatal(err)
	}
	// The hash table must fit the kernel-hashes page.
	bad := amdSevLike(64 << 10)
	bad.hashGPA = 0x810fa0
	if _, err := SNPLaunchDigest(SNPOptions{Firmware: buildFirmware(bad), Kernel: kh, VCPUs: 1, GuestFeatures: 1}); !errors.Is(err, ErrMetadata) {
		t.Fatalf("hash table across the page end: error = %v, want ErrMetadata", err)
	}
}
