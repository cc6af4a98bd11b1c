package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/internal/host"
	"github.com/cloche-dev/cloche/internal/testfixture"
)

// The long steps say what phase they are in, and "cached" and "building" say the truth:
// a guest image that is up to date is reported cached; one that is missing is built, with
// its kernel package and initramfs steps named; the toolchain image in a warm cache is
// reported cached.
func TestProgressPhases(t *testing.T) {
	testfixture.RequireQEMU(t)
	agent := testfixture.GuestInit(t)
	ctx := context.Background()
	var stderr bytes.Buffer
	g := &globals{stdout: &bytes.Buffer{}, stderr: &stderr}

	// A missing guest image is built.
	state := t.TempDir()
	if err := os.MkdirAll(filepath.Dir(host.KernelCacheDir(state)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(testfixture.CacheDir(t), "kernel"), host.KernelCacheDir(state)); err != nil {
		t.Fatal(err)
	}
	if err := host.EnsureGuestImage(ctx, state, host.GuestImageDir(state), agent, g.progress()); err != nil {
		t.Fatal(err)
	}
	built := stderr.String()
	for _, want := range []string{`msg="guest image: started"`, `msg="guest image: kernel package"`,
		`msg="guest image: assembling the initramfs"`, `msg="guest image: done" elapsed=`} {
		if !strings.Contains(built, want) {
			t.Errorf("building: missing %q in:\n%s", want, built)
		}
	}
	if strings.Contains(built, "cached") {
		t.Errorf("a guest image that was built is reported cached:\n%s", built)
	}

	// The same image again is cached, and nothing is built.
	stderr.Reset()
	if err := host.EnsureGuestImage(ctx, state, host.GuestImageDir(state), agent, g.progress()); err != nil {
		t.Fatal(err)
	}
	if got := stderr.String(); !strings.Contains(got, `msg="guest image: cached"`) || strings.Contains(got, "initramfs") {
		t.Errorf("an up-to-date guest image:\n%s", got)
	}

	// The warm toolchain cache.
	testfixture.GCCToolchain(t)
	stderr.Reset()
	if _, err := host.DefaultToolchain(ctx, testfixture.CacheDir(t), g.progress(), g.logger()); err != nil {
		t.Fatal(err)
	}
	if got := stderr.String(); !strings.Contains(got, `msg="toolchain image: cached"`) || strings.Contains(got, "mmdebstrap") {
		t.Errorf("a cached toolchain image:\n%s", got)
	}
}
