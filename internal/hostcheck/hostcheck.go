// Package hostcheck finds out what this host can run: SEV-SNP, TDX, or only the simulated
// TEE. It looks at the kernel module parameters, devices, CPU, QEMU version, firmware and
// guest image files, and whether KVM really runs guests, and says for each missing piece
// how to fix it. `cloche doctor` prints its report; `cloche run --tee auto` picks a TEE
// from it; the runner advertises its labels.
//
// Every host location is a field of Host (filesystem roots, the command runner, the KVM
// probe, CPUID), so tests drive it with fake trees.
package hostcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/cloche-dev/cloche/internal/vmm"
	"golang.org/x/sys/unix"

	"github.com/cloche-dev/cloche/attest"
)

// Status of one check.
type Status string

const (
	StatusOK      Status = "ok"
	StatusMissing Status = "missing"
	// StatusWarn: not blocking, but worth knowing (e.g. a guest image built on first use).
	StatusWarn Status = "warn"
)

// Which TEE a check is for (the TEE names of attest, as strings).
const (
	ForSNP = string(attest.TEESNP)
	ForTDX = string(attest.TEETDX)
	ForAll = "all"
)

// Runner labels advertised for what the host can run.
const (
	LabelSNP = "sev-snp"
	LabelTDX = "tdx"
	LabelSim = "cloche-sim"
)

// Minimum QEMU versions: sev-snp-guest appeared in 9.1, tdx-guest in 10.1.
var (
	MinQEMUSNP = Version{9, 1, 0}
	MinQEMUTDX = Version{10, 1, 0}
)

