package guest

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeSysfs builds sysRoot/block/<name>/{serial,dev} for each disk (serial "" = no file).
func fakeSysfs(t *testing.T, disks map[string][2]string) string {
	t.Helper()
	root := t.TempDir()
	for name, v := range disks {
		dir := filepath.Join(root, "block", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if v[0] != "" {
			if err := os.WriteFile(filepath.Join(dir, "serial"), []byte(v[0]+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "dev"), []byte(v[1]+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestFindDisks(t *testing.T) {
	sys := fakeSysfs(t, map[string][2]string{
		"vda": {SerialToolchain, "253:0"},
		"vdb": {SerialInput, "253:16"},
		"vdc": {SerialOutput, "253:32"},
		"vdd": {"", "253:48"},       // no serial: ignored
		"sda": {SerialInput, "8:0"}, // not virtio: ignored
	})
	got, err := FindDisks(sys, "/dev", SerialInput, SerialToolchain, SerialOutput)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]BlockDevice{
		SerialInput:     {Name: "vdb", Path: "/dev/vdb", Dev: unix.Mkdev(253, 16)},
		SerialToolchain: {Name: "vda", Path: "/dev/vda", Dev: unix.Mkdev(253, 0)},
		SerialOutput:    {Name: "vdc", Path: "/dev/vdc", Dev: unix.Mkdev(253, 32)},
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %+v, expected %+v", k, got[k], v)
		}
	}
}

func TestFindDisksFailures(t *testing.T) {
	dup := fakeSysfs(t, map[string][2]string{"vda": {SerialInput, "253:0"}, "vdb": {SerialInput, "253:16"}})
	if _, err := FindDisks(dup, "/dev", SerialInput); err == nil || !strings.Contains(err.Error(), `two disks carry serial "cloche-input" (vda and vdb)`) {
		t.Errorf("duplicate serial: %v", err)
	}
	missing := fakeSysfs(t, map[string][2]string{"vda": {"something-else", "253:0"}})
	_, err := FindDisks(missing, "/dev", SerialOutput)
	if !errors.Is(err, ErrDiskNotFound) || !strings.Contains(err.Error(), `no virtio disk with serial "cloche-output" (disks seen: vda="something-else")`) {
		t.Errorf("missing disk: %v", err)
	}
	if _, err := FindDisks(t.TempDir(), "/dev", SerialOutput); !errors.Is(err, ErrDiskNotFound) || !strings.Contains(err.Error(), "disks seen: none") {
		t.Errorf("no disks: %v", err)
	}
	badDev := fakeSysfs(t, map[string][2]string{"vda": {SerialOutput, "253"}})
	if _, err := FindDisks(badDev, "/dev", SerialOutput); err == nil || !strings.Contains(err.Error(), "not major:minor") {
		t.Errorf("bad dev attribute: %v", err)
	}
}

func TestOpenBlockDeviceChecksTheNode(t *testing.T) {
	// A regular file posing as the disk node is refused.
	p := filepath.Join(t.TempDir(), "vdb")
	if err := os.WriteFile(p, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := OpenBlockDevice(BlockDevice{Name: "vdb", Path: p, Dev: unix.Mkdev(253, 16)}, os.O_RDONLY); err == nil || !strings.Contains(err.Error(), "is not block device 253:16") {
		t.Errorf("regular file accepted as a disk: %v", err)
	}
	if os.Geteuid() != 0 {
		return
	}
	// A real block device with the wrong number is refused too.
	var st unix.Stat_t
	if err := unix.Stat("/dev/loop0", &st); err != nil {
		t.Skip("no /dev/loop0")
	}
	if _, _, err := OpenBlockDevice(BlockDevice{Name: "loop0", Path: "/dev/loop0", Dev: st.Rdev + 1}, os.O_RDONLY); err == nil {
		t.Error("block device with a different number accepted")
	}
}

func TestFindSimPort(t *testing.T) {
	sys := t.TempDir()
	for port, name := range map[string]string{"vport0p0": "org.qemu.guest_agent.0", "vport1p1": "org.cloche.simtee.0"} {
		dir := filepath.Join(sys, "class", "virtio-ports", port)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "name"), []byte(name+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := findSimPort(sys, "/dev", "org.cloche.simtee.0")
	if err != nil || got != "/dev/vport1p1" {
		t.Fatalf("%q, %v", got, err)
	}
	if _, err := findSimPort(sys, "/dev", "org.cloche.other"); err == nil || !strings.Contains(err.Error(), `no virtio-serial port named "org.cloche.other"`) {
		t.Errorf("missing port: %v", err)
	}
}
