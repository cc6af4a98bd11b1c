package measure

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/internal/testfixture"
)

// TestMRTDDebianOVMF checks MRTD of Debian's OVMF (which carries TDVF metadata) against
// independent computations: single-pass against gce-tcb-verifier v0.3.1's tdx.MRTD (Go,
// run by hand in a scratch module), both orders against a 40-line Python transcription of
// the TDX module's MEM.PAGE.ADD / MR.EXTEND record layout.
func TestMRTDDebianOVMF(t *testing.T) {
	fw := readDebianOVMF(t)
	for order, want := range map[PageAddOrder]string{
		SinglePass: "4c7206f0f483c524f12c366c711e9049030a8d47c471ee5aa9c4999a08de4057fb887fed0744d5631a212967fb231c47",
		TwoPass:    "acccbcc870a381adab0d3919d90a7f268ac3b0364771f202ed4bb4e892d045b33db3b32e6924cba830a724eed443f7e1",
	} {
		m, err := MRTD(fw, order)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(m[:]); got != want {
			t.Errorf("%s MRTD = %s, want %s", order, got, want)
		}
	}
}

func TestMRTDOrderMatters(t *testing.T) {
	fw := buildFirmware(amdSevLike(64 << 10))
	a, err := MRTD(fw, SinglePass)
	if err != nil {
		t.Fatal(err)
	}
	b, err := MRTD(fw, TwoPass)
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Fatal("single-pass and two-pass MRTD agree on a multi-page extended section")
	}
	fw[100] ^= 1 // inside the extended BFV
	c, _ := MRTD(fw, SinglePass)
	if c == a {
		t.Fatal("changing a byte of the BFV did not change MRTD")
	}
}

func TestRTMR2(t *testing.T) {
	// "ab" in UTF-16LE with a NUL: 61 00 62 00 00 00, extended into a zero RTMR.
	ev := sha512.Sum384([]byte{0x61, 0, 0x62, 0, 0, 0})
	want := sha512.Sum384(append(make([]byte, 48), ev[:]...))
	if got := RTMR2(TDXBoot{Cmdline: "ab"}); got != want {
		t.Errorf("RTMR2(ab) = %x, want %x", got, want)
	}
	// With an initrd, OVMF's suffix is part of the command line, then the initrd follows.
	initrd := sha512.Sum384([]byte("initrd"))
	u := []byte{0x61, 0}
	for _, c := range " initrd=initrd" {
		u = append(u, byte(c), 0)
	}
	ev = sha512.Sum384(append(u, 0, 0))
	r := sha512.Sum384(append(make([]byte, 48), ev[:]...))
	want = sha512.Sum384(append(r[:], initrd[:]...))
	if got := RTMR2(TDXBoot{Cmdline: "a", InitrdSHA384: initrd, InitrdSize: 6}); got != want {
		t.Errorf("RTMR2 with initrd = %x, want %x", got, want)
	}
}

func fakeBzImage(protocol uint16, loadflags byte, xloadflags uint16) []byte {
	k := make([]byte, 0x2000)
	copy(k[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(k[0x206:], protocol)
	k[0x211] = loadflags
	binary.LittleEndian.PutUint16(k[0x236:], xloadflags)
	return k
}

func TestPatchSetupHeader(t *testing.T) {
	for _, tc := range []struct {
		name      string
		xlf       uint16
		memMiB    uint64
		wantAddr  uint32
		loadflags byte
		cmdline   uint32
		heapEnd   uint16
	}{
		{"above-4G initrd allowed, 2 GiB", 0x40, 2048, 0x7fed7000, 0x01, 0x20000, 0xfe00},
		{"initrd below 896 MiB", 0, 2048, 0x37eff000, 0x01, 0x20000, 0xfe00},
		{"4 GiB: low memory ends at 2 GiB", 0x40, 4096, 0x7fed7000, 0x01, 0x20000, 0xfe00},
		{"1 GiB", 0x40, 1024, 0x3fed7000, 0x01, 0x20000, 0xfe00},
		{"loaded low", 0x40, 2048, 0x7fed7000, 0x00, 0x9a000, 0x9e00},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := fakeBzImage(0x20f, tc.loadflags, tc.xlf)
			out, err := patchSetupHeader(TDXBoot{Kernel: k, InitrdSize: 1 << 20, MemoryMiB: tc.memMiB})
			if err != nil {
				t.Fatal(err)
			}
			if out[0x210] != 0xb0 || out[0x211]&0x80 == 0 {
				t.Errorf("type_of_loader %#x loadflags %#x", out[0x210], out[0x211])
			}
			if got := binary.LittleEndian.Uint16(out[0x224:]); got != tc.heapEnd {
				t.Errorf("heap_end_ptr = %#x, want %#x", got, tc.heapEnd)
			}
			if got := binary.LittleEndian.Uint32(out[0x228:]); got != tc.cmdline {
				t.Errorf("cmd_line_ptr = %#x, want %#x", got, tc.cmdline)
			}
			if got := binary.LittleEndian.Uint32(out[0x218:]); got != tc.wantAddr {
				t.Errorf("ramdisk_image = %#x, want %#x", got, tc.wantAddr)
			}
			if got := binary.LittleEndian.Uint32(out[0x21c:]); got != 1<<20 {
				t.Errorf("ramdisk_size = %#x", got)
			}
			if !bytes.Equal(k[0x210:0x212], []byte{0, tc.loadflags}) {
				t.Error("the caller's kernel bytes were modified")
			}
		})
	}
	for name, b := range map[string]TDXBoot{
		"too short":        {Kernel: make([]byte, 100)},
		"no HdrS":          {Kernel: make([]byte, 0x2000)},
		"old protocol":     {Kernel: fakeBzImage(0x20b, 1, 0)},
		"initrd no memory": {Kernel: fakeBzImage(0x20f, 1, 0x40), InitrdSize: 10},
		"initrd too big":   {Kernel: fakeBzImage(0x20f, 1, 0x40), InitrdSize: 1 << 30, MemoryMiB: 512},
	} {
		if _, err := patchSetupHeader(b); !errors.Is(err, ErrInput) {
			t.Errorf("%s: error = %v, want ErrInput", name, err)
		}
	}
}

