package vmm

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/attest"
)

func TestParseSEVCPUID(t *testing.T) {
	for _, tc := range []struct {
		name         string
		maxExt, a, b uint32
		want         SEVCPUID
		wantErr      string
	}{
		// An Intel CPU: the highest extended leaf is 0x80000008.
		{name: "intel", maxExt: 0x80000008, wantErr: "leaf 0x8000001F is not available"},
		// SNP host: SME, SEV, SEV-ES, SNP (and more bits); C-bit 51, five reduced physical
		// bits; EBX bits above 11 (VMPL count) are ignored.
		{name: "snp host", maxExt: 0x80000028, a: 0x0101fd3f, b: 0x00004173,
			want: SEVCPUID{SME: true, SEV: true, SEVES: true, SNP: true, CBitPos: 51, ReducedPhysBits: 5}},
		{name: "one reduced bit", maxExt: 0x80000021, a: 0x1a, b: 0x00000073,
			want: SEVCPUID{SEV: true, SEVES: true, SNP: true, CBitPos: 51, ReducedPhysBits: 1}},
		// An older part with SEV but no SNP, C-bit 47.
		{name: "rome without snp", maxExt: 0x8000001f, a: 0x0000000f, b: 0x0000016f,
			want: SEVCPUID{SME: true, SEV: true, SEVES: true, CBitPos: 47, ReducedPhysBits: 5}},
		{name: "sev without c-bit", maxExt: 0x8000001f, a: 0x2, b: 0x40, wantErr: "C-bit position 0"},
		{name: "no memory encryption", maxExt: 0x8000001f, want: SEVCPUID{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseSEVCPUID(tc.maxExt, tc.a, tc.b)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestHostSEVCPUIDOnThisHost(t *testing.T) {
	info, _ := os.ReadFile("/proc/cpuinfo")
	got, err := HostSEVCPUID()
	amdSNP := bytes.Contains(info, []byte("AuthenticAMD")) && bytes.Contains(info, []byte(" sev_snp"))
	switch {
	case amdSNP:
		if err != nil || !got.SNP || got.CBitPos == 0 {
			t.Errorf("SNP host: HostSEVCPUID = %+v, %v", got, err)
		}
	case bytes.Contains(info, []byte("GenuineIntel")):
		if err == nil && (got.SEV || got.SNP) {
			t.Errorf("Intel host reports AMD memory encryption: %+v", got)
		}
	}
	t.Logf("HostSEVCPUID = %+v, %v", got, err)
}

var testDigest = sha256.Sum256([]byte("a job manifest"))

func snpTestConfig(fw string) Config {
	return Config{
		Kernel: "/k/vmlinuz", Initrd: "/k/initrd", Cmdline: "console=ttyS0",
		InputDisk: "/d/in.img", OutputDisk: "/d/out.img",
		TEE: attest.TEESNP, LaunchDigest: testDigest, Firmware: fw,
		SNP: SNPOptions{CBitPos: 51, ReducedPhysBits: 1},
	}
}

func tdxTestConfig(fw, qgs string) Config {
	return Config{
		Kernel: "/k/vmlinuz", Initrd: "/k/initrd", Cmdline: "console=ttyS0",
		InputDisk: "/d/in.img", OutputDisk: "/d/out.img",
		TEE: attest.TEETDX, LaunchDigest: testDigest, Firmware: fw,
		TDX: TDXOptions{QGS: qgs},
	}
}

// objectOptions splits "type,k=v,k=v" into the type and its options.
func objectOptions(t *testing.T, s string) (string, map[string]string) {
	t.Helper()
	parts := strings.Split(s, ",")
	opts := map[string]string{}
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			t.Fatalf("option %q in %q is not key=value", p, s)
		}
		opts[k] = v
	}
	return parts[0], opts
}

func TestSNPArgs(t *testing.T) {
	args, err := Args(snpTestConfig("/fw/OVMF.amdsev.fd"), AccelKVM, "")
	if err != nil {
		t.Fatal(err)
	}
	if m := argAfter(args, "-machine"); !slices.Equal(m, []string{"q35,confidential-guest-support=sev0,memory-backend=ram1"}) {
		t.Errorf("-machine %q", m)
	}
	if a := argAfter(args, "-accel"); !slices.Equal(a, []string{"kvm"}) {
		t.Errorf("-accel %q", a)
	}
	if c := argAfter(args, "-cpu"); !slices.Equal(c, []string{DefaultSNPCPUModel}) {
		t.Errorf("-cpu %q, want the pinned model", c)
	}
	if b := argAfter(args, "-bios"); !slices.Equal(b, []string{"/fw/OVMF.amdsev.fd"}) {
		t.Errorf("-bios %q", b)
	}
	objs := argAfter(args, "-object")
	if len(objs) != 2 {
		t.Fatalf("objects %q", objs)
	}
	typ, mem := objectOptions(t, objs[0])
	if typ != "memory-backend-memfd" || mem["id"] != "ram1" || mem["size"] != "2048M" || mem["share"] != "on" {
		t.Errorf("memory backend %q", objs[0])
	}
	typ, sev := objectOptions(t, objs[1])
	if typ != "sev-snp-guest" {
		t.Fatalf("object %q", objs[1])
	}
	for k, v := range map[string]string{"id": "sev0", "policy": "0x30000", "cbitpos": "51", "reduced-phys-bits": "1", "kernel-hashes": "on"} {
		if sev[k] != v {
			t.Errorf("sev-snp-guest %s=%q, want %q", k, sev[k], v)
		}
	}
	hd, err := base64.StdEncoding.DecodeString(sev["host-data"])
	if err != nil || !bytes.Equal(hd, testDigest[:]) {
		t.Errorf("host-data %q decodes to %x (%v), want the launch digest %x", sev["host-data"], hd, err, testDigest)
	}
	for _, d := range argAfter(args, "-device") {
		if strings.HasPrefix(d, "virtio-") && !strings.HasSuffix(d, ",disable-legacy=on,iommu_platform=on") {
			t.Errorf("virtio device %q lacks iommu_platform for a confidential guest", d)
		}
	}

	custom := snpTestConfig("/fw")
	custom.SNP.CPUModel, custom.SNP.Policy, custom.MemoryMiB = "EPYC-Milan-v2", 0x20000, 4096
	args, err = Args(custom, AccelKVM, "")
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(args, " ")
	for _, want := range []string{"-cpu EPYC-Milan-v2", "policy=0x20000", "size=4096M", "-m 4096"} {
		if !strings.Contains(joined, want) {
			t.Errorf("args lack %q: %s", want, joined)
		}
	}
}

func TestSNPArgsRejects(t *testing.T) {
	for _, tc := range []struct {
		name   string
		modify func(*Config)
		accel  string
		target error
		want   string
	}{
		{"tcg", func(c *Config) {}, AccelTCG, ErrTEEUnavailable, "snp needs the kvm accelerator"},
		{"debug policy", func(c *Config) { c.SNP.Policy = 0x30000 | 1<<19 }, AccelKVM, nil, "allows debugging"},
		{"migration agent", func(c *Config) { c.SNP.Policy = 0x30000 | 1<<18 }, AccelKVM, nil, "migration agent"},
		{"reserved bit clear", func(c *Config) { c.SNP.Policy = 0x10000 }, AccelKVM, nil, "reserved bit 17"},
		{"bits above 25", func(c *Config) { c.SNP.Policy = 0x30000 | 1<<30 }, AccelKVM, nil, "above 25"},
		{"no c-bit", func(c *Config) { c.SNP.CBitPos = 0 }, AccelKVM, nil, "C-bit position"},
		{"no launch digest", func(c *Config) { c.LaunchDigest = [32]byte{} }, AccelKVM, nil, "HOST_DATA"},
		{"no firmware", func(c *Config) { c.Firmware = "" }, AccelKVM, nil, "AmdSev OVMF"},
		{"odd cpu model", func(c *Config) { c.SNP.CPUModel = "EPYC,pmu=on" }, AccelKVM, nil, "CPU model"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := snpTestConfig("/fw")
			tc.modify(&cfg)
			_, err := Args(cfg, tc.accel, "")
			if err == nil {
				t.Fatal("Args accepted it")
			}
			if tc.target != nil && !errors.Is(err, tc.target) {
				t.Errorf("error %v is not %v", err, tc.target)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

// tdxObject is the tdx-guest object as cloche writes it.
type tdxObject struct {
	QOMType    string            `json:"qom-type"`
	ID         string            `json:"id"`
	MRConfigID string            `json:"mrconfigid"`
	SeptVE     bool              `json:"sept-ve-disable"`
	QGS        map[string]string `json:"quote-generation-socket"`
}

func TestTDXArgs(t *testing.T) {
	args, err := Args(tdxTestConfig("/fw/TDVF.fd", "vsock:2:4050"), AccelKVM, "")
	if err != nil {
		t.Fatal(err)
	}
	if m := argAfter(args, "-machine"); !slices.Equal(m, []string{"q35,confidential-guest-support=tdx0,hpet=off"}) {
		t.Errorf("-machine %q", m)
	}
	if a := argAfter(args, "-accel"); !slices.Equal(a, []string{"kvm,kernel-irqchip=split"}) {
		t.Errorf("-accel %q", a)
	}
	if c := argAfter(args, "-cpu"); !slices.Equal(c, []string{"host"}) {
		t.Errorf("-cpu %q (TDX refuses named models)", c)
	}
	if b := argAfter(args, "-bios"); !slices.Equal(b, []string{"/fw/TDVF.fd"}) {
		t.Errorf("-bios %q", b)
	}
	objs := argAfter(args, "-object")
	if len(objs) != 1 {
		t.Fatalf("objects %q", objs)
	}
	var obj tdxObject
	dec := json.NewDecoder(strings.NewReader(objs[0]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&obj); err != nil {
		t.Fatalf("tdx-guest object %q: %v", objs[0], err)
	}
	if obj.QOMType != "tdx-guest" || obj.ID != "tdx0" || !obj.SeptVE {
		t.Errorf("object %+v", obj)
	}
	mr, err := base64.StdEncoding.DecodeString(obj.MRConfigID)
	want := append(testDigest[:], make([]byte, 16)...)
	if err != nil || !bytes.Equal(mr, want) {
		t.Errorf("mrconfigid decodes to %x (%v), want digest || 16 zero bytes %x", mr, err, want)
	}
	if !maps(obj.QGS, map[string]string{"type": "vsock", "cid": "2", "port": "4050"}) {
		t.Errorf("quote-generation-socket %v", obj.QGS)
	}

	args, err = Args(tdxTestConfig("/fw/TDVF.fd", ""), AccelKVM, "")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(argAfter(args, "-object")[0], `"quote-generation-socket":{"path":"/var/run/tdx-qgs/qgs.socket","type":"unix"}`) {
		t.Errorf("default QGS not used: %q", argAfter(args, "-object"))
	}

	for _, tc := range []struct {
		name  string
		cfg   Config
		accel string
		want  string
	}{
		{"tcg", tdxTestConfig("/fw", ""), AccelTCG, "tdx needs the kvm accelerator"},
		{"no firmware", tdxTestConfig("", ""), AccelKVM, "TDVF"},
		{"bad qgs", tdxTestConfig("/fw", "tcp:1.2.3.4:4050"), AccelKVM, "expected unix:PATH or vsock:CID:PORT"},
		{"no digest", func() Config { c := tdxTestConfig("/fw", ""); c.LaunchDigest = [32]byte{}; return c }(), AccelKVM, "MRCONFIGID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Args(tc.cfg, tc.accel, "")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func maps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestParseQGSAddress(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    QGSAddress
		wantErr bool
	}{
		{in: "vsock:2:4050", want: QGSAddress{Type: "vsock", CID: 2, Port: 4050}},
		{in: "unix:/run/qgs.sock", want: QGSAddress{Type: "unix", Path: "/run/qgs.sock"}},
		{in: "/run/qgs.sock", want: QGSAddress{Type: "unix", Path: "/run/qgs.sock"}},
		{in: "unix:relative/qgs.sock", wantErr: true},
		{in: "vsock:2", wantErr: true},
		{in: "vsock:x:4050", wantErr: true},
		{in: "vsock:2:99999999999", wantErr: true},
		{in: "tcp:localhost:4050", wantErr: true},
		{in: "unix:/" + strings.Repeat("a", 200), wantErr: true},
		{in: "", wantErr: true},
	} {
		got, err := ParseQGSAddress(tc.in)
		if tc.wantErr {
			if err == nil {
				t.Errorf("ParseQGSAddress(%q) = %+v, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseQGSAddress(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if back, err := ParseQGSAddress(got.String()); err != nil || back != got {
			t.Errorf("round trip of %q through %q = %+v, %v", tc.in, got.String(), back, err)
		}
	}
}

// qmp runs QEMU with -machine none plus extra, sends the QMP commands, and returns one
// decoded response per command. QEMU exits on the final quit.
func qmp(t *testing.T, extra []string, commands ...string) []json.RawMessage {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := append([]string{"-machine", "none", "-nodefaults", "-no-user-config", "-display", "none", "-qmp", "stdio"}, extra...)
	cmd := exec.CommandContext(ctx, DefaultQEMU, args...)
	var in bytes.Buffer
	in.WriteString(`{"execute":"qmp_capabilities"}` + "\n")
	for _, c := range commands {
		in.WriteString(c + "\n")
	}
	in.WriteString(`{"execute":"quit"}` + "\n")
	cmd.Stdin = &in
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("QEMU %q: %v: %s", args, err, stderr.String())
	}
	var replies []json.RawMessage
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var msg map[string]json.RawMessage
		if err := json.Unmarshal(sc.Bytes(), &msg); err != nil {
			t.Fatalf("QMP line %q: %v", sc.Text(), err)
		}
		if r, ok := msg["return"]; ok {
			replies = append(replies, r)
		} else if e, ok := msg["error"]; ok {
			replies = append(replies, e)
		}
	}
	// qmp_capabilities first, quit last.
	if len(replies) != len(commands)+2 {
		t.Fatalf("QMP replies %d, want %d: %s", len(replies), len(commands)+2, out)
	}
	return replies[1 : len(replies)-1]
}

// qomProperties lists a QOM type's properties as this QEMU build has them, or nil if the
// build lacks the type. "-object TYPE,help" omits properties added per instance (cbitpos,
// reduced-phys-bits), so this asks QMP's qom-list-properties instead.
func qomProperties(t *testing.T, typename string) map[string]bool {
	t.Helper()
	r := qmp(t, nil, fmt.Sprintf(`{"execute":"qom-list-properties","arguments":{"typename":%q}}`, typename))[0]
	var props []struct{ Name string }
	if err := json.Unmarshal(r, &props); err != nil {
		if strings.Contains(string(r), "not found") {
			return nil
		}
		t.Fatalf("qom-list-properties %s: %s", typename, r)
	}
	m := map[string]bool{}
	for _, p := range props {
		m[p.Name] = true
	}
	return m
}

func checkOptionsKnown(t *testing.T, what string, opts map[string]string, props map[string]bool) {
	t.Helper()
	for k := range opts {
		if k == "id" || k == "qom-type" {
			continue
		}
		if !props[k] {
			t.Errorf("%s option %q is not a property of this QEMU's %s", what, k, what)
		}
	}
}

func TestSNPArgsAgainstInstalledQEMU(t *testing.T) {
	needQEMU(t)
	snpProps := qomProperties(t, "sev-snp-guest")
	if snpProps == nil {
		t.Skipf("this %s has no sev-snp-guest object (SEV-SNP needs QEMU >= 9.1)", DefaultQEMU)
	}
	args, err := Args(snpTestConfig("/fw"), AccelKVM, "")
	if err != nil {
		t.Fatal(err)
	}
	objs := argAfter(args, "-object")
	_, mem := objectOptions(t, objs[0])
	_, sev := objectOptions(t, objs[1])
	checkOptionsKnown(t, "sev-snp-guest", sev, snpProps)
	checkOptionsKnown(t, "memory-backend-memfd", mem, qomProperties(t, "memory-backend-memfd"))
	machine := qomProperties(t, "pc-q35-10.0-machine")
	if machine == nil {
		machine = qomProperties(t, "generic-pc-machine")
	}
	_, mopts := objectOptions(t, argAfter(args, "-machine")[0])
	checkOptionsKnown(t, "q35 machine", mopts, machine)

	// QEMU itself parses and range-checks the values (base64 and length of host-data, the
	// policy, booleans) when it creates the objects; -machine none needs no KVM.
	qmp(t, []string{"-object", objs[0], "-object", objs[1]})
	// The check above is able to fail: a wrong host-data length is refused.
	bad := strings.Replace(objs[1], "host-data=", "host-data=AAAA", 1)
	cmd := exec.Command(DefaultQEMU, "-machine", "none", "-nodefaults", "-display", "none", "-object", bad)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "length") {
		t.Errorf("QEMU accepted a 35-byte host-data: %v: %s", err, out)
	}

	cpus, err := exec.Command(DefaultQEMU, "-cpu", "help").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !regexpWord(string(cpus), DefaultSNPCPUModel) {
		t.Errorf("this QEMU has no CPU model %s", DefaultSNPCPUModel)
	}
}

func regexpWord(text, word string) bool {
	for _, f := range strings.Fields(text) {
		if f == word {
			return true
		}
	}
	return false
}

func TestTDXArgsAgainstInstalledQEMU(t *testing.T) {
	needQEMU(t)
	accelProps := qomProperties(t, "kvm-accel")
	if !accelProps["kernel-irqchip"] {
		t.Errorf("this QEMU's kvm accelerator has no kernel-irqchip property")
	}
	args, err := Args(tdxTestConfig("/fw", "vsock:2:4050"), AccelKVM, "")
	if err != nil {
		t.Fatal(err)
	}
	machine := qomProperties(t, "pc-q35-10.0-machine")
	if machine == nil {
		machine = qomProperties(t, "generic-pc-machine")
	}
	_, mopts := objectOptions(t, argAfter(args, "-machine")[0])
	checkOptionsKnown(t, "q35 machine", mopts, machine)

	tdxProps := qomProperties(t, "tdx-guest")
	if tdxProps == nil {
		ver, _ := exec.Command(DefaultQEMU, "--version").Output()
		t.Skipf("this QEMU (%s) has no tdx-guest object (TDX needs QEMU >= 10.1): the tdx-guest properties are not checked here", strings.SplitN(string(ver), "\n", 2)[0])
	}
	var obj map[string]any
	if err := json.Unmarshal([]byte(argAfter(args, "-object")[0]), &obj); err != nil {
		t.Fatal(err)
	}
	opts := map[string]string{}
	for k := range obj {
		opts[k] = ""
	}
	checkOptionsKnown(t, "tdx-guest", opts, tdxProps)
}

// fakeHost builds a /sys and /dev tree for the launch pre-flight.
type fakeHost struct {
	root string
	h    hostPaths
}

func newFakeHost(t *testing.T) *fakeHost {
	root := t.TempDir()
	f := &fakeHost{root: root, h: hostPaths{sys: filepath.Join(root, "sys"), dev: filepath.Join(root, "dev"),
		sevCPUID: func() (SEVCPUID, error) {
			// Milan's and Genoa's CPUID says 5 reduced bits; the launch uses 1 anyway.
			return SEVCPUID{SEV: true, SEVES: true, SNP: true, CBitPos: 51, ReducedPhysBits: 5}, nil
		}}}
	os.MkdirAll(f.h.dev, 0o755)
	return f
}

func (f *fakeHost) param(t *testing.T, module, param, value string) {
	dir := filepath.Join(f.h.sys, "module", module, "parameters")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, param), []byte(value+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// devKVM makes a character device node at dev/kvm (/dev/null's numbers, so opening it is
// harmless), as root can.
func (f *fakeHost) devKVM(t *testing.T) {
	if err := mknodChar(filepath.Join(f.h.dev, "kvm")); err != nil {
		t.Skipf("cannot create a device node for the fake /dev/kvm: %v", err)
	}
}

// devSEV makes a character device node at dev/sev (/dev/null's numbers), as root can.
func (f *fakeHost) devSEV(t *testing.T) {
	if err := mknodChar(filepath.Join(f.h.dev, "sev")); err != nil {
		t.Skipf("cannot create a device node for the fake /dev/sev: %v", err)
	}
}

func TestPreflightSNP(t *testing.T) {
	fw := filepath.Join(t.TempDir(), "OVMF.amdsev.fd")
	if err := os.WriteFile(fw, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, f *fakeHost, c *Config)
		want  string // "" = passes
	}{
		{"ready", func(t *testing.T, f *fakeHost, c *Config) { f.param(t, "kvm_amd", "sev_snp", "Y"); f.devSEV(t) }, ""},
		{"firmware missing", func(t *testing.T, f *fakeHost, c *Config) {
			f.param(t, "kvm_amd", "sev_snp", "Y")
			c.Firmware = filepath.Join(f.root, "none.fd")
		}, "snp firmware"},
		{"no /dev/kvm", func(t *testing.T, f *fakeHost, c *Config) {
			f.param(t, "kvm_amd", "sev_snp", "Y")
			f.devSEV(t)
			os.Remove(filepath.Join(f.h.dev, "kvm"))
		}, "dev/kvm, which does not exist: this host has no KVM (load kvm_amd"},
		{"/dev/kvm a regular file", func(t *testing.T, f *fakeHost, c *Config) {
			f.param(t, "kvm_amd", "sev_snp", "Y")
			f.devSEV(t)
			kvm := filepath.Join(f.h.dev, "kvm")
			os.Remove(kvm)
			os.WriteFile(kvm, nil, 0o644)
		}, "dev/kvm to be the KVM character device; it is a regular file"},
		{"kvm_amd not loaded", func(t *testing.T, f *fakeHost, c *Config) {}, "kernel module kvm_amd is not loaded"},
		{"no sev_snp parameter", func(t *testing.T, f *fakeHost, c *Config) {
			os.MkdirAll(filepath.Join(f.h.sys, "module", "kvm_amd", "parameters"), 0o755)
		}, "has no sev_snp parameter"},
		{"sev_snp off", func(t *testing.T, f *fakeHost, c *Config) { f.param(t, "kvm_amd", "sev_snp", "N") }, `sev_snp is "N", expected Y`},
		{"no /dev/sev", func(t *testing.T, f *fakeHost, c *Config) { f.param(t, "kvm_amd", "sev_snp", "Y") }, "/dev/sev"},
		{"/dev/sev a regular file", func(t *testing.T, f *fakeHost, c *Config) {
			f.param(t, "kvm_amd", "sev_snp", "Y")
			os.WriteFile(filepath.Join(f.h.dev, "sev"), nil, 0o644)
		}, "not a character device"},
		{"cpu without snp", func(t *testing.T, f *fakeHost, c *Config) {
			f.param(t, "kvm_amd", "sev_snp", "1")
			f.devSEV(t)
			f.h.sevCPUID = func() (SEVCPUID, error) { return SEVCPUID{SEV: true, CBitPos: 47}, nil }
		}, "does not report SEV-SNP"},
		{"cpuid unavailable", func(t *testing.T, f *fakeHost, c *Config) {
			f.param(t, "kvm_amd", "sev_snp", "Y")
			f.devSEV(t)
			f.h.sevCPUID = func() (SEVCPUID, error) { return ParseSEVCPUID(0x80000008, 0, 0) }
		}, "not an AMD CPU"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeHost(t)
			f.devKVM(t)
			cfg := snpTestConfig(fw)
			cfg.SNP.CBitPos, cfg.SNP.ReducedPhysBits = 0, 0
			tc.setup(t, f, &cfg)
			err := f.h.preflight(&cfg)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if cfg.SNP.CBitPos != 51 || cfg.SNP.ReducedPhysBits != 1 {
					t.Errorf("C-bit not taken from CPUID, or reduced-phys-bits not %d: %+v", SNPReducedPhysBits, cfg.SNP)
				}
				return
			}
			if !errors.Is(err, ErrTEEUnavailable) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("preflight = %v, want ErrTEEUnavailable mentioning %q", err, tc.want)
			}
		})
	}
}

func TestPreflightTDX(t *testing.T) {
	dir := t.TempDir()
	fw := filepath.Join(dir, "TDVF.fd")
	if err := os.WriteFile(fw, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "qgs.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, tc := range []struct {
		name, qgs string
		param     string
		want      string
		noKVM     bool
	}{
		{"ready", "unix:" + sock, "Y", "", false},
		{"no /dev/kvm", "unix:" + sock, "Y", "dev/kvm, which does not exist: this host has no KVM (load kvm_intel", true},
		{"ready with vsock", "vsock:2:4050", "Y", "", false},
		{"tdx off", "unix:" + sock, "N", `tdx is "N"`, false},
		{"kvm_intel not loaded", "unix:" + sock, "", "kvm_intel is not loaded", false},
		{"qgs socket missing", "unix:" + filepath.Join(dir, "none.sock"), "Y", "quote generation service socket", false},
		{"qgs not a socket", "unix:" + fw, "Y", "not a socket", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeHost(t)
			if !tc.noKVM {
				f.devKVM(t)
			}
			if tc.param != "" {
				f.param(t, "kvm_intel", "tdx", tc.param)
			}
			cfg := tdxTestConfig(fw, tc.qgs)
			err := f.h.preflight(&cfg)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrTEEUnavailable) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("preflight = %v, want ErrTEEUnavailable mentioning %q", err, tc.want)
			}
		})
	}
}

// TestRunHardwareTEEOnThisHostFailsFast: the real pre-flight on a host without SEV-SNP stops before
// QEMU with the missing piece named.
func TestRunHardwareTEEOnThisHostFailsFast(t *testing.T) {
	if _, err := os.Stat("/dev/sev"); err == nil {
		t.Skip("this host has /dev/sev")
	}
	if moduleParamOn("/sys", "kvm_intel", "tdx") == nil {
		t.Skip("this host has TDX")
	}
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinuz")
	fw := filepath.Join(dir, "fw.fd")
	for _, p := range []string{kernel, fw} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tee := range []attest.TEE{attest.TEESNP, attest.TEETDX} {
		start := time.Now()
		_, err := Run(context.Background(), Config{Kernel: kernel, Firmware: fw, TEE: tee, LaunchDigest: testDigest, Timeout: time.Minute})
		if !errors.Is(err, ErrTEEUnavailable) {
			t.Errorf("%s: Run = %v, want ErrTEEUnavailable", tee, err)
			continue
		}
		if _, serr := os.Stat("/dev/kvm"); errors.Is(serr, os.ErrNotExist) && !strings.Contains(err.Error(), "/dev/kvm, which does not exist") {
			t.Errorf("%s: Run = %v, want the missing /dev/kvm named", tee, err)
		}
		t.Logf("%s: %v (after %s)", tee, err, time.Since(start).Round(time.Millisecond))
	}
}

// TestRunReachesQEMUAndFailsFast passes the pre-flight with a fake host tree, so this
// host's QEMU gets the real SNP and TDX command lines and must refuse them at once (no SNP in
// this KVM; no tdx-guest in QEMU 10.0 or no TDX in KVM), never hang.
func TestRunReachesQEMUAndFailsFast(t *testing.T) {
	needQEMU(t)
	if _, err := os.Stat("/dev/sev"); err == nil {
		t.Skip("this host has /dev/sev: QEMU would really launch")
	}
	if moduleParamOn("/sys", "kvm_intel", "tdx") == nil {
		t.Skip("this host has TDX: QEMU would really launch")
	}
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinuz")
	fw := filepath.Join(dir, "fw.fd")
	for _, p := range []string{kernel, fw} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(dir, "qgs.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f := newFakeHost(t)
	f.param(t, "kvm_amd", "sev_snp", "Y")
	f.param(t, "kvm_intel", "tdx", "Y")
	f.devSEV(t)
	f.devKVM(t)
	// The fake tree gets past the pre-flight's /dev/kvm check, but QEMU opens the real one:
	// on a host with none, QEMU may refuse for want of KVM before it gets to the TEE (it
	// checks -object types first, so tdx on QEMU 10.0 still fails on tdx-guest).
	noKVM := ""
	if _, err := os.Stat("/dev/kvm"); errors.Is(err, os.ErrNotExist) {
		noKVM = "Could not access KVM kernel module"
	}
	for _, tc := range []struct {
		tee  attest.TEE
		want []string // one of
	}{
		{attest.TEESNP, []string{"SEV-SNP not supported by KVM", "SEV", "sev"}},
		{attest.TEETDX, []string{"tdx-guest", "TDX"}},
	} {
		if noKVM != "" {
			tc.want = append(tc.want, noKVM)
		}
		t.Run(string(tc.tee), func(t *testing.T) {
			limit := 2 * time.Minute
			start := time.Now()
			_, err := Run(context.Background(), Config{Kernel: kernel, Firmware: fw, TEE: tc.tee, LaunchDigest: testDigest,
				TDX: TDXOptions{QGS: "unix:" + sock}, Timeout: limit, host: &f.h})
			if !errors.Is(err, ErrQEMU) {
				t.Fatalf("Run = %v, want QEMU to refuse the launch (ErrQEMU)", err)
			}
			ok := false
			for _, w := range tc.want {
				ok = ok || strings.Contains(err.Error(), w)
			}
			if !ok {
				t.Errorf("QEMU's error %q names none of %q", err, tc.want)
			}
			t.Logf("QEMU refused after %s: %v", time.Since(start).Round(time.Millisecond), err)
		})
	}
}
