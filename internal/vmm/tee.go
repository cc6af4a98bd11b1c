package vmm

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cloche-dev/cloche/attest"
)

// ErrTEEUnavailable: this host cannot launch the requested TEE (hardware, kernel module
// parameter, device, firmware or QEMU missing). The message names what is missing.
var ErrTEEUnavailable = errors.New("vmm: TEE not available on this host")

// SEV-SNP launch defaults.
const (
	// DefaultSNPPolicy is QEMU's default guest policy: SMT allowed (bit 16) and the reserved
	// bit 17 that must be 1; debug (bit 19) and the migration agent (bit 18) off.
	DefaultSNPPolicy = 0x30000
	// DefaultSNPCPUModel pins the guest's CPUID(1).EAX, which goes into every vCPU's VMSA and
	// so into MEASUREMENT: with "-cpu host" the measurement would change with the host.
	DefaultSNPCPUModel = "EPYC-v4"

	snpPolicyReserved = 1 << 17
	snpPolicyMigrate  = 1 << 18
	snpPolicyDebug    = 1 << 19
	// snpPolicyMBZ are bits 63..26, which must be zero.
	snpPolicyMBZ = ^uint64(0) &^ (1<<26 - 1)

	snpObjectID = "sev0"
	snpMemoryID = "ram1"
	tdxObjectID = "tdx0"
)

// SNPOptions tune an SEV-SNP launch. The launch-bound digest is Config.LaunchDigest.
type SNPOptions struct {
	// Policy is the guest policy; 0 means DefaultSNPPolicy. Debug and migration-agent
	// policies are refused: cloche never launches a guest a verifier must reject.
	Policy uint64
	// CPUModel is the QEMU CPU model; empty means DefaultSNPCPUModel.
	CPUModel string
	// CBitPos comes from the host's CPUID Fn8000_001F; Run fills it in when zero. Args
	// needs it set.
	CBitPos uint32
	// ReducedPhysBits is QEMU's reduced-phys-bits; Run sets SNPReducedPhysBits when zero.
	ReducedPhysBits uint32
}

// SNPReducedPhysBits is the reduced-phys-bits an SNP guest is launched with. It is 1, not
// the host's CPUID EBX[11:6] (5 on Milan and Genoa): that is the value the working SNP
// launch configurations use (Kata Containers, AMD's AMDSEV launch script, COCONUT-SVSM after
// AMD's advice), and QEMU only uses it to shrink the guest's physical address width, which
// the guest's CPUID page then reports; with the host's value guests lose address bits for
// nothing.
const SNPReducedPhysBits = 1

// DefaultQGS is where Intel's quote generation service listens in the common host setup.
const DefaultQGS = "unix:/var/run/tdx-qgs/qgs.socket"

// TDXOptions tune a TDX launch. The launch-bound digest is Config.LaunchDigest.
type TDXOptions struct {
	// QGS is the host's quote generation service that QEMU forwards the guest's quote
	// requests to: "unix:PATH" or "vsock:CID:PORT"; empty means DefaultQGS.
	QGS string
}

// QGSAddress is a parsed quote generation service address.
type QGSAddress struct {
	Type string // "unix" or "vsock"
	Path string // unix
	CID  uint32 // vsock
	Port uint32 // vsock
}

// String returns the address in the form ParseQGSAddress accepts.
func (a QGSAddress) String() string {
	if a.Type == "vsock" {
		return fmt.Sprintf("vsock:%d:%d", a.CID, a.Port)
	}
	return "unix:" + a.Path
}

// ParseQGSAddress parses "unix:PATH", "vsock:CID:PORT" or an absolute path (a unix socket).
func ParseQGSAddress(s string) (QGSAddress, error) {
	switch {
	case strings.HasPrefix(s, "vsock:"):
		cid, port, ok := strings.Cut(strings.TrimPrefix(s, "vsock:"), ":")
		c, err1 := strconv.ParseUint(cid, 10, 32)
		p, err2 := strconv.ParseUint(port, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			return QGSAddress{}, fmt.Errorf("vmm: QGS address %q, expected vsock:CID:PORT with decimal numbers", s)
		}
		return QGSAddress{Type: "vsock", CID: uint32(c), Port: uint32(p)}, nil
	case strings.HasPrefix(s, "unix:") || strings.HasPrefix(s, "/"):
		p := strings.TrimPrefix(s, "unix:")
		if !filepath.IsAbs(p) || strings.ContainsAny(p, "\x00\n") || len(p) > maxSocketPath {
			return QGSAddress{}, fmt.Errorf("vmm: QGS address %q, expected an absolute unix socket path of at most %d bytes", s, maxSocketPath)
		}
		return QGSAddress{Type: "unix", Path: p}, nil
	}
	return QGSAddress{}, fmt.Errorf("vmm: QGS address %q, expected unix:PATH or vsock:CID:PORT", s)
}