// TestAuthenticodeDebianKernel checks the PE digest against the one Debian signed into
// the cloud kernel (and osslsigncode's own computation), with SHA-256 since that is what
// the signature uses; the algorithm does not depend on the hash.
func TestAuthenticodeDebianKernel(t *testing.T) {
	if _, err := exec.LookPath("osslsigncode"); err != nil {
		t.Skip("osslsigncode not installed")
	}
	testfixture.RequireQEMU(t)
	img, err := guestimage.Load(testfixture.GuestImage(t))
	if err != nil {
		t.Fatal(err)
	}
	kernel := img.KernelPath()
	out, _ := exec.Command("osslsigncode", "verify", "-in", kernel).CombinedOutput()
	m := regexp.MustCompile(`Current message digest\s*:\s*([0-9A-Fa-f]{64})`).FindSubmatch(out)
	if m == nil {
		t.Skipf("the kernel carries no Authenticode signature to compare with:\n%s", out)
	}
	k, err := readBootFile(kernel)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if err := authenticode(k, h); err != nil {
		t.Fatal(err)
	}
	if got, want := hex.EncodeToString(h.Sum(nil)), strings.ToLower(string(m[1])); got != want {
		t.Fatalf("Authenticode SHA-256 = %s, the signature says %s", got, want)
	}

	// RTMR1 on the real kernel: defined, and it follows the initrd's placement.
	boot, err := TDXBootFromFiles(kernel, img.InitrdPath(), img.Cmdline, 2048)
	if err != nil {
		t.Fatal(err)
	}
	a, err := RTMR1(*boot)
	if err != nil {
		t.Fatal(err)
	}
	boot.MemoryMiB = 1024
	b, err := RTMR1(*boot)
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Fatal("RTMR1 does not depend on the memory size, but the initrd address does")
	}
}

func TestAuthenticodeErrors(t *testing.T) {
	for name, img := range map[string][]byte{
		"empty":        nil,
		"not MZ":       make([]byte, 0x100),
		"lfanew out":   append([]byte("MZ"), make([]byte, 0x100)...),
		"no PE header": func() []byte { b := append([]byte("MZ"), make([]byte, 0x100)...); b[0x3c] = 0x80; return b }(),
	} {
		if _, err := authenticodeSHA384(img); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := RTMR1(TDXBoot{Kernel: fakeBzImage(0x20f, 1, 0x40)}); !errors.Is(err, ErrInput) {
		t.Errorf("RTMR1 of a kernel without a PE header: error = %v, want ErrInput", err)
	}
}

func TestTDXValuesAssumptions(t *testing.T) {
	fw := buildFirmware(amdSevLike(64 << 10))
	v, err := TDX(fw, nil, SinglePass)
	if err != nil {
		t.Fatal(err)
	}
	if v.RTMR1 != nil || v.RTMR2 != nil || len(v.Assumptions) != 1 {
		t.Fatalf("without a kernel: RTMR1 %v RTMR2 %v, %d assumptions", v.RTMR1, v.RTMR2, len(v.Assumptions))
	}
	if !strings.Contains(RTMR0Unpredictable, "cannot be predicted") {
		t.Fatal("RTMR0 note does not say it cannot be predicted")
	}
}
