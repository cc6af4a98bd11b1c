package guest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The guest init refuses to run with magic SysRq on; every real boot (the end-to-end
// tests) shows that the measured command line turns it off.
func TestRequireSysRqOff(t *testing.T) {
	proc := t.TempDir()
	p := filepath.Join(proc, "sys", "kernel", "sysrq")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := requireSysRqOff(proc); err == nil || !strings.Contains(err.Error(), "reading the SysRq setting") {
		t.Errorf("missing file: %v", err)
	}
	for content, ok := range map[string]bool{"0\n": true, "438\n": false, "1\n": false, "": false} {
		os.WriteFile(p, []byte(content), 0o644)
		err := requireSysRqOff(proc)
		if (err == nil) != ok || (err != nil && !strings.Contains(err.Error(), "sysctl.kernel.sysrq=0")) {
			t.Errorf("sysrq %q: %v", content, err)
		}
	}
}
