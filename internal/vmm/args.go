package vmm

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/cloche-dev/cloche/attest"
)

// Defaults and bounds for the VM shape.
const (
	DefaultQEMU      = "qemu-system-x86_64"
	DefaultVCPUs     = 2
	DefaultMemoryMiB = 2048

	// MaxVCPUs is what q35 accepts without an IOMMU for x2APIC ids.
	MaxVCPUs     = 255
	MinMemoryMiB = 128
	MaxMemoryMiB = 1 << 20
	// maxCmdline is the x86 kernel's COMMAND_LINE_SIZE, including the terminating NUL.
	maxCmdline = 2048
)

// Disk serial numbers: the guest finds its disks by these (/sys/block/vd*/serial), never by
// their order on the bus.
const (
	SerialInput     = "cloche-input"
	SerialToolchain = "cloche-toolchain"
	SerialOutput    = "cloche-output"
	SerialDeps      = "cloche-deps"
)

// Accelerator names accepted by Args.
const (
	AccelTCG  = "tcg"
	AccelKVM  = "kvm"
	AccelAuto = "auto"
)

// simChardevID names the chardev carrying the simulated secure processor channel.
const simChardevID = "simtee"

// teeBackend adds what one kind of TEE needs to the QEMU command line: sim a virtio-serial
// channel, SEV-SNP and TDX their confidential-guest-support object, memory and firmware.
type teeBackend interface {
	// machineOptions are appended to "-machine q35,...".
	machineOptions() []string
	// accelArgs returns the -accel and -cpu arguments for accel, or why this TEE cannot
	// run with it.
	accelArgs(cfg Config, accel string) ([]string, error)
	// deviceOptions are appended to every virtio device (not to pvpanic-pci, which is not one).
	deviceOptions() string
	// args are appended after the common arguments.
	args(cfg Config, simSocket string) ([]string, error)
}

// backendFor selects the backend for tee. The empty TEE launches a plain VM without any
// evidence channel (the guest then fails to get evidence: useful only for tests and images).
func backendFor(tee attest.TEE) (teeBackend, error) {
	switch tee {
	case "":
		return plainBackend{}, nil
	case attest.TEESim:
		return simBackend{}, nil
	case attest.TEESNP:
		return snpBackend{}, nil
	case attest.TEETDX:
		return tdxBackend{}, nil
	default:
		return nil, fmt.Errorf("vmm: unknown TEE %q, expected sim, snp or tdx", tee)
	}
}

// commonAccelArgs are the accelerator arguments of a VM without hardware isolation.
func commonAccelArgs(accel string) ([]string, error) {
	switch accel {
	case AccelTCG:
		// thread=single: all vCPUs on one host thread. QEMU 10.0's multi-threaded TCG
		// intermittently aborts early in boot ("iotlb_to_section: Assertion
		// `section_index < d->map.sections_nb' failed", seen in about one boot in fifty on
		// these machines); TCG only runs the simulated TEE, where a reliable build matters
		// more than a second core. -cpu max: every feature TCG emulates.
		return []string{"-accel", "tcg,thread=single", "-cpu", "max"}, nil
	case AccelKVM:
		return []string{"-accel", "kvm", "-cpu", "host"}, nil
	}
	return nil, fmt.Errorf("vmm: accelerator %q, expected %q or %q", accel, AccelTCG, AccelKVM)
}

type plainBackend struct{}

func (plainBackend) machineOptions() []string { return nil }
func (plainBackend) accelArgs(_ Config, accel string) ([]string, error) {
	return commonAccelArgs(accel)
}
func (plainBackend) deviceOptions() string                 { return "" }
func (plainBackend) args(Config, string) ([]string, error) { return nil, nil }

// simBackend exposes the host's simulated secure processor to the guest as a virtio-serial
// port named attest.SimPortName, backed by a unix socket that vmm listens on; QEMU is the
// client so the socket exists (and is ours) before QEMU starts.
type simBackend struct{}

func (simBackend) machineOptions() []string { return nil }
func (simBackend) accelArgs(_ Config, accel string) ([]string, error) {
	return commonAccelArgs(accel)
}
func (simBackend) deviceOptions() string { return "" }

func (simBackend) args(cfg Config, simSocket string) ([]string, error) {
	if simSocket == "" {
		return nil, fmt.Errorf("vmm: the sim TEE needs the path of the simulated secure processor socket")
	}
	return []string{
		"-device", "virtio-serial-pci,id=simtee-bus",
		"-chardev", "socket,id=" + simChardevID + ",path=" + qemuEscape(simSocket) + ",server=off",
		"-device", "virtserialport,bus=simtee-bus.0,chardev=" + simChardevID + ",name=" + attest.SimPortName,
	}, nil
}

// withDefaults fills the documented defaults into a copy of cfg.
func withDefaults(cfg Config) Config {
	if cfg.QEMU == "" {
		cfg.QEMU = DefaultQEMU
	}
	if cfg.VCPUs == 0 {
		cfg.VCPUs = DefaultVCPUs
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = DefaultMemoryMiB
	}
	return cfg
}

