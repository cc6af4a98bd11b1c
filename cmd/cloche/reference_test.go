package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigstore/sigstore-go/pkg/verify"

	"github.com/cloche-dev/cloche/internal/ghfake"
	"github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/reference"
)

const snpVectors = "../../measure/testdata/snp-measure"

// TestMeasureSNPCLI runs `cloche measure --tee snp` on the README vectors and its errors.
func TestMeasureSNPCLI(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	amdsev := filepath.Join(snpVectors, "ovmf_AmdSev_suffix.bin")
	code, out, stderr := cli(t, "measure", "--tee", "snp", "--snp-firmware", amdsev, "--kernel", empty, "--initrd", empty,
		"--cmdline", "console=ttyS0 loglevel=7", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--guest-features", "0x21", "--vmm", "qemu")
	if code != 0 || strings.TrimSpace(out) != "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	code, out, _ = cli(t, "measure", "--tee", "snp", "--snp-firmware", amdsev, "--vcpus", "1", "--guest-features", "0x21")
	if code != 0 || strings.TrimSpace(out) != "e1e1ca029dd7973ab9513295be68198472dcd4fc834bd9af9b63f6e8a1674dbf281a9278a4a2ebe0eed9f22adbcd0e2b" {
		t.Fatalf("firmware without kernel: exit %d, stdout %q", code, out)
	}
	// The old flag name still works, hidden, with a deprecation notice on stderr only.
	code, old, stderr := cli(t, "measure", "--tee", "snp", "--firmware", amdsev, "--vcpus", "1", "--guest-features", "0x21")
	if code != 0 || old != out || !strings.Contains(stderr, "use --snp-firmware or --tdx-firmware") {
		t.Fatalf("--firmware alias: exit %d, stdout %q (want %q), stderr %q", code, old, out, stderr)
	}

	truncated := filepath.Join(t.TempDir(), "truncated.fd")
	b, _ := os.ReadFile(amdsev)
	if err := os.WriteFile(truncated, b[:3000], 0o644); err != nil {
		t.Fatal(err)
	}
	malformed := filepath.Join(t.TempDir(), "malformed.fd")
	bad := append([]byte(nil), b...)
	copy(bad[len(bad)-0x554:], "XSEV") // the SEV metadata signature
	if err := os.WriteFile(malformed, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"OvmfX64 plus kernel", []string{"--snp-firmware", filepath.Join(snpVectors, "ovmf_OvmfX64_suffix.bin"), "--kernel", empty, "--initrd", empty, "--cmdline", ""}, "no SNP_KERNEL_HASHES section"},
		{"missing firmware", []string{"--snp-firmware", filepath.Join(t.TempDir(), "none.fd")}, "does not exist"},
		{"no firmware flag", nil, "--snp-firmware is required"},
		{"truncated firmware", []string{"--snp-firmware", truncated}, "not a whole number of 4 KiB pages"},
		{"malformed metadata", []string{"--snp-firmware", malformed}, `expected "ASEV"`},
		{"unknown vCPU type", []string{"--snp-firmware", amdsev, "--vcpu-type", "EPYC-v9"}, `unknown vCPU type "EPYC-v9"`},
		{"guest features not a number", []string{"--snp-firmware", amdsev, "--guest-features", "twenty"}, `invalid guest features "twenty"`},
		{"other VMM", []string{"--snp-firmware", amdsev, "--vmm", "ec2"}, `VMM "ec2"`},
		{"initrd without kernel", []string{"--snp-firmware", amdsev, "--initrd", empty}, "need --kernel"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := cli(t, append([]string{"measure", "--tee", "snp"}, tc.args...)...)
			if code == 0 || out != "" || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want a failure mentioning %q", code, out, stderr, tc.want)
			}
		})
	}
	if code, _, stderr := cli(t, "measure", "--tee", "sgx"); code == 0 || !strings.Contains(stderr, "expected sim, snp or tdx") {
		t.Fatalf("--tee sgx: exit %d, %q", code, stderr)
	}
}

func TestMeasureTDXCLI(t *testing.T) {
	const ovmf = "/usr/share/ovmf/OVMF.fd"
	if _, err := os.Stat(ovmf); err != nil {
		t.Skip("Debian's OVMF (a TDVF-capable build) is not installed")
	}
	code, out, stderr := cli(t, "measure", "--tee", "tdx", "--tdx-firmware", ovmf)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"MRTD  ", "RTMR0 -\n# RTMR0 cannot be predicted from files alone", "RTMR1 -\n# no kernel given", "RTMR3 -", "# assumptions:", "single-pass"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if code, _, stderr := cli(t, "measure", "--tee", "tdx", "--tdx-firmware", ovmf, "--mrtd-order", "three-pass"); code == 0 || !strings.Contains(stderr, "single-pass or two-pass") {
		t.Fatalf("bad --mrtd-order: exit %d, %q", code, stderr)
	}
	if code, _, stderr := cli(t, "measure", "--tee", "tdx", "--tdx-firmware", filepath.Join(snpVectors, "ovmf_AmdSev_suffix.bin")); code == 0 || !strings.Contains(stderr, "lies outside the 4096-byte image") {
		t.Fatalf("TDVF metadata outside a 4 KiB tail: exit %d, %q", code, stderr)
	}
}

