package attest

import (
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
)

// The simulated secure processors are expensive to create (two RSA-4096 keys each), so the
// tests share two of them, each in its own state directory for the whole test binary.
var (
	sharedSPOnce sync.Once
	sharedSPs    [2]*SimSP
	sharedSPErr  error
	sharedSPDirs []string
)

func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range sharedSPDirs {
		os.RemoveAll(d)
	}
	os.Exit(code)
}

// testSPs returns two independent simulated secure processors.
func testSPs(t testing.TB) (*SimSP, *SimSP) {
	t.Helper()
	sharedSPOnce.Do(func() {
		for i := range sharedSPs {
			dir, err := os.MkdirTemp("", "cloche-simsp-test-")
			if err != nil {
				sharedSPErr = err
				return
			}
			sharedSPDirs = append(sharedSPDirs, dir)
			if sharedSPs[i], err = LoadOrCreateSimSP(dir); err != nil {
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

// testLaunch is a launch with recognisable values.
func testLaunch() SimLaunch {
	var l SimLaunch
	l.Measurement = SimMeasurement(LaunchInputs{
		KernelSHA256: sha256.Sum256([]byte("kernel")),
		InitrdSHA256: sha256.Sum256([]byte("initrd")),
		Cmdline:      "console=ttyS0",
		VCPUs:        2,
		MemoryMiB:    2048,
	})
	l.HostData = sha256.Sum256([]byte(`{"_type":"manifest"}`))
	return l
}

func testReportData() [64]byte { return sha512.Sum512([]byte(`{"_type":"result"}`)) }

// wantErr fails unless err wraps sentinel and its message contains every fragment.
func wantErr(t *testing.T, err, sentinel error, fragments ...string) {
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
