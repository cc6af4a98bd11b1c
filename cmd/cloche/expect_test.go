package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/provenance"
)

// The source and toolchain expectations are checked before anything is read (the bundle
// here does not exist), in this command's flag names.
func TestVerifyExpectationFlags(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key.pem")
	if err := provenance.GenerateKey(key, key+".pub"); err != nil {
		t.Fatal(err)
	}
	base := []string{"verify", "--bundle", filepath.Join(dir, "missing.json"), "--key", key + ".pub", "--insecure-skip-measurement"}
	tc := strings.Repeat("ab", 32)
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--toolchain-digest", tc, "a"}, exitFailed, "FAILED: expect.source: no expectation given for the source: the manifest's source is the runner host's choice; give --source-commit, --source-tree, --source-dir or keyless --source-uri (--source-tag alone binds no content: the host can write a tag object of that name for any commit), or --unsafe-allow-any-source"},
		{[]string{"--source-tag", "v1", "--toolchain-digest", tc, "a"}, exitFailed, "FAILED: expect.source: "},
		{[]string{"--source-tree", strings.Repeat("e", 40), "a"}, exitFailed, "FAILED: expect.toolchain: no expectation given for the toolchain: the manifest's toolchain is the runner host's choice, and its compiler makes the artifacts; give --toolchain-digest (its dm-verity root hash; cloche image toolchain prints it as verityRootHash), or --unsafe-allow-any-toolchain"},
		{[]string{"--source-tree", strings.Repeat("e", 40), "--source-dir", dir, "--toolchain-digest", tc, "a"}, exitUsage, "--source-tree and --source-dir both name the expected tree: give one"},
		{[]string{"--source-dir", filepath.Join(dir, "nope"), "--toolchain-digest", tc, "a"}, exitUsage, "--source-dir " + filepath.Join(dir, "nope") + ": tree id:"},
		{[]string{"--source-dir", dir, "--unsafe-allow-any-source", "--toolchain-digest", tc, "a"}, exitFailed, "FAILED: options: --unsafe-allow-any-source contradicts the source expectation given"},
		{[]string{"--unsafe-allow-any-source", "--toolchain-digest", tc, "--unsafe-allow-any-toolchain", "a"}, exitFailed, "FAILED: options: --unsafe-allow-any-toolchain contradicts --toolchain-digest"},
		// With both expectations the options pass and the missing bundle is what fails.
		{[]string{"--source-dir", dir, "--toolchain-digest", tc, key + ".pub"}, exitFailed, "FAILED: bundle: "},
	} {
		code, _, stderr := cli(t, append(append([]string{}, base...), c.args...)...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("verify %s: exit %d, stderr %q; want exit %d and %q", strings.Join(c.args, " "), code, stderr, c.code, c.want)
		}
	}
}
