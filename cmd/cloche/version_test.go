package main

import (
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/internal/host"
	"github.com/cloche-dev/cloche/internal/testfixture"
)

// TestVersion: cloche version names the version, commit and Go version, and the guest
// image measurement a default sim run would have; without a guest image it says how to
// build one and builds nothing.
func TestVersion(t *testing.T) {
	state := t.TempDir()
	code, out, _ := cli(t, "version", "--state-dir", state)
	for _, want := range []string{"cloche " + version + "\n", "commit: ", "go: " + runtime.Version(), "no guest image built yet in " + host.GuestImageDir(state) + "; run `cloche image guest`"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("cloche version (exit %d) lacks %q:\n%s", code, want, out)
		}
	}
	if code, out, _ := cli(t, "state-dir", "--state-dir", state); code != 0 || out != state+"\n" {
		t.Errorf("cloche state-dir: exit %d, %q", code, out)
	}
	t.Setenv("CLOCHE_STATE_DIR", state)
	if code, out, _ := cli(t, "state-dir"); code != 0 || out != state+"\n" {
		t.Errorf("cloche state-dir with $CLOCHE_STATE_DIR: exit %d, %q", code, out)
	}
	if entries, _ := os.ReadDir(state); len(entries) != 0 {
		t.Errorf("cloche version created %v in the state directory", names(entries))
	}

	img := testfixture.GuestImage(t)
	if err := os.Symlink(img, host.GuestImageDir(state)); err != nil {
		t.Fatal(err)
	}
	_, m, _ := cli(t, "measure", "--tee", "sim", "--guest-image", img, "--vcpus", "2", "--memory", "2048")
	code, out, _ = cli(t, "version", "--state-dir", state)
	if code != 0 || len(strings.TrimSpace(m)) != 96 || !strings.Contains(out, "measurement (sim, 2 vCPUs, 2048 MiB): "+strings.TrimSpace(m)) {
		t.Errorf("cloche version with a guest image (want measurement %s):\n%s", m, out)
	}
}
