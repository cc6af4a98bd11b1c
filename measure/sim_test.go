package measure

import (
	"crypto/sha256"
	"crypto/sha512"
	"os"
	"path/filepath"
	"testing"
)

// The simulated measurement is the documented formula over the launch inputs, and every
// input changes it.
func TestSimMeasurement(t *testing.T) {
	dir := t.TempDir()
	kernel, initrd := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd")
	if err := os.WriteFile(kernel, []byte("kernel bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(initrd, []byte("initrd bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	in, err := LaunchInputsFromFiles(kernel, initrd, "console=hvc0", 4, 8192)
	if err != nil {
		t.Fatal(err)
	}
	if in.KernelSHA256 != sha256.Sum256([]byte("kernel bytes")) || in.InitrdSHA256 != sha256.Sum256([]byte("initrd bytes")) {
		t.Fatal("file digests differ")
	}
	// The documented formula, spelled out byte by byte.
	k, i := sha256.Sum256([]byte("kernel bytes")), sha256.Sum256([]byte("initrd bytes"))
	var msg []byte
	msg = append(msg, "cloche-sim-measurement-v1"...)
	msg = append(msg, 0)
	msg = append(msg, k[:]...)
	msg = append(msg, i[:]...)
	msg = append(msg, 12, 0, 0, 0)
	msg = append(msg, "console=hvc0"...)
	msg = append(msg, 4, 0, 0, 0)
	msg = append(msg, 0x00, 0x20, 0, 0, 0, 0, 0, 0)
	if got, want := SimMeasurement(in), sha512.Sum384(msg); got != want {
		t.Fatalf("SimMeasurement %x, want %x", got, want)
	}
	// Every input changes the measurement.
	base := SimMeasurement(in)
	for name, mod := range map[string]func(*LaunchInputs){
		"kernel":  func(l *LaunchInputs) { l.KernelSHA256[0] ^= 1 },
		"initrd":  func(l *LaunchInputs) { l.InitrdSHA256[0] ^= 1 },
		"cmdline": func(l *LaunchInputs) { l.Cmdline += " " },
		"vcpus":   func(l *LaunchInputs) { l.VCPUs++ },
		"memory":  func(l *LaunchInputs) { l.MemoryMiB++ },
	} {
		l := in
		mod(&l)
		if SimMeasurement(l) == base {
			t.Errorf("changing %s leaves the measurement unchanged", name)
		}
	}

	noInitrd, err := LaunchInputsFromFiles(kernel, "", "", 1, 512)
	if err != nil || noInitrd.InitrdSHA256 != sha256.Sum256(nil) {
		t.Fatalf("no initrd: %v", err)
	}
	if _, err := LaunchInputsFromFiles(filepath.Join(dir, "missing"), "", "", 1, 512); err == nil {
		t.Error("missing kernel: no error")
	}
	if _, err := LaunchInputsFromFiles(kernel, "", "", 0, 512); err == nil {
		t.Error("zero vcpus: no error")
	}
}
