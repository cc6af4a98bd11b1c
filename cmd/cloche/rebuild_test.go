package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/verify/verifytest"
)

// rebuild refuses bad input at once, with exit status 2 and nothing on stdout, naming the
// flag or argument: a bundle that is no bundle, one signed by another key than
// --bundle-key, an --out that holds the bundle, a --source that is not the recorded tree,
// an unknown --tee. None of these gets as far as the simulated-TEE warning.
func TestRebuildRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	k, err := verifytest.NewKit(filepath.Join(dir, "kit"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := k.Build(filepath.Join(dir, "build"), verifytest.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage.json")
	if err := os.WriteFile(garbage, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	base := []string{"rebuild", "--state-dir", filepath.Join(dir, "state"), "--source", src, "--out", filepath.Join(dir, "rebuilt")}
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"not a bundle", []string{garbage}, []string{"BUNDLE " + garbage + ": bundle: "}},
		{"missing bundle", []string{filepath.Join(dir, "none.json")}, []string{"BUNDLE ", "no such file"}},
		{"another signer", []string{"--bundle-key", k.ReleaseKeyPath, f.BundlePath}, []string{"BUNDLE " + f.BundlePath + ": signature: "}},
		{"out holds the bundle", []string{"--out", f.Dir, f.BundlePath}, []string{"--out: ", "holds the bundle"}},
		{"another source", []string{f.BundlePath}, []string{"--source: ", "source.archiveSha256 is sha256:" + f.Manifest.Source.ArchiveSHA256}},
		{"unknown tee", []string{"--tee", "nope", f.BundlePath}, []string{"--tee"}},
		{"two bundles", []string{f.BundlePath, f.BundlePath}, []string{"accepts 1 arg(s), received 2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			code, stdout, stderr := cli(t, append(append([]string{}, base...), tc.args...)...)
			if d := time.Since(start); d > time.Second {
				t.Errorf("refused after %s, want within a second", d)
			}
			if code != exitUsage || stdout != "" {
				t.Fatalf("exit %d, stdout %q; want %d and nothing on stdout; stderr:\n%s", code, stdout, exitUsage, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			if strings.Contains(stderr, "SIMULATED TEE") {
				t.Errorf("the simulated-TEE warning came before the refusal:\n%s", stderr)
			}
		})
	}
}
