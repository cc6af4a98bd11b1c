package verifytest_test

import (
	"context"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/cloche-dev/cloche/verify"
	"github.com/cloche-dev/cloche/verify/verifytest"
)

var (
	kitOnce sync.Once
	kit     *verifytest.Kit
	kitErr  error
	kitDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if kitDir != "" {
		os.RemoveAll(kitDir)
	}
	os.Exit(code)
}

// sharedKit is one kit per test binary (its RSA-4096 chain takes seconds).
func sharedKit(t *testing.T) *verifytest.Kit {
	t.Helper()
	kitOnce.Do(func() {
		kitDir, kitErr = os.MkdirTemp("", "verifytest-kit-")
		if kitErr != nil {
			return
		}
		kit, kitErr = verifytest.NewKit(kitDir)
	})
	if kitErr != nil {
		t.Fatal(kitErr)
	}
	return kit
}

func options(k *verifytest.Kit, f *verifytest.Fixture, artifacts []string) verify.Options {
	trust := k.Trust()
	return verify.Options{BundlePath: f.BundlePath, PublicKey: trust.HostKey, Artifacts: artifacts,
		AllowSimulated: true, SimRoots: []*x509.Certificate{trust.SimRoot},
		Reference:          verify.ReferenceOptions{BundlePath: f.ReferencePath, Key: trust.ReleaseKey},
		ExpectedSourceTree: verifytest.SourceTree, Pins: verify.Pins{ToolchainDigest: verifytest.ToolchainDigest}}
}

// A fixture with artifacts of the test's choosing verifies with all of them, and an
// artifact the build did not produce is refused.
func TestBuildArtifacts(t *testing.T) {
	k := sharedKit(t)
	f, err := k.BuildArtifacts(t.TempDir(), map[string][]byte{"dist/app.tar": []byte("tar"), "app": []byte("\x7fELF")}, verifytest.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Artifacts) != 2 || filepath.Base(f.Artifacts[0]) != "app" || f.Artifact != f.Artifacts[0] {
		t.Fatalf("artifacts %q (first %q), want app then dist/app.tar", f.Artifacts, f.Artifact)
	}
	res, err := verify.Verify(context.Background(), options(k, f, f.Artifacts))
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if len(res.Artifacts) != 2 {
		t.Fatalf("verified %d artifacts, want 2", len(res.Artifacts))
	}
	other := filepath.Join(t.TempDir(), "other")
	if err := os.WriteFile(other, []byte("not built"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = verify.Verify(context.Background(), options(k, f, []string{other}))
	var ve *verify.Error
	if !errors.As(err, &ve) || ve.Check != verify.CheckSubject {
		t.Fatalf("an artifact the build did not produce: %v, want check %q", err, verify.CheckSubject)
	}
}

// Artifact names are paths inside the source tree; anything else is refused before a file
// is written.
func TestBuildArtifactsRejectsBadNames(t *testing.T) {
	k := sharedKit(t)
	for _, name := range []string{"", "../escape", "/abs", "a/../b", "a//b", "./a"} {
		dir := filepath.Join(t.TempDir(), "f")
		if _, err := k.BuildArtifacts(dir, map[string][]byte{name: []byte("x")}, verifytest.Hooks{}); err == nil {
			t.Errorf("artifact name %q accepted", name)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("artifact name %q: %s was created", name, dir)
		}
	}
	if _, err := k.BuildArtifacts(t.TempDir(), nil, verifytest.Hooks{}); err == nil {
		t.Error("no artifacts accepted")
	}
}