// Args returns the exact QEMU argument vector (without the program name) for cfg, run with
// accel ("tcg" or "kvm") and, for the sim TEE, the unix socket the simulated secure
// processor listens on. It checks the configuration's shape but not the files.
func Args(cfg Config, accel string, simSocket string) ([]string, error) {
	cfg = withDefaults(cfg)
	backend, err := backendFor(cfg.TEE)
	if err != nil {
		return nil, err
	}
	if err := checkShape(cfg); err != nil {
		return nil, err
	}

	machine := "q35"
	if accel != AccelTCG && accel != AccelKVM {
		return nil, fmt.Errorf("vmm: accelerator %q, expected %q or %q", accel, AccelTCG, AccelKVM)
	}
	accelArgs, err := backend.accelArgs(cfg, accel)
	if err != nil {
		return nil, err
	}
	if opts := backend.machineOptions(); len(opts) > 0 {
		machine += "," + strings.Join(opts, ",")
	}

	args := []string{
		"-nodefaults", "-no-user-config", "-nographic", "-display", "none",
		"-no-reboot", "-monitor", "none",
		"-machine", machine,
	}
	args = append(args, accelArgs...)
	args = append(args,
		"-smp", strconv.Itoa(cfg.VCPUs),
		"-m", strconv.Itoa(cfg.MemoryMiB),
		"-kernel", cfg.Kernel,
	)
	if cfg.Initrd != "" {
		args = append(args, "-initrd", cfg.Initrd)
	}
	args = append(args,
		"-append", cfg.Cmdline,
		// The console: ttyS0 on QEMU's stdout, which Run streams to Config.Console.
		// signal=off: a byte 0x03 from the guest must not be taken as Ctrl-C.
		"-chardev", "stdio,id=console,signal=off",
		"-serial", "chardev:console",
		"-nic", "none",
		// A guest that loads pvpanic-pci turns a kernel panic into a failed QEMU exit at
		// once instead of a hang until the wall-clock limit.
		"-device", "pvpanic-pci",
		"-action", "panic=exit-failure",
	)
	for _, d := range []struct {
		path, id, serial string
		readOnly         bool
	}{
		// The input is only read by the guest (it checks it against launch-bound digests);
		// the toolchain must be read-only for dm-verity to mean anything.
		{cfg.InputDisk, "input", SerialInput, true},
		{cfg.ToolchainDisk, "toolchain", SerialToolchain, true},
		{cfg.OutputDisk, "output", SerialOutput, false},
		{cfg.DepsDisk, "deps", SerialDeps, true},
	} {
		if d.path == "" {
			continue
		}
		ro := "off"
		if d.readOnly {
			ro = "on"
		}
		// werror/rerror=report: a host write or read error (ENOSPC on a full state disk)
		// reaches the guest as an I/O error, which it records as a failure. QEMU's default
		// for writes (enospc: pause the VM) would leave a running job hung until its
		// wall-clock limit, with nothing in the log.
		args = append(args,
			"-drive", "file="+qemuEscape(d.path)+",if=none,id="+d.id+",format=raw,readonly="+ro+",cache=writeback,werror=report,rerror=report",
			"-device", "virtio-blk-pci,drive="+d.id+",serial="+d.serial+backend.deviceOptions(),
		)
	}
	extra, err := backend.args(cfg, simSocket)
	if err != nil {
		return nil, err
	}
	return append(args, extra...), nil
}

// checkShape validates the parts of cfg that Args turns into arguments.
func checkShape(cfg Config) error {
	switch {
	case cfg.Kernel == "":
		return fmt.Errorf("vmm: no kernel given (Config.Kernel)")
	case cfg.VCPUs < 1 || cfg.VCPUs > MaxVCPUs:
		return fmt.Errorf("vmm: %d vCPUs, expected 1..%d", cfg.VCPUs, MaxVCPUs)
	case cfg.MemoryMiB < MinMemoryMiB || cfg.MemoryMiB > MaxMemoryMiB:
		return fmt.Errorf("vmm: %d MiB of memory, expected %d..%d", cfg.MemoryMiB, MinMemoryMiB, MaxMemoryMiB)
	case len(cfg.Cmdline) >= maxCmdline:
		return fmt.Errorf("vmm: kernel command line is %d bytes, limit %d", len(cfg.Cmdline), maxCmdline-1)
	case strings.ContainsRune(cfg.Cmdline, 0):
		return fmt.Errorf("vmm: kernel command line contains a NUL byte")
	}
	for _, p := range []struct{ what, path string }{
		{"kernel", cfg.Kernel}, {"initrd", cfg.Initrd}, {"input disk", cfg.InputDisk},
		{"toolchain disk", cfg.ToolchainDisk}, {"output disk", cfg.OutputDisk}, {"dependency disk", cfg.DepsDisk}, {"firmware", cfg.Firmware},
	} {
		if strings.ContainsRune(p.path, 0) || strings.ContainsAny(p.path, "\n\r") {
			return fmt.Errorf("vmm: %s path %q contains a NUL or newline", p.what, p.path)
		}
	}
	return nil
}

// qemuEscape escapes a value inside a QEMU "key=value,key=value" option: a comma is doubled.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }
