package measure

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// vectorDir holds sev-snp-measure's fixtures: the last 4 KiB of two OVMF builds.
const vectorDir = "testdata/snp-measure"

func readVector(t testing.TB, name string) []byte {
	t.Helper()
	fw, err := ReadFirmware(filepath.Join(vectorDir, name))
	if err != nil {
		t.Fatalf("reading test vector: %v", err)
	}
	return fw
}

func emptyFile(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustSig(t testing.TB, vcpuType string) uint32 {
	t.Helper()
	s, err := VCPUSignature(vcpuType)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSNPReadmeVectors reproduces every vector of testvectors/snp-measure/README.md.
func TestSNPReadmeVectors(t *testing.T) {
	amdsev := readVector(t, "ovmf_AmdSev_suffix.bin")
	ovmfx64 := readVector(t, "ovmf_OvmfX64_suffix.bin")
	empty := emptyFile(t)

	fwOnly, err := SNPFirmwareDigest(amdsev)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := hex.EncodeToString(fwOnly[:]), "086e2e9149ebf45abdc3445fba5b2da8270bdbb04094d7a2c37faaa4b24af3aa16aff8c374c2a55c467a50da6d466b74"; got != want {
		t.Errorf("firmware-only digest = %s, want %s", got, want)
	}

	kh, err := HashBootFiles(empty, empty, "console=ttyS0 loglevel=7")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		kernel   *KernelHashes
		features uint64
		want     string
	}{
		{"kernel, features 0x21", &kh, 0x21, "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977"},
		{"kernel, features 0x1", &kh, 0x1, "6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362f390ef83a92046c042e706363b4b08fa"},
		{"no kernel, features 0x21", nil, 0x21, "e1e1ca029dd7973ab9513295be68198472dcd4fc834bd9af9b63f6e8a1674dbf281a9278a4a2ebe0eed9f22adbcd0e2b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ld, err := SNPLaunchDigest(SNPOptions{Firmware: amdsev, Kernel: tc.kernel, VCPUs: 1, VCPUSignature: mustSig(t, "EPYC-v4"), GuestFeatures: tc.features, VMM: VMMQEMU})
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(ld[:]); got != tc.want {
				t.Errorf("launch digest = %s, want %s", got, tc.want)
			}
		})
	}

	t.Run("OvmfX64 with a kernel fails", func(t *testing.T) {
		kh, err := HashBootFiles(empty, empty, "")
		if err != nil {
			t.Fatal(err)
		}
		_, err = SNPLaunchDigest(SNPOptions{Firmware: ovmfx64, Kernel: &kh, VCPUs: 1, VCPUSignature: mustSig(t, "EPYC-v4"), GuestFeatures: 0x21})
		if !errors.Is(err, ErrNoKernelHashes) {
			t.Fatalf("error = %v, want ErrNoKernelHashes", err)
		}
		t.Logf("error text: %v", err)
	})
}

