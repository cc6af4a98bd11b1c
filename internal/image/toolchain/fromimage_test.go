package toolchain

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// entry is one tar entry of a test layer.
type entry struct {
	name     string
	typ      byte
	mode     int64
	uid, gid int
	body     string // content, or link target
}

func dirE(name string) entry { return entry{name: name, typ: tar.TypeDir, mode: 0o755} }
func fileE(name, body string) entry {
	return entry{name: name, typ: tar.TypeReg, mode: 0o644, body: body}
}
func symlinkE(name, target string) entry {
	return entry{name: name, typ: tar.TypeSymlink, mode: 0o777, body: target}
}

func tarBytes(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid}
		switch e.typ {
		case tar.TypeReg:
			h.Size = int64(len(e.body))
		case tar.TypeSymlink, tar.TypeLink:
			h.Linkname = e.body
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			io.WriteString(tw, e.body)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// flatten applies the layers and writes the tree; it returns the tree's listing.
func flatten(t *testing.T, layers ...[]byte) (map[string]string, error) {
	t.Helper()
	work := t.TempDir()
	f := newFlattener(work)
	for _, l := range layers {
		if err := f.applyLayer(bytes.NewReader(l)); err != nil {
			return nil, err
		}
	}
	root := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	attrs, err := f.writeTree(root)
	if err != nil {
		t.Fatalf("writeTree: %v", err)
	}
	return listing(t, root, attrs), nil
}

// listing describes every entry: its image mode and owner and its content or link target.
func listing(t *testing.T, root string, attrs map[string]inodeAttrs) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if rel == "." {
			rel = ""
		}
		a, ok := attrs[rel]
		if !ok {
			t.Errorf("%q has no attributes", rel)
		}
		s := fmt.Sprintf("%07o %d:%d", a.mode, a.uid, a.gid)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			s += " -> " + target
		case d.Type().IsRegular():
			b, _ := os.ReadFile(p)
			s += " " + string(b)
		}
		out[rel] = s
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(attrs) {
		t.Errorf("%d entries written, %d with attributes", len(out), len(attrs))
	}
	return out
}

func keys(m map[string]string) []string {
	k := make([]string, 0, len(m))
	for n := range m {
		k = append(k, n)
	}
	slices.Sort(k)
	return k
}

func TestFlattenWhiteouts(t *testing.T) {
	lower := tarBytes(t, dirE("a"), fileE("a/keep", "k"), fileE("a/gone", "g"),
		dirE("d"), fileE("d/x", "x"), dirE("d/sub"), fileE("d/sub/y", "y"),
		dirE("e"), fileE("e/inside", "i"), fileE("f", "old"))
	upper := tarBytes(t, fileE("a/.wh.gone", ""),
		// The new entries come before the opaque marker: it hides only lower layers.
		dirE("d"), fileE("d/new", "n"), fileE("d/sub/z", "z"), fileE("d/.wh..wh..opq", ""),
		fileE(".wh.e", ""), fileE("f", "new"), fileE(".wh.nonexistent", ""))
	got, err := flatten(t, lower, upper)
	if err != nil {
		t.Fatalf("flatten: %v", err)
	}
	want := []string{"", "a", "a/keep", "d", "d/new", "d/sub", "d/sub/z", "f"}
	if !slices.Equal(keys(got), want) {
		t.Fatalf("flattened tree has %q, want %q", keys(got), want)
	}
	if got["f"] != "0100644 0:0 new" {
		t.Errorf("f is %q: the upper layer's file must replace the lower one", got["f"])
	}
	// Without the upper layer everything is there: the whiteouts did the removing.
	all, err := flatten(t, lower)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := all["a/gone"]; !ok {
		t.Fatal("a/gone missing from the lower layer alone")
	}
}