func copyGuestImage(t *testing.T) string {
	t.Helper()
	src := testfixture.GuestImage(t)
	dst := t.TempDir()
	for _, name := range []string{guestimage.KernelFile, guestimage.InitrdFile, guestimage.MetadataFile} {
		in, err := os.Open(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		out, err := os.Create(filepath.Join(dst, name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(out, in); err != nil {
			t.Fatal(err)
		}
		in.Close()
		if err := out.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func releaseKey(t *testing.T) (priv, pub string) {
	t.Helper()
	dir := t.TempDir()
	priv, pub = filepath.Join(dir, "release.pem"), filepath.Join(dir, "release.pub")
	if err := provenance.GenerateKey(priv, pub); err != nil {
		t.Fatal(err)
	}
	return priv, pub
}

// TestReferenceValuesEndToEnd publishes signed reference values with a guest image, builds
// with it, and verifies the build against them: the provenance names the shipped values,
// `verify --reference-values` accepts the listed measurement and rejects a document that
// does not list it or is signed by another key, and `verify --guest-image` computes the
// same verdict from the files.
func TestReferenceValuesEndToEnd(t *testing.T) {
	testfixture.RequireQEMU(t)
	img := copyGuestImage(t)
	priv, pub := releaseKey(t)
	code, stmt, stderr := cli(t, "reference", "create", "--guest-image", img, "--key", priv, "--vcpus", "1,2", "--memory", "2048")
	if code != 0 {
		t.Fatalf("reference create: exit %d: %s", code, stderr)
	}
	shipped := filepath.Join(img, "reference-values.sigstore.json")
	if _, err := os.Stat(shipped); err != nil {
		t.Fatalf("reference create wrote no bundle into the guest image: %v", err)
	}
	stmtSum := sha256.Sum256([]byte(strings.TrimSpace(stmt)))

	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "in.txt"), []byte("reference values\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	state, out := t.TempDir(), filepath.Join(t.TempDir(), "out")
	code, _, stderr = cli(t, "run", "--state-dir", state, "--source", src, "--out", out, "--tee", "sim", "--guest-image", img,
		"--toolchain", testfixture.BusyboxToolchain(t), "--accel", "tcg", "--", "sh", "-c", "cp in.txt out.txt")
	if code != 0 {
		t.Fatalf("cloche run exited %d:\n%s", code, stderr)
	}
	_, root, _ := cli(t, "sim-root", "--state-dir", state)
	bundle := filepath.Join(out, "provenance.sigstore.json")
	base := []string{"verify", "--bundle", bundle, "--key", filepath.Join(state, "signing-key.pem.pub"),
		"--allow-simulated", "--trusted-sim-root", strings.TrimSpace(root), "--source-dir", src,
		"--toolchain-digest", testfixture.ToolchainDigest(t, testfixture.BusyboxToolchain(t)), filepath.Join(out, "out.txt")}

	// Deliverable 5: the provenance names the guest release and its shipped values.
	p, err := provenance.ParseStatement(bundlePayload(t, bundle))
	if err != nil {
		t.Fatal(err)
	}
	meta, err := guestimage.Load(img)
	if err != nil {
		t.Fatal(err)
	}
	if p.Guest.ReferenceValues != hex.EncodeToString(stmtSum[:]) || p.Guest.Recipe != meta.Recipe {
		t.Fatalf("guest-image dependency names reference values %q and recipe %q; want %x and %q", p.Guest.ReferenceValues, p.Guest.Recipe, stmtSum, meta.Recipe)
	}
	// `measure --tee sim` equals the evidence's measurement for the same image and shape.
	_, m, _ := cli(t, "measure", "--tee", "sim", "--guest-image", img, "--vcpus", "2", "--memory", "2048")
	if strings.TrimSpace(m) != p.Guest.Measurement {
		t.Fatalf("measure --tee sim = %s, the evidence has %s", strings.TrimSpace(m), p.Guest.Measurement)
	}

	t.Run("listed", func(t *testing.T) {
		code, _, stderr := cli(t, append(base, "--reference-values", shipped, "--reference-key", pub)...)
		if code != 0 || !strings.Contains(stderr, "listed in signed reference values") {
			t.Fatalf("exit %d: %s", code, stderr)
		}
	})
	t.Run("computed from the guest image", func(t *testing.T) {
		code, _, stderr := cli(t, append(base, "--guest-image", img)...)
		if code != 0 || !strings.Contains(stderr, "values computed from") {
			t.Fatalf("exit %d: %s", code, stderr)
		}
	})
	t.Run("not listed", func(t *testing.T) {
		only1 := filepath.Join(t.TempDir(), "one-vcpu.json")
		if code, _, stderr := cli(t, "reference", "create", "--guest-image", img, "--key", priv, "--vcpus", "1", "--out", only1); code != 0 {
			t.Fatalf("reference create: %s", stderr)
		}
		wantFailed(t, append(base, "--reference-values", only1, "--reference-key", pub), "measurement", "is not listed")
	})
	t.Run("other memory size", func(t *testing.T) {
		mem := filepath.Join(t.TempDir(), "4g.json")
		if code, _, stderr := cli(t, "reference", "create", "--guest-image", img, "--key", priv, "--vcpus", "2", "--memory", "4096", "--out", mem); code != 0 {
			t.Fatalf("reference create: %s", stderr)
		}
		wantFailed(t, append(base, "--reference-values", mem, "--reference-key", pub), "measurement", "is not listed")
	})
	t.Run("signed by another key", func(t *testing.T) {
		_, otherPub := releaseKey(t)
		wantFailed(t, append(base, "--reference-values", shipped, "--reference-key", otherPub), "reference-values", "signature")
	})
	t.Run("provenance bundle given as reference values", func(t *testing.T) {
		wantFailed(t, append(base, "--reference-values", bundle, "--reference-key", filepath.Join(state, "signing-key.pem.pub")), "reference-values", "the provenance signing key")
	})
	t.Run("reference values without a key", func(t *testing.T) {
		code, _, stderr := cli(t, append(base, "--reference-values", shipped)...)
		if code != exitUsage || !strings.Contains(stderr, "--reference-key") {
			t.Fatalf("exit %d: %s", code, stderr)
		}
	})
	t.Run("statement is valid JSON", func(t *testing.T) {
		var v map[string]any
		if err := json.Unmarshal([]byte(stmt), &v); err != nil || v["predicateType"] != "https://cloche.dev/reference-values/v1" {
			t.Fatalf("reference create stdout: %v %v", err, v["predicateType"])
		}
	})
}

// The release workflow signs its guest image's reference values keyless: the bundle
// carries a Fulcio certificate for the workflow's identity and a Rekor entry, and verifies
// against the trusted root with that identity; outside a job --keyless says what is missing.
func TestReferenceCreateKeyless(t *testing.T) {
	testfixture.RequireQEMU(t)
	gimg := testfixture.GuestImage(t)
	out := filepath.Join(t.TempDir(), "refs.sigstore.json")
	t.Setenv("ACTIONS_ID_TOKEN_REQUEST_URL", "")
	if code, _, stderr := cli(t, "reference", "create", "--guest-image", gimg, "--keyless", "--out", out); code == 0 || !strings.Contains(stderr, "id-token: write") {
		t.Errorf("--keyless outside a job: exit %d %s", code, stderr)
	}
	ss := ghfake.NewSigstore(t, interopClaims())
	t.Setenv("ACTIONS_ID_TOKEN_REQUEST_URL", ss.TokenURL())
	t.Setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", ss.RequestToken)
	code, _, stderr := cli(t, "reference", "create", "--guest-image", gimg, "--keyless", "--fulcio-url", ss.Fulcio.URL, "--rekor-url", ss.Rekor.URL,
		"--vcpus", "2", "--out", out)
	if code != 0 {
		t.Fatalf("reference create --keyless: exit %d %s", code, stderr)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	id, err := verify.NewShortCertificateIdentity(ghfake.GitHubIssuer, "", "", "^https://github.com/acme/widget/.github/workflows/release.yml@refs/tags/v1.0.0$")
	if err != nil {
		t.Fatal(err)
	}
	vb, err := provenance.VerifyBundleSigner(b, provenance.VerifyOptions{TrustedMaterial: ss.TrustedRoot(), Identities: []verify.CertificateIdentity{id}})
	if err != nil {
		t.Fatalf("the keyless reference values do not verify with the release workflow's identity: %v", err)
	}
	if d, err := reference.ParseStatement(vb.Statement); err != nil || len(d.Values) == 0 {
		t.Errorf("signed statement: %v", err)
	}
}