// TestSNPCrossChecked compares configurations beyond the README (more vCPUs, other vCPU
// types, a non-empty kernel, another firmware) with values computed independently by
// virtee/sev-snp-measure 0.0.13 (commit 8f2b337, Python, run by hand on this machine:
// `sev-snp-measure.py --mode snp --vcpus N --vcpu-type T --ovmf F [--kernel K] ...`).
func TestSNPCrossChecked(t *testing.T) {
	amdsev := readVector(t, "ovmf_AmdSev_suffix.bin")
	ovmfx64Path := filepath.Join(vectorDir, "ovmf_OvmfX64_suffix.bin")
	ovmfx64 := readVector(t, "ovmf_OvmfX64_suffix.bin")
	empty := emptyFile(t)
	withCmdline, err := HashBootFiles(empty, empty, "console=ttyS0 loglevel=7")
	if err != nil {
		t.Fatal(err)
	}
	// A 4 KiB non-empty "kernel" (the OvmfX64 tail), no initrd, no command line.
	someKernel, err := HashBootFiles(ovmfx64Path, "", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		fw       []byte
		kernel   *KernelHashes
		vcpus    int
		vcpuType string
		features uint64
		want     string
	}{
		{"AmdSev 4 vCPUs EPYC-v4 kernel 0x21", amdsev, &withCmdline, 4, "EPYC-v4", 0x21, "3067e6c61d42f9b8226123b7572abe64e62ce5e6891f9c2501f32dcf5ba7e648288db683c6e7f5c5fffd67b3eed2202c"},
		{"AmdSev 2 vCPUs EPYC-Milan no kernel 0x1", amdsev, nil, 2, "EPYC-Milan", 0x1, "7ebc88066ce54aed30ae5dfadbb298613a046effdf58fbba3581cb752d7731f03805fb0154bbbe534fa30ac5bd661299"},
		{"AmdSev 3 vCPUs EPYC-Genoa-v1 4 KiB kernel 0x21", amdsev, &someKernel, 3, "EPYC-Genoa-v1", 0x21, "997a68b9a72ab03f396556e3c28e4f327d33c93a67e727aa5912c3b84270b7e0595bb3cb93b6f4b709b630a80b70d227"},
		{"OvmfX64 1 vCPU EPYC-Turin no kernel 0x21", ovmfx64, nil, 1, "EPYC-Turin", 0x21, "ff597e70a8706a1ace0507d71b098f0150fb2c6dd6098a181f899fa66a8b62c58c01d35ee816d04e14b8c07d0ba33152"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ld, err := SNPLaunchDigest(SNPOptions{Firmware: tc.fw, Kernel: tc.kernel, VCPUs: tc.vcpus, VCPUSignature: mustSig(t, tc.vcpuType), GuestFeatures: tc.features})
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(ld[:]); got != tc.want {
				t.Errorf("launch digest = %s, want %s", got, tc.want)
			}
		})
	}
}

// debianOVMF is Debian 12's ovmf 2022.11-6+deb12u2 OVMF.fd (OvmfPkgX64, 2 MiB, SEV and TDX
// metadata, no kernel hashes). Tests that use it skip when another version is installed.
const (
	debianOVMF       = "/usr/share/ovmf/OVMF.fd"
	debianOVMFSHA256 = "7b456907dd0786d415999e801a1ac4637b8ed4d7cf5378cfc6edbe5e574dd773"
)

func readDebianOVMF(t testing.TB) []byte {
	t.Helper()
	fw, err := os.ReadFile(debianOVMF)
	if err != nil {
		t.Skipf("Debian's OVMF is not installed: %v", err)
	}
	if sum := sha256.Sum256(fw); hex.EncodeToString(sum[:]) != debianOVMFSHA256 {
		t.Skipf("%s is not the ovmf 2022.11-6+deb12u2 build these values were computed for", debianOVMF)
	}
	return fw
}

