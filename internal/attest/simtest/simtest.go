// Package simtest holds what the attestation packages' tests share: two simulated secure
// processors created once per test binary (two RSA-4096 keys each make them expensive), a
// launch and report data with recognisable values, and the sentinel check.
package simtest

import (
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/attest/simsp"
	"github.com/cloche-dev/cloche/measure"
)

var (
	sharedSPOnce sync.Once
	sharedSPs    [2]*simsp.SP
	sharedSPErr  error
	sharedSPDirs []string
)

// Main runs the tests of m, then removes the shared state directories; a package's
// TestMain calls os.Exit(simtest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	for _, d := range sharedSPDirs {
		os.RemoveAll(d)
	}
	return code
}

// SPs returns two independent simulated secure processors.
func SPs(t testing.TB) (*simsp.SP, *simsp.SP) {
	t.Helper()
	sharedSPOnce.Do(func() {
		for i := range sharedSPs {
			dir, err := os.MkdirTemp("", "cloche-simsp-test-")
			if err != nil {
				sharedSPErr = err
				return
			}
			sharedSPDirs = append(sharedSPDirs, dir)
			if sharedSPs[i], err = simsp.LoadOrCreate(dir); err != nil {
				sharedSPErr = err
				return
			}
		}
	})
	if sharedSPErr != nil {
		t.Fatalf("creating simulated secure processors: %v", sharedSPErr)
	}
	return sharedSPs[0], sharedSPs[1]
}

// Launch is a launch with recognisable values.
func Launch() simsp.Launch {
	var l simsp.Launch
	l.Measurement = measure.SimMeasurement(measure.LaunchInputs{
		KernelSHA256: sha256.Sum256([]byte("kernel")),
		InitrdSHA256: sha256.Sum256([]byte("initrd")),
		Cmdline:      "console=ttyS0",
		VCPUs:        2,
		MemoryMiB:    2048,
	})
	l.HostData = sha256.Sum256([]byte(`{"_type":"manifest"}`))
	return l
}

// ReportData is the REPORT_DATA of the tests' reports.
func ReportData() [64]byte { return sha512.Sum512([]byte(`{"_type":"result"}`)) }

// WantErr fails unless err wraps sentinel and its message contains every fragment.
func WantErr(t *testing.T, err, sentinel error, fragments ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", sentinel)
	}
	if !errors.Is(err, sentinel) {
		t.Fatalf("got error %q, want it to wrap %q", err, sentinel)
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("error %q does not mention %q", err, f)
		}
	}
}

// Evidence returns sp's completed sim evidence for Launch and ReportData.
func Evidence(t testing.TB, sp *simsp.SP) *attest.Evidence {
	t.Helper()
	rep, err := sp.Report(Launch(), ReportData())
	if err != nil {
		t.Fatal(err)
	}
	ev := &attest.Evidence{TEE: attest.TEESim, Report: rep}
	if err := sp.Complete(ev); err != nil {
		t.Fatal(err)
	}
	return ev
}
