package reference

import (
	"bytes"
	"context"
	"crypto"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/measure"
	"github.com/cloche-dev/cloche/provenance"
)

const amdSevVector = "../measure/testdata/snp-measure/ovmf_AmdSev_suffix.bin"

func newKey(t *testing.T) (*provenance.KeySigner, crypto.PublicKey) {
	t.Helper()
	dir := t.TempDir()
	priv, pub := filepath.Join(dir, "key.pem"), filepath.Join(dir, "key.pub")
	if err := provenance.GenerateKey(priv, pub); err != nil {
		t.Fatal(err)
	}
	s, err := provenance.LoadKeySigner(priv)
	if err != nil {
		t.Fatal(err)
	}
	k, err := provenance.LoadPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return s, k
}

func guestImage(t *testing.T) *guestimage.Image {
	t.Helper()
	testfixture.RequireQEMU(t)
	img, err := guestimage.Load(testfixture.GuestImage(t))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestCreateSignVerify(t *testing.T) {
	img := guestImage(t)
	opts := CreateOptions{GuestImageDir: img.Dir, ToolVersion: "0.1.0", VCPUs: []int{1, 2}, MemoryMiB: []int{2048}, SNPFirmware: amdSevVector}
	if _, err := os.Stat("/usr/share/ovmf/OVMF.fd"); err == nil {
		opts.TDXFirmware = "/usr/share/ovmf/OVMF.fd"
	}
	d, err := Create(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	want := 2 + 2*2 // sim: 2 vCPU counts; snp: 2 counts x 2 guest features
	if opts.TDXFirmware != "" {
		want += 2
	}
	if len(d.Values) != want {
		t.Fatalf("%d values, want %d", len(d.Values), want)
	}

	// Each value is what `measure` computes for that configuration.
	for _, v := range d.Values {
		switch v.TEE {
		case attest.TEESim:
			m, err := measure.Sim(img.KernelPath(), img.InitrdPath(), img.Cmdline, v.VCPUs, v.MemoryMiB)
			if err != nil {
				t.Fatal(err)
			}
			if v.Measurement != hex.EncodeToString(m[:]) {
				t.Errorf("sim %d vCPUs: %s, measure.Sim says %x", v.VCPUs, v.Measurement, m)
			}
		case attest.TEESNP:
			fw, _ := measure.ReadFirmware(amdSevVector)
			kh, _ := measure.HashBootFiles(img.KernelPath(), img.InitrdPath(), img.Cmdline)
			sig, _ := measure.VCPUSignature(v.VCPUType)
			feat, _ := measure.ParseGuestFeatures(v.GuestFeatures)
			ld, err := measure.SNPLaunchDigest(measure.SNPOptions{Firmware: fw, Kernel: &kh, VCPUs: v.VCPUs, VCPUSignature: sig, GuestFeatures: feat})
			if err != nil {
				t.Fatal(err)
			}
			if v.Measurement != hex.EncodeToString(ld[:]) {
				t.Errorf("snp %d vCPUs %s: %s, measure says %x", v.VCPUs, v.GuestFeatures, v.Measurement, ld)
			}
		case attest.TEETDX:
			if v.RTMR1 == "" || len(v.Assumptions) == 0 {
				t.Errorf("tdx value without RTMR1 or assumptions: %+v", v)
			}
		}
	}

	signer, pub := newKey(t)
	bundle, err := Sign(context.Background(), signer, d)
	if err != nil {
		t.Fatal(err)
	}
	got, err := VerifyBundle(bundle, pub)
	if err != nil {
		t.Fatal(err)
	}
	stmt, _ := d.Statement()
	if again, _ := got.Document.Statement(); !bytes.Equal(again, stmt) {
		t.Fatal("the verified document does not re-encode to the signed statement")
	}
	sim := got.Measurements(attest.TEESim)
	if len(sim) != 2 || len(got.Lookup(attest.TEESim, sim[1])) != 1 {
		t.Fatalf("sim measurements %d, lookup failed", len(sim))
	}
	if len(got.Lookup(attest.TEESNP, sim[0])) != 0 {
		t.Fatal("a sim measurement was found among the snp values")
	}
	_, digest, err := UnverifiedStatement(bundle)
	if err != nil || digest != got.StatementSHA256 {
		t.Fatalf("unverified statement digest %s, %v; verified %s", digest, err, got.StatementSHA256)
	}

	t.Run("wrong key", func(t *testing.T) {
		_, other := newKey(t)
		if _, err := VerifyBundle(bundle, other); !errors.Is(err, provenance.ErrSignature) {
			t.Fatalf("error = %v, want ErrSignature", err)
		}
	})
	t.Run("tampered value, re-signed by another key", func(t *testing.T) {
		d2 := *d
		d2.Values = append([]Value(nil), d.Values...)
		d2.Values[0].Measurement = strings.Repeat("00", 48)
		otherSigner, _ := newKey(t)
		b2, err := Sign(context.Background(), otherSigner, &d2)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := VerifyBundle(b2, pub); !errors.Is(err, provenance.ErrSignature) {
			t.Fatalf("error = %v, want ErrSignature", err)
		}
	})
	t.Run("payload swapped in the bundle", func(t *testing.T) {
		tampered := bytes.Replace(bundle, []byte(`"payload":"`), []byte(`"payload":"AAAA`), 1)
		if _, err := VerifyBundle(tampered, pub); err == nil {
			t.Fatal("a changed payload verified")
		}
	})
}

func TestCreateErrors(t *testing.T) {
	img := guestImage(t)
	ctx := context.Background()
	for name, o := range map[string]CreateOptions{
		"no guest image":       {GuestImageDir: t.TempDir(), ToolVersion: "0.1.0"},
		"missing firmware":     {GuestImageDir: img.Dir, ToolVersion: "0.1.0", SNPFirmware: "/nonexistent.fd"},
		"unknown vcpu type":    {GuestImageDir: img.Dir, ToolVersion: "0.1.0", SNPFirmware: amdSevVector, VCPUTypes: []string{"Pentium"}},
		"zero vcpus":           {GuestImageDir: img.Dir, ToolVersion: "0.1.0", VCPUs: []int{0}},
		"tiny memory":          {GuestImageDir: img.Dir, ToolVersion: "0.1.0", MemoryMiB: []int{1}},
		"nothing to compute":   {GuestImageDir: img.Dir, ToolVersion: "0.1.0", NoSim: true},
		"bad tool version":     {GuestImageDir: img.Dir, ToolVersion: "not a version!"},
		"duplicate vcpu count": {GuestImageDir: img.Dir, ToolVersion: "0.1.0", VCPUs: []int{2, 2}},
	} {
		if _, err := Create(ctx, o); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := os.Stat("/usr/share/ovmf/OVMF.fd"); err == nil {
		_, err := Create(ctx, CreateOptions{GuestImageDir: img.Dir, ToolVersion: "0.1.0", SNPFirmware: "/usr/share/ovmf/OVMF.fd"})
		if !errors.Is(err, measure.ErrNoKernelHashes) {
			t.Errorf("snp values with a firmware lacking kernel hashes: error = %v, want ErrNoKernelHashes", err)
		}
	}
}

func sampleDoc() *Document {
	f := File{Name: "vmlinuz", SHA256: strings.Repeat("ab", 32), Size: 10}
	return &Document{
		ToolVersion: "0.1.0",
		GuestImage:  GuestImage{Kernel: f, Initrd: File{Name: "initrd.img", SHA256: strings.Repeat("cd", 32), Size: 5}, Cmdline: "console=ttyS0"},
		Values:      []Value{{TEE: attest.TEESim, VCPUs: 2, MemoryMiB: 2048, Measurement: strings.Repeat("11", 48)}},
	}
}

func TestParseStatementStrict(t *testing.T) {
	good, err := sampleDoc().Statement()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseStatement(good); err != nil {
		t.Fatalf("good statement: %v", err)
	}
	for name, mutate := range map[string]func(string) string{
		"predicate type": func(s string) string {
			return strings.Replace(s, PredicateType, "https://slsa.dev/provenance/v1", 1)
		},
		"statement type": func(s string) string { return strings.Replace(s, "Statement/v1", "Statement/v0.1", 1) },
		"unknown field":  func(s string) string { return strings.Replace(s, `"toolVersion"`, `"extra":1,"toolVersion"`, 1) },
		"subject digest": func(s string) string {
			return strings.Replace(s, `"sha256":"`+strings.Repeat("ab", 32)+`"}`, `"sha256":"`+strings.Repeat("ef", 32)+`"}`, 1)
		},
		"bad measurement": func(s string) string { return strings.Replace(s, strings.Repeat("11", 48), "11", 1) },
		"unknown tee":     func(s string) string { return strings.Replace(s, `"tee":"sim"`, `"tee":"sgx"`, 1) },
		"sim with snp field": func(s string) string {
			return strings.Replace(s, `"tee":"sim"`, `"tee":"sim","vcpuType":"EPYC-v4"`, 1)
		},
		"trailing data": func(s string) string { return s + "{}" },
		// Duplicate and case-variant keys: a lenient reader takes the last or matches any
		// case, so two readers could see different values.
		"duplicate key": func(s string) string {
			return strings.Replace(s, `"toolVersion":`, `"toolVersion":"9.9.9","toolVersion":`, 1)
		},
		"duplicate measurement": func(s string) string {
			return strings.Replace(s, `"measurement":`, `"measurement":"`+strings.Repeat("22", 48)+`","measurement":`, 1)
		},
		"case-variant key": func(s string) string { return strings.Replace(s, `"toolVersion":`, `"ToolVersion":`, 1) },
		"case-variant tee": func(s string) string { return strings.Replace(s, `"tee":"sim"`, `"TEE":"sim"`, 1) },
		"no values":        func(s string) string { return s[:strings.Index(s, `"values"`)] + `"values":[]}}` },
	} {
		if _, err := ParseStatement([]byte(mutate(string(good)))); !errors.Is(err, ErrDocument) {
			t.Errorf("%s: error = %v, want ErrDocument", name, err)
		}
	}
}