func TestFlattenModesOwnersAndLinks(t *testing.T) {
	tool := entry{name: "/usr/bin/tool", typ: tar.TypeReg, mode: 0o4755, uid: 0, gid: 50, body: "#!tool"}
	home := entry{name: "./home/user", typ: tar.TypeDir, mode: 0o700, uid: 1000, gid: 1000}
	hard := entry{name: "usr/bin/tool2", typ: tar.TypeLink, body: "usr/bin/tool"}
	got, err := flatten(t, tarBytes(t, tool, home, hard, symlinkE("bin", "usr/bin")))
	if err != nil {
		t.Fatalf("flatten: %v", err)
	}
	want := map[string]string{
		"":              "0040755 0:0",
		"usr":           "0040755 0:0",
		"usr/bin":       "0040755 0:0",
		"usr/bin/tool":  "0104755 0:50 #!tool",
		"usr/bin/tool2": "0104755 0:50 #!tool",
		"home":          "0040755 0:0",
		"home/user":     "0040700 1000:1000",
		"bin":           "0120777 0:0 -> usr/bin",
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%q: got %q, want %q", k, got[k], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("tree has %q", keys(got))
	}
}

func TestFlattenRefusesUnsafeEntries(t *testing.T) {
	cases := map[string]struct {
		layers [][]byte
		want   string
	}{
		"dotdot":             {[][]byte{tarBytes(t, fileE("../escape", "x"))}, `".."`},
		"inner dotdot":       {[][]byte{tarBytes(t, fileE("a/../../escape", "x"))}, `".."`},
		"through a symlink":  {[][]byte{tarBytes(t, symlinkE("etc", "/etc")), tarBytes(t, fileE("etc/passwd", "x"))}, "not a directory"},
		"below a file":       {[][]byte{tarBytes(t, fileE("f", "x"), fileE("f/g", "y"))}, "not a directory"},
		"hard link missing":  {[][]byte{tarBytes(t, entry{name: "l", typ: tar.TypeLink, body: "nowhere"})}, "hard link target"},
		"hard link escapes":  {[][]byte{tarBytes(t, entry{name: "l", typ: tar.TypeLink, body: "../../etc/shadow"})}, `".."`},
		"hard link to a dir": {[][]byte{tarBytes(t, dirE("d"), entry{name: "l", typ: tar.TypeLink, body: "d"})}, "hard link target"},
		"device":             {[][]byte{tarBytes(t, entry{name: "dev/sda", typ: tar.TypeBlock, mode: 0o600})}, "not supported"},
		"fifo":               {[][]byte{tarBytes(t, entry{name: "p", typ: tar.TypeFifo, mode: 0o600})}, "not supported"},
		"quote in name":      {[][]byte{tarBytes(t, fileE(`a"b`, "x"))}, "quote"},
		"root as a file":     {[][]byte{tarBytes(t, fileE(".", "x"))}, "root"},
		"empty whiteout":     {[][]byte{tarBytes(t, fileE("a/.wh.", ""))}, "whiteout"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := flatten(t, c.layers...)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

func TestFlattenTruncatedLayer(t *testing.T) {
	b := tarBytes(t, fileE("big", strings.Repeat("x", 5000)))
	if _, err := flatten(t, b[:2048]); err == nil {
		t.Fatal("a layer cut off inside a file's content was accepted")
	}
}

// testRegistry serves an in-process registry; tamper, when set, may answer a request
// itself (returning true) instead of the registry.
type testRegistry struct {
	srv    *httptest.Server
	tamper func(w http.ResponseWriter, r *http.Request) bool
}

func newTestRegistry(t *testing.T) *testRegistry {
	t.Helper()
	tr := &testRegistry{}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	tr.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tr.tamper != nil && tr.tamper(w, r) {
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(tr.srv.Close)
	return tr
}

// push writes an image of the layers (each a tarball, gzip-compressed) and returns its
// reference by digest.
func (tr *testRegistry) push(t *testing.T, repo string, layers ...[]byte) (string, v1.Image) {
	t.Helper()
	img := imageOf(t, layers...)
	host := strings.TrimPrefix(tr.srv.URL, "http://")
	tag, err := name.NewTag(host + "/" + repo + ":latest")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatalf("push: %v", err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return host + "/" + repo + "@" + d.String(), img
}

func imageOf(t *testing.T, layers ...[]byte) v1.Image {
	t.Helper()
	img := empty.Image
	for _, b := range layers {
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	return img
}

// indexEntry is one image of an index and its platform ("os/arch").
type indexEntry struct {
	platform string
	img      v1.Image
}

// pushIndex writes an index of the images, in the order given, and returns its reference
// by digest.
func (tr *testRegistry) pushIndex(t *testing.T, repo string, images ...indexEntry) string {
	t.Helper()
	var adds []mutate.IndexAddendum
	for _, p := range images {
		goos, arch, _ := strings.Cut(p.platform, "/")
		adds = append(adds, mutate.IndexAddendum{Add: p.img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: goos, Architecture: arch}}})
	}
	idx := mutate.AppendManifests(empty.Index, adds...)
	host := strings.TrimPrefix(tr.srv.URL, "http://")
	tag, err := name.NewTag(host + "/" + repo + ":multi")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(tag, idx); err != nil {
		t.Fatalf("push index: %v", err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return host + "/" + repo + "@" + d.String()
}

func pullListing(t *testing.T, ref string) (map[string]string, error) {
	t.Helper()
	d, err := ParseSourceImage(ref)
	if err != nil {
		return nil, err
	}
	work := t.TempDir()
	root := filepath.Join(work, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	attrs, err := pullTree(context.Background(), nil, d, nil, work, root)
	if err != nil {
		return nil, err
	}
	return listing(t, root, attrs), nil
}

func testLayers(t *testing.T) [][]byte {
	return [][]byte{
		tarBytes(t, dirE("bin"), fileE("bin/cc", "compiler"), fileE("etc/old.conf", "old"), symlinkE("lib", "usr/lib")),
		tarBytes(t, fileE("etc/.wh.old.conf", ""), fileE("etc/new.conf", "new")),
	}
}

func TestPullTree(t *testing.T) {
	reg := newTestRegistry(t)
	ref, _ := reg.push(t, "tools/cc", testLayers(t)...)
	a, err := pullListing(t, ref)
	if err != nil {
		t.Fatalf("pull: %v", err)
	}
	b, err := pullListing(t, ref)
	if err != nil {
		t.Fatalf("second pull: %v", err)
	}
	want := []string{"", "bin", "bin/cc", "etc", "etc/new.conf", "lib"}
	if !slices.Equal(keys(a), want) {
		t.Fatalf("pulled tree has %q, want %q (the whiteout removes etc/old.conf)", keys(a), want)
	}
	for k := range a {
		if a[k] != b[k] {
			t.Errorf("%q differs between two pulls: %q vs %q", k, a[k], b[k])
		}
	}
}

func TestPullIndexTakesTheGuestPlatform(t *testing.T) {
	reg := newTestRegistry(t)
	amd64 := imageOf(t, tarBytes(t, fileE("arch", "amd64")))
	arm64 := imageOf(t, tarBytes(t, fileE("arch", "arm64")))
	// The other platform first: the first entry is not the one to take.
	ref := reg.pushIndex(t, "tools/multi", indexEntry{"linux/arm64", arm64}, indexEntry{"linux/amd64", amd64})
	got, err := pullListing(t, ref)
	if err != nil {
		t.Fatalf("pull index: %v", err)
	}
	if got["arch"] != "0100644 0:0 amd64" {
		t.Fatalf("pulled %q from the index, want the linux/amd64 image", got)
	}
	none := reg.pushIndex(t, "tools/arm", indexEntry{"linux/arm64", arm64})
	if _, err := pullListing(t, none); err == nil || !strings.Contains(err.Error(), "linux/amd64") {
		t.Fatalf("an index without linux/amd64: got %v", err)
	}
}

// blobPath is the request path of a blob of repo.
func blobPath(repo string, h v1.Hash) string { return "/v2/" + repo + "/blobs/" + h.String() }

func TestPullRefusesTamperedLayer(t *testing.T) {
	for _, how := range []string{"same size", "longer"} {
		t.Run(how, func(t *testing.T) {
			reg := newTestRegistry(t)
			ref, img := reg.push(t, "tools/cc", testLayers(t)...)
			layers, _ := img.Layers()
			victim, _ := layers[1].Digest()
			good, _ := layers[1].Compressed()
			served, _ := io.ReadAll(good)
			served = bytes.Clone(served)
			if how == "same size" {
				served[len(served)/2] ^= 1
			} else {
				served = append(served, 0)
			}
			reg.tamper = func(w http.ResponseWriter, r *http.Request) bool {
				if r.URL.Path != blobPath("tools/cc", victim) {
					return false
				}
				w.Write(served)
				return true
			}
			_, err := pullListing(t, ref)
			if err == nil || !strings.Contains(err.Error(), victim.String()) {
				t.Fatalf("a tampered layer: got %v, want an error naming layer %s", err, victim)
			}
		})
	}
}

func TestPullRefusesOtherManifest(t *testing.T) {
	reg := newTestRegistry(t)
	ref, _ := reg.push(t, "tools/cc", testLayers(t)...)
	other, otherImg := reg.push(t, "tools/other", tarBytes(t, fileE("evil", "x")))
	raw, _ := otherImg.RawManifest()
	mt, _ := otherImg.MediaType()
	digest := ref[strings.LastIndex(ref, "@")+1:]
	reg.tamper = func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/v2/tools/cc/manifests/"+digest {
			return false
		}
		w.Header().Set("Content-Type", string(mt))
		w.Header().Set("Docker-Content-Digest", digest)
		if r.Method != http.MethodHead {
			w.Write(raw)
		}
		return true
	}
	_, err := pullListing(t, ref)
	if err == nil || !strings.Contains(err.Error(), "digest") {
		t.Fatalf("another image's manifest under %s: got %v, want a digest mismatch", digest, err)
	}
	if _, err := pullListing(t, other); err != nil {
		t.Fatalf("the other image itself: %v", err)
	}
}

// failTransport fails the test on any request: a refused reference must not reach the
// network.
type failTransport struct{ t *testing.T }

func (f failTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	f.t.Errorf("request to %s made for a reference that should have been refused", r.URL)
	return nil, errors.New("no network")
}

func TestFromImageRefusesReferenceWithoutDigest(t *testing.T) {
	hex := strings.Repeat("a", 64)
	cases := map[string]string{
		"tag only":          "registry.example/tools/cc:14",
		"no tag":            "registry.example/tools/cc",
		"short digest":      "registry.example/tools/cc@sha256:abc",
		"other algorithm":   "registry.example/tools/cc@sha512:" + hex,
		"no registry":       "cc@sha256:" + hex,
		"uppercase digest":  "registry.example/tools/cc@sha256:" + strings.ToUpper(hex),
		"two digests":       "registry.example/tools/cc@sha256:" + hex + "@sha256:" + hex,
		"digest then junk ": "registry.example/tools/cc@sha256:" + hex + "x",
	}
	for label, ref := range cases {
		t.Run(label, func(t *testing.T) {
			_, _, err := FromImage(context.Background(), ImageOptions{SourceImage: ref, StateDir: t.TempDir(), Transport: failTransport{t}})
			if err == nil || !strings.Contains(err.Error(), "sourceImage") {
				t.Fatalf("%q: got %v, want an error naming sourceImage", ref, err)
			}
		})
	}
	d, err := ParseSourceImage("registry.example:5000/tools/cc:14@sha256:" + hex)
	if err != nil {
		t.Fatalf("a tag with a digest: %v", err)
	}
	if got, want := d.String(), "registry.example:5000/tools/cc@sha256:"+hex; got != want {
		t.Errorf("canonical reference %q, want %q", got, want)
	}
}

// needImageTools skips a test that makes an ext4 + verity image when the tools are missing.
func needImageTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"mke2fs", "debugfs", "veritysetup"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (scripts/install-deps.sh installs e2fsprogs and cryptsetup-bin); the image is not built, the flattening tests still run", tool)
		}
	}
}

func TestFromImageIsReproducible(t *testing.T) {
	needImageTools(t)
	ctx := context.Background()
	reg := newTestRegistry(t)
	ref, _ := reg.push(t, "tools/cc", append(testLayers(t),
		tarBytes(t, entry{name: "bin/su", typ: tar.TypeReg, mode: 0o4750, uid: 0, gid: 42, body: "su"}))...)
	stateA, stateB := t.TempDir(), t.TempDir()
	a, pathA, err := FromImage(ctx, ImageOptions{SourceImage: ref, StateDir: stateA})
	if err != nil {
		t.Fatalf("FromImage: %v", err)
	}
	b, pathB, err := FromImage(ctx, ImageOptions{SourceImage: ref, StateDir: stateB, Name: "cc"})
	if err != nil {
		t.Fatalf("FromImage again: %v", err)
	}
	if a.VerityRootHash != b.VerityRootHash || a.ImageSHA256 != b.ImageSHA256 {
		t.Fatalf("two pulls of %s give verity roots %s and %s", ref, a.VerityRootHash, b.VerityRootHash)
	}
	if a.SourceImage != ref || a.Name != ref || b.Name != "cc" {
		t.Errorf("records name %q/%q and source %q, want %q", a.Name, b.Name, a.SourceImage, ref)
	}
	loaded, err := Load(pathB)
	if err != nil || loaded.SourceImage != ref {
		t.Fatalf("Load: %+v, %v: the record a build loads must carry sourceImage", loaded, err)
	}
	if out, err := verityVerify(pathA, a); err != nil {
		t.Fatalf("veritysetup verify: %v: %s", err, out)
	}
	// Modes and owners come from the layer, not from whoever flattened it.
	st := debugfs(t, pathA, "stat /bin/su")
	if !strings.Contains(st, "Mode:  04750") || !strings.Contains(st, "User:     0") || !strings.Contains(st, "Group:    42") {
		t.Errorf("/bin/su in the image:\n%s", st)
	}
	if ls := debugfs(t, pathA, "ls /etc"); strings.Contains(ls, "old.conf") || !strings.Contains(ls, "new.conf") {
		t.Errorf("/etc in the image (old.conf is whited out):\n%s", ls)
	}
	// Pulled again into the first state directory: the cache answers, under the new name.
	c, pathC, err := FromImage(ctx, ImageOptions{SourceImage: ref, StateDir: stateA, Name: "again", Transport: failTransport{t}})
	if err != nil || pathC != pathA || c.VerityRootHash != a.VerityRootHash || c.Name != "again" {
		t.Fatalf("cached: %+v at %s, %v", c, pathC, err)
	}
}

func TestFromImageRefusesTamperedLayer(t *testing.T) {
	needImageTools(t)
	reg := newTestRegistry(t)
	ref, img := reg.push(t, "tools/cc", testLayers(t)...)
	layers, _ := img.Layers()
	victim, _ := layers[0].Digest()
	reg.tamper = func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != blobPath("tools/cc", victim) {
			return false
		}
		w.Write([]byte("not the layer"))
		return true
	}
	state := t.TempDir()
	_, _, err := FromImage(context.Background(), ImageOptions{SourceImage: ref, StateDir: state})
	if err == nil || !strings.Contains(err.Error(), victim.String()) {
		t.Fatalf("got %v, want an error naming layer %s", err, victim)
	}
	imgs, _ := filepath.Glob(filepath.Join(state, "toolchains", "*", ImageFile+"*"))
	if len(imgs) != 0 {
		t.Errorf("a refused pull left %q", imgs)
	}
}