// TestSNPDebianOVMF checks a whole 2 MiB firmware against sev-snp-measure 0.0.13.
func TestSNPDebianOVMF(t *testing.T) {
	fw := readDebianOVMF(t)
	fwOnly, err := SNPFirmwareDigest(fw)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := hex.EncodeToString(fwOnly[:]), "ba2c811512ef868474f239a21f7d7057d65a20de87a003c4f116e4fb1573183bfbcd75c3e99b2f558575a5d0094f73c6"; got != want {
		t.Errorf("firmware digest = %s, want %s", got, want)
	}
	for _, tc := range []struct {
		vcpus    int
		vcpuType string
		features uint64
		want     string
	}{
		{2, "EPYC-Milan", 0x1, "a175292a4a09fcfb760c5bd80c93ed667dbaafce6247d0f21fc06638658b3ebf2804d3019e2abed05cb6a9efe0a7464e"},
		{8, "EPYC-v4", 0x21, "821a179d0504ce682b9da217acfd0997a55f6aa8d459960821e4b53ddb322032d8e7d00294031b3c36f08acf4de2dea4"},
	} {
		ld, err := SNPLaunchDigest(SNPOptions{Firmware: fw, VCPUs: tc.vcpus, VCPUSignature: mustSig(t, tc.vcpuType), GuestFeatures: tc.features})
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(ld[:]); got != tc.want {
			t.Errorf("%d vCPUs %s %#x: launch digest = %s, want %s", tc.vcpus, tc.vcpuType, tc.features, got, tc.want)
		}
	}
	kh, err := HashBootFiles(emptyFile(t), "", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := SNPLaunchDigest(SNPOptions{Firmware: fw, Kernel: &kh, VCPUs: 1, VCPUSignature: mustSig(t, "EPYC-v4"), GuestFeatures: 1}); !errors.Is(err, ErrNoKernelHashes) {
		t.Errorf("kernel with Debian's OVMF: error = %v, want ErrNoKernelHashes", err)
	}
}

func TestVCPUSignature(t *testing.T) {
	for name, want := range map[string]uint32{
		"EPYC-v4": 0x800f12, "EPYC": 0x800f12, "EPYC-Milan": 0xa00f11, "EPYC-Milan-v2": 0xa00f11,
		"EPYC-Genoa": 0xa10f10, "EPYC-Rome-v3": 0x830f10, "EPYC-Turin": 0xb00f00,
	} {
		got, err := VCPUSignature(name)
		if err != nil || got != want {
			t.Errorf("VCPUSignature(%q) = %#x, %v; want %#x", name, got, err, want)
		}
	}
	for _, bad := range []string{"", "EPYC-v5", "Skylake-Server", "EPYC-Milan-v9", "epyc-v4", "EPYC-v"} {
		if _, err := VCPUSignature(bad); !errors.Is(err, ErrVCPUType) {
			t.Errorf("VCPUSignature(%q): error = %v, want ErrVCPUType", bad, err)
		}
	}
}

func TestParseGuestFeatures(t *testing.T) {
	for in, want := range map[string]uint64{"0x21": 0x21, "0x1": 1, "1": 1, "33": 0x21, " 0x1 ": 1} {
		got, err := ParseGuestFeatures(in)
		if err != nil || got != want {
			t.Errorf("ParseGuestFeatures(%q) = %#x, %v; want %#x", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "abc", "0x", "-1", "0x20", "0x10000000000000000", "1.5"} {
		if _, err := ParseGuestFeatures(bad); !errors.Is(err, ErrGuestFeatures) {
			t.Errorf("ParseGuestFeatures(%q): error = %v, want ErrGuestFeatures", bad, err)
		}
	}
}

func TestHashTableLayout(t *testing.T) {
	k := KernelHashes{}
	for i := range k.Kernel {
		k.Cmdline[i], k.Initrd[i], k.Kernel[i] = 1, 2, 3
	}
	tb := k.Table()
	if len(tb) != 176 {
		t.Fatalf("padded table is %d bytes, want 176", len(tb))
	}
	if got := binary.LittleEndian.Uint16(tb[16:18]); got != 168 {
		t.Errorf("table length field = %d, want 168", got)
	}
	// GUID bytes in EFI order: 9438d606-4f22-... starts 06 d6 38 94 22 4f.
	if !bytes.Equal(tb[0:6], []byte{0x06, 0xd6, 0x38, 0x94, 0x22, 0x4f}) {
		t.Errorf("header GUID bytes = % x", tb[0:6])
	}
	for i, fill := range []byte{1, 2, 3} {
		e := tb[18+50*i:]
		if binary.LittleEndian.Uint16(e[16:18]) != 50 || e[18] != fill || e[49] != fill {
			t.Errorf("entry %d malformed: % x", i, e[:50])
		}
	}
	if !bytes.Equal(tb[168:], make([]byte, 8)) {
		t.Errorf("padding is not zero: % x", tb[168:])
	}
}

func TestGUIDRoundTrip(t *testing.T) {
	s := "96b582de-1fb2-45f7-baea-a366c55a082d"
	g, err := ParseGUID(s)
	if err != nil {
		t.Fatal(err)
	}
	if g.String() != s {
		t.Errorf("String() = %s, want %s", g, s)
	}
	if !bytes.Equal(g[:4], []byte{0xde, 0x82, 0xb5, 0x96}) {
		t.Errorf("first field not little-endian: % x", g[:4])
	}
	for _, bad := range []string{"", "96b582de1fb245f7baeaa366c55a082d", "96b582de-1fb2-45f7-baea-a366c55a082g"} {
		if _, err := ParseGUID(bad); err == nil {
			t.Errorf("ParseGUID(%q) succeeded", bad)
		}
	}
}
