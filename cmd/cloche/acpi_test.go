package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/internal/testfixture"
)

// The guest digests the ACPI tables the host's VMM gave it into the result record: the
// digest is the same for two launches of the same shape (so a verifier can pin it), it is
// reported by verify --json, and --acpi-tables pins it.
func TestACPITablesPinned(t *testing.T) {
	testfixture.RequireQEMU(t)
	state := t.TempDir()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "a"), []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	gimg := testfixture.GuestImage(t)
	var digests []string
	for i := 0; i < 2; i++ {
		out := filepath.Join(t.TempDir(), "out")
		code, _, stderr := cli(t, "run", "--state-dir", state, "--source", src, "--out", out, "--tee", "sim", "--guest-image", gimg,
			"--toolchain", testfixture.BusyboxToolchain(t), "--accel", "tcg", "--artifact", "o", "--", "sh", "-c", "echo x > o")
		if code != 0 {
			t.Fatalf("run %d: exit %d\n%s", i, code, stderr)
		}
		_, root, _ := cli(t, "sim-root", "--state-dir", state)
		args := []string{"verify", "--bundle", filepath.Join(out, "provenance.sigstore.json"), "--key", filepath.Join(state, "signing-key.pem.pub"),
			"--guest-image", gimg, "--allow-simulated", "--trusted-sim-root", strings.TrimSpace(root),
			"--source-dir", src, "--toolchain-digest", testfixture.ToolchainDigest(t, testfixture.BusyboxToolchain(t))}
		code, stdout, stderr := cli(t, append(append([]string{}, args...), "--json", filepath.Join(out, "o"))...)
		var res struct {
			ACPITables      string `json:"acpiTables"`
			GuestClockStart string `json:"guestClockStart"`
		}
		if code != 0 || json.Unmarshal([]byte(stdout), &res) != nil || len(res.ACPITables) != 64 {
			t.Fatalf("verify --json: exit %d, acpiTables %q\n%s", code, res.ACPITables, stderr)
		}
		digests = append(digests, res.ACPITables)
		// The guest's clock (set by the host: here QEMU takes it from the host) is recorded.
		if at, err := time.Parse(time.RFC3339Nano, res.GuestClockStart); err != nil || time.Since(at).Abs() > 10*time.Minute {
			t.Errorf("guestClockStart %q: not the guest's clock at the start of this run (%v)", res.GuestClockStart, err)
		}
		if i == 1 {
			if code, _, stderr := cli(t, append(append([]string{}, args...), "--acpi-tables", digests[0], filepath.Join(out, "o"))...); code != 0 || !strings.Contains(stderr, "acpi-tables") {
				t.Errorf("pinned to the first launch's tables: exit %d %s", code, stderr)
			}
			other := strings.Repeat("0", 64)
			if code, _, stderr := cli(t, append(append([]string{}, args...), "--acpi-tables", other, filepath.Join(out, "o"))...); code != exitFailed || !strings.Contains(stderr, "FAILED: pin.acpi-tables:") {
				t.Errorf("pinned to other tables: exit %d %s", code, stderr)
			}
		}
	}
	if digests[0] != digests[1] {
		t.Errorf("two launches of the same shape gave ACPI digests %s and %s", digests[0], digests[1])
	}
}