// qemuSocketAddress is QEMU's SocketAddress in JSON (QAPI): vsock cid and port are strings.
func (a QGSAddress) qemuSocketAddress() map[string]string {
	if a.Type == "vsock" {
		return map[string]string{"type": "vsock", "cid": strconv.FormatUint(uint64(a.CID), 10), "port": strconv.FormatUint(uint64(a.Port), 10)}
	}
	return map[string]string{"type": "unix", "path": a.Path}
}

// mrConfigID is the TDX MRCONFIGID cloche sets: the manifest digest followed by 16 zero
// bytes (docs/design.md, "Attest all inputs"; the guest checks the padding).
func mrConfigID(digest [32]byte) [48]byte {
	var m [48]byte
	copy(m[:], digest[:])
	return m
}

// snpBackend launches an SEV-SNP guest: the sev-snp-guest object carries the policy, the
// launch-bound HOST_DATA and kernel-hashes=on (so the AmdSev OVMF build measures the kernel,
// initrd and command line into MEASUREMENT); guest memory is a memfd backend (private memory
// is guest_memfd, which cannot back pflash, hence -bios); the CPU model is pinned so the
// VMSAs, and with them MEASUREMENT, do not depend on the host CPU.
type snpBackend struct{}

func (snpBackend) machineOptions() []string {
	return []string{"confidential-guest-support=" + snpObjectID, "memory-backend=" + snpMemoryID}
}

func (snpBackend) accelArgs(cfg Config, accel string) ([]string, error) {
	if accel != AccelKVM {
		return nil, fmt.Errorf("%w: snp needs the kvm accelerator (KVM with kvm_amd sev_snp=Y), not %q", ErrTEEUnavailable, accel)
	}
	model := cfg.SNP.CPUModel
	if model == "" {
		model = DefaultSNPCPUModel
	}
	return []string{"-accel", "kvm", "-cpu", model}, nil
}

// virtio devices of a confidential guest use the platform's DMA API (bounce buffers in
// shared memory), which the guest only does when the device offers ACCESS_PLATFORM.
func (snpBackend) deviceOptions() string { return ",disable-legacy=on,iommu_platform=on" }

func (snpBackend) args(cfg Config, _ string) ([]string, error) {
	policy := cfg.SNP.Policy
	if policy == 0 {
		policy = DefaultSNPPolicy
	}
	if err := checkSNPPolicy(policy); err != nil {
		return nil, err
	}
	if cfg.SNP.CBitPos == 0 {
		return nil, fmt.Errorf("vmm: snp needs the C-bit position (SNPOptions.CBitPos, from the host's CPUID leaf 0x%X; Run reads it)", uint32(sevCPUIDLeaf))
	}
	if cfg.LaunchDigest == ([32]byte{}) {
		return nil, fmt.Errorf("vmm: snp launch without a launch digest (Config.LaunchDigest becomes HOST_DATA)")
	}
	if err := checkFirmwarePath(cfg); err != nil {
		return nil, err
	}
	if strings.ContainsAny(cfg.SNP.CPUModel, ",= ") {
		return nil, fmt.Errorf("vmm: CPU model %q contains a comma, '=' or space", cfg.SNP.CPUModel)
	}
	return []string{
		"-bios", cfg.Firmware,
		"-object", fmt.Sprintf("memory-backend-memfd,id=%s,size=%dM,share=on,prealloc=off", snpMemoryID, cfg.MemoryMiB),
		"-object", fmt.Sprintf("sev-snp-guest,id=%s,policy=0x%x,cbitpos=%d,reduced-phys-bits=%d,kernel-hashes=on,host-data=%s",
			snpObjectID, policy, cfg.SNP.CBitPos, cfg.SNP.ReducedPhysBits, base64.StdEncoding.EncodeToString(cfg.LaunchDigest[:])),
	}, nil
}

// checkSNPPolicy refuses policies a cloche verifier rejects, before anything is launched.
func checkSNPPolicy(p uint64) error {
	switch {
	case p&snpPolicyReserved == 0:
		return fmt.Errorf("vmm: SNP policy 0x%x lacks the reserved bit 17, which must be 1", p)
	case p&snpPolicyDebug != 0:
		return fmt.Errorf("vmm: SNP policy 0x%x allows debugging (bit 19): cloche never launches a debuggable guest", p)
	case p&snpPolicyMigrate != 0:
		return fmt.Errorf("vmm: SNP policy 0x%x allows a migration agent (bit 18)", p)
	case p&snpPolicyMBZ != 0:
		return fmt.Errorf("vmm: SNP policy 0x%x sets bits above 25, which must be zero", p)
	}
	return nil
}

