package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/cloche-dev/cloche/job"
)

// pushOneFileImage serves an image with one file from an in-process registry and returns
// its reference by digest.
func pushOneFileImage(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "bin/tool", Typeflag: tar.TypeReg, Mode: 0o755, Size: 4})
	io.WriteString(tw, "tool")
	tw.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	repo := strings.TrimPrefix(srv.URL, "http://") + "/tools/one"
	tag, err := name.NewTag(repo + ":v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return repo + "@" + d.String()
}

func TestImageToolchainFromImage(t *testing.T) {
	for _, tool := range []string{"mke2fs", "debugfs", "veritysetup"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (scripts/install-deps.sh); no image can be made", tool)
		}
	}
	ref := pushOneFileImage(t)
	state := t.TempDir()
	code, stdout, stderr := cli(t, "image", "toolchain", "--state-dir", state, "--from-image", ref, "--name", "one")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var tc job.Toolchain
	if err := json.Unmarshal([]byte(stdout), &tc); err != nil {
		t.Fatalf("output %q: %v", stdout, err)
	}
	if tc.SourceImage != ref || tc.Name != "one" || len(tc.VerityRootHash) != 64 {
		t.Errorf("record %+v, want sourceImage %s and name one", tc, ref)
	}
}

func TestImageToolchainFromImageBadInput(t *testing.T) {
	hex := strings.Repeat("a", 64)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--from-image", "registry.example/tools/cc:14"}, `--from-image: sourceImage "registry.example/tools/cc:14" must end in @sha256:`},
		{[]string{"--from-image", "registry.example/tools/cc@sha256:" + hex, "--package", "gcc"}, "--from-image makes the image from a container image"},
		{[]string{"--from-image", "registry.example/tools/cc@sha256:" + hex, "somedir"}, "--from-image makes the image from a container image"},
	} {
		state := t.TempDir()
		code, _, stderr := cli(t, append([]string{"image", "toolchain", "--state-dir", state}, c.args...)...)
		if code != exitUsage || !strings.Contains(stderr, c.want) {
			t.Errorf("%q: exit %d, stderr %q; want exit %d and %q", c.args, code, stderr, exitUsage, c.want)
		}
		if entries, _ := os.ReadDir(state); len(entries) != 0 {
			t.Errorf("%q: the state directory got %v before the input was checked", c.args, names(entries))
		}
	}
}
