package staticelf

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestCheck(t *testing.T) {
	// busybox-static (installed by scripts/install-deps.sh) is static; the host's sh is
	// dynamically linked on every Debian system.
	if err := Check("/bin/busybox"); err != nil {
		t.Errorf("static busybox rejected: %v", err)
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	if err := Check(sh); !errors.Is(err, ErrNotStatic) {
		t.Errorf("Check(%s) = %v, want ErrNotStatic", sh, err)
	}
	text := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(text, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Check(text); err == nil {
		t.Error("a shell script was accepted as a static ELF executable")
	}
}
