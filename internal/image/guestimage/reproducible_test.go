package guestimage_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/reference"
)

// repoRoot is the module root, from this file's location.
func repoRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

// buildHost is one simulated machine: its own checkout path, HOME, TMPDIR and umask, and
// either this machine's Go build cache or a cold one of its own (gocache ""). Only the module
// cache (the go.sum-checked module sources and the pinned Go toolchain the proxy served) is
// always shared, to keep the test within CI time.
type buildHost struct {
	src, home, tmp, gocache, out string
	umask                        int
}

func newBuildHost(t *testing.T, name string, umask int, coldCache bool) *buildHost {
	base := filepath.Join(t.TempDir(), name)
	h := &buildHost{src: filepath.Join(base, "src", name), home: filepath.Join(base, "home"), tmp: filepath.Join(base, "tmp"),
		gocache: goEnv(t, "GOCACHE"), out: filepath.Join(base, "out", "guest-image"), umask: umask}
	if coldCache {
		h.gocache = filepath.Join(base, "gocache")
	}
	for _, d := range []string{h.src, h.home, h.tmp, h.gocache} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	testfixture.CopyRepo(t, h.src)
	return h
}

func goEnv(t *testing.T, name string) string {
	t.Helper()
	out, err := exec.Command("go", "env", name).Output()
	if err != nil || len(bytes.TrimSpace(out)) == 0 {
		t.Fatalf("go env %s: %v", name, err)
	}
	return string(bytes.TrimSpace(out))
}

// buildAgent runs scripts/build-guest-init.sh in the host's checkout and environment.
func (h *buildHost) buildAgent(t *testing.T, modcache string) string {
	t.Helper()
	initBin := filepath.Join(h.tmp, "cloche-guest")
	cmd := exec.Command("sh", "-c", `umask "$1"; shift; exec "$@"`, "sh", fmt.Sprintf("%04o", h.umask),
		"bash", filepath.Join(h.src, "scripts", "build-guest-init.sh"), initBin)
	cmd.Dir = h.src
	var env []string
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "HOME", "TMPDIR", "GOCACHE", "GOMODCACHE", "GOPATH", "PWD":
		default:
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "HOME="+h.home, "TMPDIR="+h.tmp, "GOCACHE="+h.gocache, "GOMODCACHE="+modcache,
		"GOPATH="+filepath.Join(h.home, "go"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build-guest-init.sh in %s: %v\n%s", h.src, err, out)
	}
	return initBin
}

// buildImage builds the guest image in-process with the host's TMPDIR and umask.
func (h *buildHost) buildImage(t *testing.T, deb, initBin string) *guestimage.Image {
	t.Helper()
	t.Setenv("TMPDIR", h.tmp)
	t.Setenv("HOME", h.home)
	old := unix.Umask(h.umask)
	defer unix.Umask(old)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	im, err := guestimage.Build(ctx, guestimage.Options{KernelDeb: deb, GuestInit: initBin, OutDir: h.out})
	if err != nil {
		t.Fatalf("Build in %s: %v", h.out, err)
	}
	return im
}

// TestGuestImageReproducible builds the guest image twice from pinned inputs, as two
// different machines would: separate checkouts, HOME, TMPDIR, Go build caches and umasks.
// The guest init, the image files and the sim, SNP and TDX measurements must be identical.
func TestGuestImageReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the guest init twice from a cold build cache")
	}
	deb, err := guestimage.FetchKernelDeb(context.Background(), filepath.Join(testfixture.CacheDir(t), "kernel"))
	if err != nil {
		t.Fatalf("FetchKernelDeb: %v", err)
	}
	modcache := goEnv(t, "GOMODCACHE")
	hosts := []*buildHost{newBuildHost(t, "alpha", 0o022, false), newBuildHost(t, "second-machine", 0o077, true)}
	var images []*guestimage.Image
	var docs []*reference.Document
	for _, h := range hosts {
		initBin := h.buildAgent(t, modcache)
		im := h.buildImage(t, deb, initBin)
		if !im.KernelPinned || im.KernelDebSHA256 != guestimage.KernelPin().SHA256 {
			t.Fatalf("image built from %s is not labelled pinned: %+v", deb, im)
		}
		doc, err := reference.Create(context.Background(), reference.CreateOptions{GuestImageDir: h.out, ToolVersion: "0.0.0",
			VCPUs: []int{1, 2}, SNPFirmware: "../../../measure/testdata/snp-measure/ovmf_AmdSev_suffix.bin", TDXFirmware: "/usr/share/ovmf/OVMF.fd"})
		if err != nil {
			t.Fatalf("measurements of %s: %v", h.out, err)
		}
		images, docs = append(images, im), append(docs, doc)
	}
	for _, name := range []string{guestimage.KernelFile, guestimage.InitrdFile, guestimage.MetadataFile} {
		a, errA := os.ReadFile(filepath.Join(hosts[0].out, name))
		b, errB := os.ReadFile(filepath.Join(hosts[1].out, name))
		if errA != nil || errB != nil {
			t.Fatalf("read %s: %v %v", name, errA, errB)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs between the two machines", name)
		}
	}
	if images[0].GuestInitSHA256 != images[1].GuestInitSHA256 {
		t.Errorf("guest init differs: %s vs %s", images[0].GuestInitSHA256, images[1].GuestInitSHA256)
	}
	tees := map[attest.TEE]bool{}
	for _, v := range docs[0].Values {
		tees[v.TEE] = true
	}
	if !tees[attest.TEESim] || !tees[attest.TEESNP] || !tees[attest.TEETDX] {
		t.Fatalf("measurements cover %v, want sim, snp and tdx", tees)
	}
	if !reflect.DeepEqual(docs[0].Values, docs[1].Values) {
		t.Errorf("measurements differ:\n%+v\n%+v", docs[0].Values, docs[1].Values)
	}
	t.Logf("guest init sha256 %s (%s)", images[0].GuestInitSHA256, guestimage.GoToolchain())
	t.Logf("kernel %s sha256 %s", images[0].KernelPackage, images[0].Kernel.SHA256)
	t.Logf("initrd sha256 %s", images[0].Initrd.SHA256)
	for _, v := range docs[0].Values {
		if v.VCPUs == 1 {
			t.Logf("%s 1 vCPU measurement %s", v.TEE, v.Measurement)
		}
	}
}