// Check is one line of the report.
type Check struct {
	Name   string `json:"check"`
	TEE    string `json:"tee"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// Report is what the host can run.
type Report struct {
	Checks []Check `json:"checks"`
	SNP    bool    `json:"snp"`
	TDX    bool    `json:"tdx"`
	// Sim: the simulated TEE runs wherever QEMU runs (TCG if KVM does not).
	Sim    bool     `json:"sim"`
	Labels []string `json:"labels"`
}

// Missing returns the failed checks that keep tee ("snp", "tdx") from running.
func (r *Report) Missing(tee string) []Check {
	var out []Check
	for _, c := range r.Checks {
		if c.Status == StatusMissing && (c.TEE == tee || c.TEE == ForAll) {
			out = append(out, c)
		}
	}
	return out
}

// Host says where to look. Default fills in the real host.
type Host struct {
	SysRoot, DevRoot string
	QEMU             string
	// Run runs a command and returns its standard output.
	Run func(ctx context.Context, name string, args ...string) ([]byte, error)
	// ProbeKVM returns nil if KVM runs a guest, else why not.
	ProbeKVM func(ctx context.Context) error
	SEVCPUID func() (vmm.SEVCPUID, error)
	// Guest image files; empty means no image yet (built on first use).
	Kernel, Initrd string
	// SNPFirmware (AmdSev OVMF) and TDXFirmware (TDVF); empty means not configured.
	SNPFirmware, TDXFirmware string
	// QGS is the TDX quote generation service address (vmm.ParseQGSAddress); empty means
	// vmm.DefaultQGS.
	QGS string
	// DialVsock connects to a vsock address and closes the connection: nil if something
	// listens there. Default DialVsock.
	DialVsock func(ctx context.Context, cid, port uint32) error
}

// DialVsock connects to CID:PORT over AF_VSOCK within ctx's deadline (at most 2 s) and
// closes the connection. A host process reaching its own CID 2 (VMADDR_CID_HOST), as QEMU
// does to reach qgsd, goes through the vsock_loopback transport, not /dev/vhost-vsock,
// which only guests use; so the check is a real connection, not a device node.
func DialVsock(ctx context.Context, cid, port uint32) error {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("no AF_VSOCK sockets on this host (modprobe vsock_loopback): %w", err)
	}
	defer unix.Close(fd)
	timeout := 2 * time.Second
	if d, ok := ctx.Deadline(); ok && time.Until(d) < timeout {
		timeout = time.Until(d)
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	// SO_SNDTIMEO bounds connect(2) on a blocking socket, as on TCP.
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		return fmt.Errorf("vsock: %w", err)
	}
	if err := unix.Connect(fd, &unix.SockaddrVM{CID: cid, Port: port}); err != nil {
		return fmt.Errorf("connecting to vsock %d:%d: %w", cid, port, err)
	}
	return nil
}

// Default returns the real host's locations; the caller adds image and firmware paths.
func Default(qemu string) Host {
	if qemu == "" {
		qemu = vmm.DefaultQEMU
	}
	return Host{
		SysRoot: "/sys", DevRoot: "/dev", QEMU: qemu,
		Run: func(ctx context.Context, name string, args ...string) ([]byte, error) {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			return exec.CommandContext(ctx, name, args...).Output()
		},
		ProbeKVM:  func(ctx context.Context) error { return vmm.ProbeKVM(ctx, qemu, vmm.DefaultProbeTimeout) },
		SEVCPUID:  vmm.HostSEVCPUID,
		DialVsock: DialVsock,
	}
}

// Check runs every check. It never fails: what it cannot find is a missing check.
func (h Host) Check(ctx context.Context) *Report {
	r := &Report{}
	add := func(c Check) { r.Checks = append(r.Checks, c) }

	qemuVer, qemuCheck := h.checkQEMU(ctx)
	add(qemuCheck)
	kvm := Check{Name: "kvm", TEE: ForAll, Status: StatusOK, Detail: "KVM runs guests"}
	if err := h.ProbeKVM(ctx); err != nil {
		kvm.Status, kvm.Detail = StatusMissing, "KVM cannot run guests: "+err.Error()
		kvm.Fix = "SEV-SNP and TDX need hardware KVM (kvm_amd or kvm_intel); without it only the simulated TEE (sim) runs, under TCG"
	}
	add(kvm)
	add(h.fileCheck("guest-kernel", ForAll, h.Kernel, "run `cloche image guest` (cloche run builds it on first use)"))
	add(h.fileCheck("guest-initrd", ForAll, h.Initrd, "run `cloche image guest` (cloche run builds it on first use)"))

	// SEV-SNP.
	cpu := Check{Name: "snp-cpu", TEE: ForSNP}
	if c, err := h.SEVCPUID(); err != nil {
		cpu.Status, cpu.Detail = StatusMissing, err.Error()
		cpu.Fix = "SEV-SNP needs an AMD EPYC 7003 (Milan) or later CPU"
	} else if !c.SNP {
		cpu.Status, cpu.Detail = StatusMissing, fmt.Sprintf("CPUID 0x8000001F does not report SEV-SNP (SEV %t, SEV-ES %t)", c.SEV, c.SEVES)
		cpu.Fix = "enable SEV-SNP in the BIOS (SMEE, SEV-SNP, SNP memory coverage) on an EPYC 7003 or later"
	} else {
		cpu.Status, cpu.Detail = StatusOK, fmt.Sprintf("SEV-SNP, C-bit %d, %d reduced physical address bits", c.CBitPos, c.ReducedPhysBits)
	}
	add(cpu)
	add(h.paramCheck("snp-kvm", ForSNP, "kvm_amd", "sev_snp",
		"host kernel 6.11 or later with SEV-SNP; `modprobe kvm_amd sev_snp=1` (or kvm_amd.sev_snp=1 on the kernel command line)"))
	add(h.deviceCheck("snp-device", ForSNP, "sev", "load the ccp driver (modprobe ccp) with the SEV firmware initialised; see dmesg for SEV-SNP"))
	add(versionCheck("snp-qemu", ForSNP, qemuVer, MinQEMUSNP, "install QEMU 9.1 or later (Debian: qemu-system-x86 from bookworm-backports)"))
	add(h.fileCheck("snp-firmware", ForSNP, h.SNPFirmware, "build OVMF from edk2's OvmfPkg/AmdSev/AmdSevX64.dsc (Debian ships none) and install it as the state directory's firmware/OVMF.amdsev.fd, or name it as the SNP firmware"))

	// TDX.
	add(h.paramCheck("tdx-kvm", ForTDX, "kvm_intel", "tdx",
		"host kernel 6.16 or later with TDX; enable TDX in the BIOS and `modprobe kvm_intel tdx=1`"))
	add(h.qgsCheck(ctx))
	add(versionCheck("tdx-qemu", ForTDX, qemuVer, MinQEMUTDX, "install QEMU 10.1 or later"))
	add(h.fileCheck("tdx-firmware", ForTDX, h.TDXFirmware, "install TDVF (OVMF built with TDX support) and install it as the state directory's firmware/TDVF.fd, or name it as the TDX firmware"))

	r.SNP = len(r.Missing(ForSNP)) == 0
	r.TDX = len(r.Missing(ForTDX)) == 0
	r.Sim = qemuCheck.Status == StatusOK
	if r.SNP {
		r.Labels = append(r.Labels, LabelSNP)
	}
	if r.TDX {
		r.Labels = append(r.Labels, LabelTDX)
	}
	if !r.SNP && !r.TDX && r.Sim {
		// A hardware host advertises only what it proves; the sim label is for hosts that
		// can offer nothing better, so no job that asks for hardware lands on them.
		r.Labels = append(r.Labels, LabelSim)
	}
	return r
}

// Version is a QEMU version.
type Version struct{ Major, Minor, Micro int }

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro) }

// AtLeast reports v >= min.
func (v Version) AtLeast(min Version) bool {
	if v.Major != min.Major {
		return v.Major > min.Major
	}
	if v.Minor != min.Minor {
		return v.Minor > min.Minor
	}
	return v.Micro >= min.Micro
}

var qemuVersionRE = regexp.MustCompile(`QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?`)

// ParseQEMUVersion reads the first line of `qemu-system-x86_64 --version`.
func ParseQEMUVersion(out string) (Version, error) {
	m := qemuVersionRE.FindStringSubmatch(out)
	if m == nil {
		first, _, _ := strings.Cut(out, "\n")
		return Version{}, fmt.Errorf("hostcheck: %q is not QEMU's version line (expected \"QEMU emulator version X.Y.Z\")", first)
	}
	var v Version
	v.Major, _ = strconv.Atoi(m[1])
	v.Minor, _ = strconv.Atoi(m[2])
	if m[3] != "" {
		v.Micro, _ = strconv.Atoi(m[3])
	}
	return v, nil
}

func (h Host) checkQEMU(ctx context.Context) (*Version, Check) {
	c := Check{Name: "qemu", TEE: ForAll}
	out, err := h.Run(ctx, h.QEMU, "--version")
	if err != nil {
		c.Status, c.Detail = StatusMissing, fmt.Sprintf("%s --version: %v", h.QEMU, err)
		c.Fix = "install QEMU (Debian: apt-get install qemu-system-x86; bookworm-backports has 10.x)"
		return nil, c
	}
	v, err := ParseQEMUVersion(string(out))
	if err != nil {
		c.Status, c.Detail, c.Fix = StatusMissing, err.Error(), "install QEMU from your distribution"
		return nil, c
	}
	c.Status, c.Detail = StatusOK, fmt.Sprintf("%s %s", h.QEMU, v)
	return &v, c
}

func versionCheck(name, tee string, have *Version, min Version, fix string) Check {
	c := Check{Name: name, TEE: tee}
	switch {
	case have == nil:
		c.Status, c.Detail, c.Fix = StatusMissing, "no usable QEMU", fix
	case !have.AtLeast(min):
		c.Status, c.Detail, c.Fix = StatusMissing, fmt.Sprintf("QEMU %s, need %s or later", have, min), fix
	default:
		c.Status, c.Detail = StatusOK, fmt.Sprintf("QEMU %s >= %s", have, min)
	}
	return c
}

func (h Host) paramCheck(name, tee, module, param, fix string) Check {
	c := Check{Name: name, TEE: tee, Fix: fix}
	p := filepath.Join(h.SysRoot, "module", module, "parameters", param)
	b, err := os.ReadFile(p)
	switch {
	case err != nil && !exists(filepath.Join(h.SysRoot, "module", module)):
		c.Status, c.Detail = StatusMissing, fmt.Sprintf("kernel module %s is not loaded", module)
	case err != nil:
		c.Status, c.Detail = StatusMissing, fmt.Sprintf("%s has no %s parameter (%s): kernel too old", module, param, p)
	case strings.TrimSpace(string(b)) != "Y" && strings.TrimSpace(string(b)) != "1":
		c.Status, c.Detail = StatusMissing, fmt.Sprintf("%s=%s (%s)", param, strings.TrimSpace(string(b)), p)
	default:
		c.Status, c.Detail, c.Fix = StatusOK, fmt.Sprintf("%s %s=Y", module, param), ""
	}
	return c
}

func (h Host) deviceCheck(name, tee, dev, fix string) Check {
	c := Check{Name: name, TEE: tee}
	p := filepath.Join(h.DevRoot, dev)
	fi, err := os.Stat(p)
	switch {
	case err != nil:
		c.Status, c.Detail, c.Fix = StatusMissing, fmt.Sprintf("%s: %v", p, unwrapPath(err)), fix
	case fi.Mode()&os.ModeCharDevice == 0:
		c.Status, c.Detail, c.Fix = StatusMissing, fmt.Sprintf("%s is not a character device", p), fix
	default:
		c.Status, c.Detail = StatusOK, p
	}
	return c
}

func (h Host) fileCheck(name, tee, path, fix string) Check {
	c := Check{Name: name, TEE: tee}
	if path == "" {
		c.Status, c.Detail, c.Fix = StatusMissing, "not configured", fix
		if tee == ForAll {
			// The guest image is built on first use: not a blocker.
			c.Status, c.Detail = StatusWarn, "no guest image yet"
		}
		return c
	}
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		c.Status, c.Detail, c.Fix = StatusMissing, fmt.Sprintf("%s: %v", path, unwrapPath(err)), fix
	case !fi.Mode().IsRegular():
		c.Status, c.Detail, c.Fix = StatusMissing, fmt.Sprintf("%s is not a regular file", path), fix
	default:
		c.Status, c.Detail = StatusOK, fmt.Sprintf("%s (%d bytes)", path, fi.Size())
	}
	return c
}

func (h Host) qgsCheck(ctx context.Context) Check {
	c := Check{Name: "tdx-qgs", TEE: ForTDX}
	addr := h.QGS
	if addr == "" {
		addr = vmm.DefaultQGS
	}
	a, err := vmm.ParseQGSAddress(addr)
	if err != nil {
		c.Status, c.Detail, c.Fix = StatusMissing, err.Error(), "name the quote generation service as unix:PATH or vsock:CID:PORT"
		return c
	}
	fix := "install and start Intel's quote generation service (qgsd, from the DCAP packages) with a PCCS that holds this platform's PCK certificates"
	if a.Type == "vsock" {
		dial := h.DialVsock
		if dial == nil {
			dial = DialVsock
		}
		if err := dial(ctx, a.CID, a.Port); err != nil {
			c.Status, c.Detail, c.Fix = StatusMissing, fmt.Sprintf("QGS at %s: %v", a, err), "modprobe vsock_loopback (QEMU reaches the host's own CID through it); "+fix
			return c
		}
		c.Status, c.Detail = StatusOK, fmt.Sprintf("QGS at %s accepts connections", a)
		return c
	}
	d := net.Dialer{Timeout: 2 * time.Second}
	conn, err := d.DialContext(ctx, "unix", a.Path)
	if err != nil {
		c.Status, c.Detail, c.Fix = StatusMissing, fmt.Sprintf("QGS at %s: %v", a, unwrapPath(err)), fix
		return c
	}
	conn.Close()
	c.Status, c.Detail = StatusOK, fmt.Sprintf("QGS accepts connections at %s", a)
	return c
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// unwrapPath drops the path Go repeats in *PathError, since the detail names it already.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
