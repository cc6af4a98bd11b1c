package guest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// mountEarly mounts what PID 1 needs before anything else: proc, sysfs, devtmpfs and two
// tmpfs. A mount point that is already mounted (EBUSY) is fine.
func mountEarly() error {
	for _, m := range []struct {
		src, target, fstype string
		flags               uintptr
		data                string
	}{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	} {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", m.target, err)
		}
		if err := unix.Mount(m.src, m.target, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mounting %s on %s: %w", m.fstype, m.target, err)
		}
	}
	return nil
}

// requireSysRqOff fails unless magic SysRq is disabled (/proc/sys/kernel/sysrq is 0), as
// the measured kernel command line asks (sysctl.kernel.sysrq=0): with it on, the host could
// send SysRq commands through the serial console it controls.
func requireSysRqOff(procRoot string) error {
	b, err := os.ReadFile(filepath.Join(procRoot, "sys", "kernel", "sysrq"))
	if err != nil {
		return fmt.Errorf("reading the SysRq setting: %w", err)
	}
	if v := strings.TrimSpace(string(b)); v != "0" {
		return fmt.Errorf("magic SysRq is %s, expected 0 (sysctl.kernel.sysrq=0 on the kernel command line)", v)
	}
	return nil
}

// mountConfigfs mounts configfs (for configfs-tsm reports). Its absence is not an error by
// itself: the simulated TEE does not need it.
func mountConfigfs(dir string) error {
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("configfs mount point %s: %w", dir, err)
	}
	if err := unix.Mount("configfs", dir, "configfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mounting configfs on %s: %w", dir, err)
	}
	return nil
}

// findSimPort returns the /dev node of the virtio-serial port called name
// (sysRoot/class/virtio-ports/<vportNpM>/name).
func findSimPort(sysRoot, devRoot, name string) (string, error) {
	names, err := filepath.Glob(filepath.Join(sysRoot, "class", "virtio-ports", "*", "name"))
	if err != nil {
		return "", err
	}
	var seen []string
	found := ""
	for _, p := range names {
		v, err := readSysfsAttr(p)
		if err != nil {
			continue
		}
		port := filepath.Base(filepath.Dir(p))
		seen = append(seen, fmt.Sprintf("%s=%q", port, v))
		if v != name {
			continue
		}
		if found != "" {
			return "", fmt.Errorf("two virtio-serial ports are named %q: refusing to guess", name)
		}
		found = port
	}
	if found == "" {
		return "", fmt.Errorf("no virtio-serial port named %q (ports seen: %v)", name, seen)
	}
	return filepath.Join(devRoot, found), nil
}

// powerOff flushes everything and turns the VM off. PID 1 must never return: if the power
// off itself fails, exiting makes the kernel panic, which (with panic=-1 and QEMU's
// -no-reboot) also ends the VM.
func powerOff() {
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	fmt.Fprintf(os.Stderr, "cloche-guest: power off failed: %v; halting\n", err)
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_HALT)
	os.Exit(1)
}