// tdxBackend launches a TDX guest: the tdx-guest object (JSON form, because the quote
// generation socket is a nested SocketAddress) carries MRCONFIGID and where QEMU forwards
// the guest's quote requests; TDX needs a split irqchip, -cpu host (named models are
// refused) and the TDVF firmware as -bios.
type tdxBackend struct{}

func (tdxBackend) machineOptions() []string {
	return []string{"confidential-guest-support=" + tdxObjectID, "hpet=off"}
}

func (tdxBackend) accelArgs(_ Config, accel string) ([]string, error) {
	if accel != AccelKVM {
		return nil, fmt.Errorf("%w: tdx needs the kvm accelerator (KVM with kvm_intel tdx=Y), not %q", ErrTEEUnavailable, accel)
	}
	// kernel-irqchip is a property of the KVM accelerator; "-machine kernel-irqchip=split"
	// is QEMU's older spelling of the same setting.
	return []string{"-accel", "kvm,kernel-irqchip=split", "-cpu", "host"}, nil
}

func (tdxBackend) deviceOptions() string { return ",disable-legacy=on,iommu_platform=on" }

func (tdxBackend) args(cfg Config, _ string) ([]string, error) {
	if cfg.LaunchDigest == ([32]byte{}) {
		return nil, fmt.Errorf("vmm: tdx launch without a launch digest (Config.LaunchDigest becomes MRCONFIGID)")
	}
	if err := checkFirmwarePath(cfg); err != nil {
		return nil, err
	}
	qgs := cfg.TDX.QGS
	if qgs == "" {
		qgs = DefaultQGS
	}
	addr, err := ParseQGSAddress(qgs)
	if err != nil {
		return nil, err
	}
	mr := mrConfigID(cfg.LaunchDigest)
	obj, err := json.Marshal(struct {
		QOMType string            `json:"qom-type"`
		ID      string            `json:"id"`
		MRCfg   string            `json:"mrconfigid"`
		SeptVE  bool              `json:"sept-ve-disable"`
		QGS     map[string]string `json:"quote-generation-socket"`
	}{"tdx-guest", tdxObjectID, base64.StdEncoding.EncodeToString(mr[:]), true, addr.qemuSocketAddress()})
	if err != nil {
		return nil, err
	}
	return []string{"-bios", cfg.Firmware, "-object", string(obj)}, nil
}

func checkFirmwarePath(cfg Config) error {
	if cfg.Firmware == "" {
		what := "the AmdSev OVMF build (OvmfPkg/AmdSev/AmdSevX64.dsc)"
		if cfg.TEE == attest.TEETDX {
			what = "TDVF (OVMF built with TDX support)"
		}
		return fmt.Errorf("vmm: %s launch needs Config.Firmware: %s", cfg.TEE, what)
	}
	if strings.ContainsAny(cfg.Firmware, "\x00\n\r") {
		return fmt.Errorf("vmm: firmware path %q contains a NUL or newline", cfg.Firmware)
	}
	return nil
}

// hostPaths are the host locations the launch pre-flight looks at; tests point them at fake
// trees.
type hostPaths struct {
	sys, dev string
	sevCPUID func() (SEVCPUID, error)
}

func defaultHostPaths() hostPaths {
	return hostPaths{sys: "/sys", dev: "/dev", sevCPUID: HostSEVCPUID}
}

// preflight checks what a launch of cfg.TEE needs from the host before QEMU starts, so a
// host without the hardware fails at once with the missing piece named, and fills in what
// comes from the host (the SNP C-bit). Plain and sim launches need nothing.
func (h hostPaths) preflight(cfg *Config) error {
	switch cfg.TEE {
	case attest.TEESNP:
		if err := checkFirmwareFile(cfg); err != nil {
			return err
		}
		if err := h.kvmDevice(cfg.TEE, "kvm_amd"); err != nil {
			return err
		}
		if err := moduleParamOn(h.sys, "kvm_amd", "sev_snp"); err != nil {
			return err
		}
		if fi, err := os.Stat(filepath.Join(h.dev, "sev")); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
			return fmt.Errorf("%w: snp needs %s (the AMD secure processor device, from the ccp driver): %v", ErrTEEUnavailable, filepath.Join(h.dev, "sev"), statErr(err, "not a character device"))
		}
		if cfg.SNP.CBitPos == 0 {
			c, err := h.sevCPUID()
			if err != nil {
				return fmt.Errorf("%w: %w", ErrTEEUnavailable, err)
			}
			if !c.SNP {
				return fmt.Errorf("%w: the CPU does not report SEV-SNP (CPUID leaf 0x%X EAX bit 4)", ErrTEEUnavailable, uint32(sevCPUIDLeaf))
			}
			cfg.SNP.CBitPos = c.CBitPos
		}
		if cfg.SNP.ReducedPhysBits == 0 {
			cfg.SNP.ReducedPhysBits = SNPReducedPhysBits
		}
	case attest.TEETDX:
		if err := checkFirmwareFile(cfg); err != nil {
			return err
		}
		if err := h.kvmDevice(cfg.TEE, "kvm_intel"); err != nil {
			return err
		}
		if err := moduleParamOn(h.sys, "kvm_intel", "tdx"); err != nil {
			return err
		}
		qgs := cfg.TDX.QGS
		if qgs == "" {
			qgs = DefaultQGS
		}
		addr, err := ParseQGSAddress(qgs)
		if err != nil {
			return err
		}
		if addr.Type == "unix" {
			if fi, err := os.Stat(addr.Path); err != nil || fi.Mode()&os.ModeSocket == 0 {
				return fmt.Errorf("%w: tdx quote generation service socket %s: %v (start Intel's QGS, or pass its address)", ErrTEEUnavailable, addr.Path, statErr(err, "not a socket"))
			}
		}
	}
	return nil
}

// kvmDevice checks that the KVM device exists and opens read-write. Hardware TEEs run only
// under KVM, and without the device QEMU says only "Could not access KVM kernel module",
// which names neither the file nor what provides it.
func (h hostPaths) kvmDevice(tee attest.TEE, module string) error {
	p := filepath.Join(h.dev, "kvm")
	fi, err := os.Stat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w: %s needs %s, which does not exist: this host has no KVM (load %s; in a VM, enable nested virtualisation)", ErrTEEUnavailable, tee, p, module)
	case err != nil:
		return fmt.Errorf("%w: %s needs %s: %v", ErrTEEUnavailable, tee, p, pathErrCause(err))
	case fi.Mode()&os.ModeCharDevice == 0:
		return fmt.Errorf("%w: %s needs %s to be the KVM character device; it is a %s", ErrTEEUnavailable, tee, p, fileKind(fi.Mode()))
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("%w: %s needs read-write access to %s: %v (run as root or join the kvm group)", ErrTEEUnavailable, tee, p, pathErrCause(err))
	}
	return f.Close()
}

// pathErrCause drops the operation and path from an *fs.PathError whose path the message
// already names, so it does not read "needs /dev/kvm: open /dev/kvm: ...".
func pathErrCause(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func fileKind(m fs.FileMode) string {
	if m.IsRegular() {
		return "regular file"
	}
	if m.IsDir() {
		return "directory"
	}
	return "file of mode " + m.Type().String()
}

func checkFirmwareFile(cfg *Config) error {
	if err := checkFirmwarePath(*cfg); err != nil {
		return fmt.Errorf("%w: %w", ErrTEEUnavailable, err)
	}
	fi, err := os.Stat(cfg.Firmware)
	if err != nil {
		return fmt.Errorf("%w: %s firmware: %w", ErrTEEUnavailable, cfg.TEE, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: %s firmware %s is not a regular file", ErrTEEUnavailable, cfg.TEE, cfg.Firmware)
	}
	return nil
}

// moduleParamOn checks /sys/module/MODULE/parameters/PARAM reads Y or 1.
func moduleParamOn(sys, module, param string) error {
	p := filepath.Join(sys, "module", module, "parameters", param)
	b, err := os.ReadFile(p)
	if err != nil {
		if _, merr := os.Stat(filepath.Join(sys, "module", module)); merr != nil {
			return fmt.Errorf("%w: kernel module %s is not loaded (%s missing)", ErrTEEUnavailable, module, p)
		}
		return fmt.Errorf("%w: %s: %v (this kernel's %s has no %s parameter)", ErrTEEUnavailable, p, err, module, param)
	}
	if v := strings.TrimSpace(string(b)); v != "Y" && v != "1" {
		return fmt.Errorf("%w: %s is %q, expected Y (load %s with %s=1)", ErrTEEUnavailable, p, v, module, param)
	}
	return nil
}

func statErr(err error, otherwise string) string {
	if err != nil {
		return err.Error()
	}
	return otherwise
}
