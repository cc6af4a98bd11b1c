package vmm

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// TestQEMUExitErrorNamesSignal: a QEMU killed by a signal is described by the signal's
// name, not syscall's "killed by signal killed".
func TestQEMUExitErrorNamesSignal(t *testing.T) {
	err := exec.Command("/bin/sh", "-c", "kill -9 $$").Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("a shell that kills itself: %v", err)
	}
	msg := qemuExitError(exit, "stderr text").Error()
	if !strings.Contains(msg, "killed by signal 9 (SIGKILL): stderr text") || strings.Contains(msg, "signal killed") || !errors.Is(qemuExitError(exit, ""), ErrQEMU) {
		t.Errorf("QEMU killed by SIGKILL: %q", msg)
	}
}
