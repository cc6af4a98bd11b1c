package host

import (
	"os"
	"path/filepath"
	"testing"
)

func TestDefaultStateDirPrefersEnvironment(t *testing.T) {
	t.Setenv(StateDirEnv, "/tmp/cloche-state-x")
	if got := DefaultStateDir(); got != "/tmp/cloche-state-x" {
		t.Fatalf("DefaultStateDir() = %q, want the %s value", got, StateDirEnv)
	}
}

func TestDefaultStateDirWithoutEnvironment(t *testing.T) {
	t.Setenv(StateDirEnv, "")
	home := t.TempDir()
	t.Setenv("HOME", home)
	want := filepath.Join(home, ".local", "state", "cloche")
	if os.Geteuid() == 0 {
		want = "/var/lib/cloche"
	}
	if got := DefaultStateDir(); got != want {
		t.Fatalf("DefaultStateDir() = %q, want %q", got, want)
	}
}

// The layout's entries are distinct paths inside the state directory: two sharing a path
// would let, say, the KDS cache overwrite the guest image.
func TestLayoutEntriesAreDistinctAndInside(t *testing.T) {
	state := "/s"
	seen := map[string]bool{}
	for _, p := range []string{GuestImageDir(state), SimTEEDir(state), SigningKeyPath(state), KernelCacheDir(state),
		KDSCacheDir(state), SNPFirmwarePath(state), TDXFirmwarePath(state)} {
		rel, err := filepath.Rel(state, p)
		if err != nil || rel == "." || filepath.IsAbs(rel) || rel[:2] == ".." {
			t.Errorf("%s is not inside %s", p, state)
		}
		if seen[p] {
			t.Errorf("%s appears twice in the layout", p)
		}
		seen[p] = true
	}
}
