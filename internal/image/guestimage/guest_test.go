package guestimage

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/cloche-dev/cloche/internal/filestamp"
	"github.com/cloche-dev/cloche/internal/image/internal/staticelf"
)

// testCacheDir is where the real kernel package is cached between test runs.
func testCacheDir(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("CLOCHE_TEST_CACHE"); d != "" {
		return filepath.Join(d, "kernel")
	}
	d, err := os.UserCacheDir()
	if err != nil {
		t.Fatalf("no cache directory: %v (set CLOCHE_TEST_CACHE)", err)
	}
	return filepath.Join(d, "cloche-test", "kernel")
}

func kernelDeb(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	deb, err := FetchKernelDeb(ctx, testCacheDir(t))
	if err != nil {
		t.Fatalf("FetchKernelDeb: %v", err)
	}
	return deb
}

// testAgent is a real static executable standing in for cloche-guest.
func testAgent(t *testing.T) string {
	t.Helper()
	if err := staticelf.Check("/bin/busybox"); err != nil {
		t.Fatalf("need busybox-static for a static test initBin: %v", err)
	}
	return "/bin/busybox"
}

func readArchive(t *testing.T, p string) map[string]cpio.Record {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	recs, err := cpio.ReadAllRecords(cpio.EOFReader{RecordReader: cpio.Newc.Reader(f)})
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	m := map[string]cpio.Record{}
	var names []string
	for _, r := range recs {
		if _, dup := m[r.Name]; dup {
			t.Errorf("record %s appears twice", r.Name)
		}
		m[r.Name] = r
		names = append(names, r.Name)
		if r.MTime != 0 || r.UID != 0 || r.GID != 0 {
			t.Errorf("record %s has mtime %d uid %d gid %d, want all 0", r.Name, r.MTime, r.UID, r.GID)
		}
		if d := path.Dir(r.Name); d != "." {
			if _, ok := m[d]; !ok {
				t.Errorf("record %s comes before its parent directory %s", r.Name, d)
			}
		}
	}
	if !slices.IsSorted(names) {
		t.Errorf("records are not sorted by name")
	}
	return m
}

func content(t *testing.T, r cpio.Record) []byte {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBuildIsReproducibleAndComplete(t *testing.T) {
	deb := kernelDeb(t)
	initBin := testAgent(t)
	ctx := context.Background()
	dirA, dirB := t.TempDir(), filepath.Join(t.TempDir(), "nested", "out")
	imA, err := Build(ctx, Options{KernelDeb: deb, GuestInit: initBin, OutDir: dirA})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	imB, err := Build(ctx, Options{KernelDeb: deb, GuestInit: initBin, OutDir: dirB})
	if err != nil {
		t.Fatalf("second Build: %v", err)
	}
	for _, name := range []string{KernelFile, InitrdFile, MetadataFile} {
		a, errA := os.ReadFile(filepath.Join(dirA, name))
		b, errB := os.ReadFile(filepath.Join(dirB, name))
		if errA != nil || errB != nil {
			t.Fatalf("read %s: %v %v", name, errA, errB)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs between two builds of the same inputs", name)
		}
	}
	if imA.Initrd != imB.Initrd || imA.Kernel != imB.Kernel {
		t.Errorf("image records differ: %+v vs %+v", imA, imB)
	}
	if !strings.HasPrefix(imA.KernelPackage, "linux-image-") || !strings.Contains(imA.KernelPackage, "_") {
		t.Errorf("KernelPackage = %q, want name_version of the image package", imA.KernelPackage)
	}
	if !strings.HasSuffix(imA.KernelVersion, "-cloud-amd64") || imA.Cmdline != DefaultCmdline {
		t.Errorf("KernelVersion %q, Cmdline %q", imA.KernelVersion, imA.Cmdline)
	}

	recs := readArchive(t, filepath.Join(dirA, InitrdFile))
	initRec, ok := recs["init"]
	if !ok || initRec.Mode != cpio.S_IFREG|0o755 {
		t.Fatalf("init record missing or mode wrong: %+v", initRec.Info)
	}
	agentBytes, _ := os.ReadFile(initBin)
	if !bytes.Equal(content(t, initRec), agentBytes) {
		t.Error("/init is not the guest init")
	}
	for name, dev := range map[string][2]uint64{"dev/console": {5, 1}, "dev/null": {1, 3}} {
		r, ok := recs[name]
		if !ok || r.Mode&cpio.S_IFMT != cpio.S_IFCHR || r.Rmajor != dev[0] || r.Rminor != dev[1] {
			t.Errorf("%s: want char device %d,%d, got %+v", name, dev[0], dev[1], r.Info)
		}
	}
	for _, d := range []string{"dev", "proc", "sys", "tmp", "run", "mnt"} {
		if r, ok := recs[d]; !ok || r.Mode&cpio.S_IFMT != cpio.S_IFDIR {
			t.Errorf("mount point /%s missing", d)
		}
	}

	// load.list: every listed module is in the archive, and each module's dependencies
	// (read here from the archived module itself) are listed before it.
	list := strings.Split(strings.TrimSuffix(string(content(t, recs["lib/modules/load.list"])), "\n"), "\n")
	if len(list) != len(imA.Modules) {
		t.Fatalf("load.list has %d entries, metadata %d modules", len(list), len(imA.Modules))
	}
	pos := map[string]int{}
	scratch := t.TempDir()
	for i, p := range list {
		if !strings.HasPrefix(p, "/lib/modules/"+imA.KernelVersion+"/kernel/") {
			t.Errorf("load.list entry %q is not under /lib/modules/%s/kernel", p, imA.KernelVersion)
		}
		r, ok := recs[strings.TrimPrefix(p, "/")]
		if !ok {
			t.Fatalf("load.list names %s, which is not in the archive", p)
		}
		// Stored decompressed (the guest kernel need not decompress it on every boot), with
		// the module signature that covers those bytes kept at the end.
		if data := content(t, r); !strings.HasSuffix(p, ".ko") || !bytes.HasPrefix(data, []byte("\x7fELF")) ||
			!bytes.HasSuffix(data, []byte("~Module signature appended~\n")) {
			t.Errorf("load.list entry %s is not an uncompressed, signed module", p)
		}
		name := moduleName(p)
		if name != imA.Modules[i] {
			t.Errorf("load.list entry %d is %s, metadata says %s", i, name, imA.Modules[i])
		}
		f := filepath.Join(scratch, path.Base(p))
		if err := os.WriteFile(f, content(t, r), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("modinfo", "-F", "depends", f).Output()
		if err != nil {
			t.Fatalf("modinfo %s: %v", f, err)
		}
		for d := range strings.SplitSeq(strings.TrimSpace(string(out)), ",") {
			if d == "" {
				continue
			}
			if j, ok := pos[moduleName(d)]; !ok || j >= i {
				t.Errorf("%s depends on %s, which is not listed before it", name, d)
			}
		}
		pos[name] = i
	}
	for _, want := range []string{"virtio_blk", "dm_verity", "dm_mod", "dm_bufio", "reed_solomon", "overlay", "configfs", "tsm", "sev_guest", "tdx_guest"} {
		if _, ok := pos[want]; !ok {
			t.Errorf("module %s missing from the closure %v", want, imA.Modules)
		}
	}
}

func TestLoadDetectsModification(t *testing.T) {
	deb := kernelDeb(t)
	dir := t.TempDir()
	built, err := Build(context.Background(), Options{KernelDeb: deb, GuestInit: testAgent(t), OutDir: dir})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	for _, f := range []string{KernelFile, InitrdFile} {
		if _, err := os.Stat(filepath.Join(dir, f) + filestamp.Suffix); err != nil {
			t.Errorf("Build left %s unstamped (the first Load would read it back): %v", f, err)
		}
	}
	loaded, err := Load(dir)
	if err != nil {
		t.Fatalf("Load of an untouched image: %v", err)
	}
	if loaded.Initrd != built.Initrd || loaded.KernelPath() != filepath.Join(dir, KernelFile) {
		t.Errorf("Load = %+v, want %+v", loaded, built)
	}

	// One flipped byte in the initrd (same size).
	initrd := filepath.Join(dir, InitrdFile)
	orig, _ := os.ReadFile(initrd)
	mod := bytes.Clone(orig)
	mod[len(mod)/2] ^= 1
	os.WriteFile(initrd, mod, 0o644)
	if _, err := Load(dir); !errors.Is(err, ErrModified) {
		t.Errorf("Load after flipping an initrd byte: %v, want ErrModified", err)
	}
	os.WriteFile(initrd, orig, 0o644)

	// A kernel of a different size.
	kernel := filepath.Join(dir, KernelFile)
	k, _ := os.ReadFile(kernel)
	os.WriteFile(kernel, k[:len(k)-1], 0o644)
	if _, err := Load(dir); !errors.Is(err, ErrModified) {
		t.Errorf("Load after truncating the kernel: %v, want ErrModified", err)
	}
	os.WriteFile(kernel, k, 0o644)
	if _, err := Load(dir); err != nil {
		t.Errorf("Load after restoring: %v", err)
	}

	// Metadata that points elsewhere is rejected, not followed.
	meta := filepath.Join(dir, MetadataFile)
	m, _ := os.ReadFile(meta)
	os.WriteFile(meta, bytes.Replace(m, []byte(`"path": "vmlinuz"`), []byte(`"path": "../vmlinuz"`), 1), 0o644)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "kernel path") {
		t.Errorf("Load with a redirected kernel path: %v", err)
	}
	os.Remove(meta)
	if _, err := Load(dir); err == nil {
		t.Error("Load without metadata succeeded")
	}
}

func TestBuildRejectsBadInput(t *testing.T) {
	deb := kernelDeb(t)
	ctx := context.Background()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Build(ctx, Options{KernelDeb: deb, GuestInit: sh, OutDir: t.TempDir()}); !errors.Is(err, staticelf.ErrNotStatic) {
		t.Errorf("dynamic initBin: %v, want ErrNotStatic", err)
	}
	_, err = Build(ctx, Options{KernelDeb: deb, GuestInit: testAgent(t), OutDir: t.TempDir(), Modules: []string{"no-such-module"}})
	if err == nil || !strings.Contains(err.Error(), "no_such_module") {
		t.Errorf("unknown module: %v", err)
	}
	_, err = Build(ctx, Options{KernelDeb: deb, GuestInit: testAgent(t), OutDir: t.TempDir(), Cmdline: "a\nb"})
	if err == nil || !strings.Contains(err.Error(), "command line") {
		t.Errorf("multi-line cmdline: %v", err)
	}
	notDeb := filepath.Join(t.TempDir(), "x.deb")
	os.WriteFile(notDeb, []byte("not a deb"), 0o644)
	_, err = Build(ctx, Options{KernelDeb: notDeb, GuestInit: testAgent(t), OutDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "kernel package") {
		t.Errorf("not a .deb: %v", err)
	}
	// Built-in modules are accepted and contribute nothing to load.
	im, err := Build(ctx, Options{KernelDeb: deb, GuestInit: testAgent(t), OutDir: t.TempDir(), Modules: []string{"virtio_pci"}})
	if err != nil || len(im.Modules) != 0 {
		t.Errorf("built-in module only: modules %v, err %v", im, err)
	}
}

func TestFetchKernelDebReusesCache(t *testing.T) {
	first := kernelDeb(t)
	fi1, err := os.Stat(first)
	if err != nil {
		t.Fatal(err)
	}
	second := kernelDeb(t)
	fi2, err := os.Stat(second)
	if err != nil {
		t.Fatal(err)
	}
	if first != second || !fi1.ModTime().Equal(fi2.ModTime()) {
		t.Errorf("second fetch gave %s (%v), want the cached %s (%v)", second, fi2.ModTime(), first, fi1.ModTime())
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(first), ".download-*")); len(left) != 0 {
		t.Errorf("temp download directories left behind: %v", left)
	}
}

// TestBusyboxInitramfsBoots boots the real backports kernel with the bare busybox
// initramfs under QEMU TCG: it proves the kernel and the cpio format work together.
func TestBusyboxInitramfsBoots(t *testing.T) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatalf("qemu-system-x86_64 not found (run scripts/install-deps.sh): %v", err)
	}
	deb := kernelDeb(t)
	dir := t.TempDir()
	k, err := extractKernel(context.Background(), deb, filepath.Join(dir, "x"))
	if err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(dir, "busybox.cpio")
	if err := MakeBusyboxInitramfs(initrd); err != nil {
		t.Fatalf("MakeBusyboxInitramfs: %v", err)
	}
	again := filepath.Join(dir, "busybox2.cpio")
	if err := MakeBusyboxInitramfs(again); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(initrd)
	b, _ := os.ReadFile(again)
	if !bytes.Equal(a, b) {
		t.Error("two busybox initramfs builds differ")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, "-nodefaults", "-nographic", "-no-reboot", "-accel", "tcg", "-m", "512",
		"-kernel", k.vmlinuz, "-initrd", initrd, "-append", "console=ttyS0 quiet panic=-1 no_timer_check",
		"-serial", "stdio", "-display", "none")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("guest did not power off within 60 s; console:\n%s", tail(out))
	}
	if err != nil {
		t.Fatalf("qemu: %v; console:\n%s", err, tail(out))
	}
	if !bytes.Contains(out, []byte(BusyboxReadyMarker)) {
		t.Fatalf("no %s on the console:\n%s", BusyboxReadyMarker, tail(out))
	}
	t.Logf("busybox guest booted and powered off in %v", time.Since(start).Round(time.Millisecond))
}

// A cached image is reused only when it was built from the same recipe.
func TestUpToDate(t *testing.T) {
	deb, initBin := kernelDeb(t), testAgent(t)
	ctx := context.Background()
	im, err := Build(ctx, Options{KernelDeb: deb, GuestInit: initBin, OutDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if !im.UpToDate(im.GuestInitSHA256) {
		t.Fatal("a fresh default image is not up to date with its own initBin")
	}
	if im.UpToDate(strings.Repeat("0", 64)) {
		t.Error("an image built from another initBin counts as up to date")
	}
	fewer, err := Build(ctx, Options{KernelDeb: deb, GuestInit: initBin, OutDir: t.TempDir(), Modules: DefaultModules[:3]})
	if err != nil {
		t.Fatal(err)
	}
	if fewer.UpToDate(fewer.GuestInitSHA256) {
		t.Error("an image with a different module list counts as up to date")
	}
	other, err := Build(ctx, Options{KernelDeb: deb, GuestInit: initBin, OutDir: t.TempDir(), Cmdline: DefaultCmdline + " debug"})
	if err != nil {
		t.Fatal(err)
	}
	if other.UpToDate(other.GuestInitSHA256) {
		t.Error("an image with a different cmdline counts as up to date")
	}
}

// A pin the archive does not serve fails at once with ErrKernelUnavailable, and a cached
// file with other bytes than the pin's is refused.
func TestFetchKernelDebPin(t *testing.T) {
	gone := KernelPackagePin{Name: KernelPin().Name, Version: "0.0.1-gone", SHA256: strings.Repeat("0", 64)}
	start := time.Now()
	if _, err := fetchKernelDeb(context.Background(), t.TempDir(), gone); !errors.Is(err, ErrKernelUnavailable) {
		t.Fatalf("unserved pin: error = %v, want ErrKernelUnavailable", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("unserved pin took %v", d)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, gone.FileName()), []byte("not a deb"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := fetchKernelDeb(context.Background(), dir, gone); !errors.Is(err, ErrKernelPin) {
		t.Fatalf("cached file with other bytes: error = %v, want ErrKernelPin", err)
	}
	if err := CheckKernelDeb(kernelDeb(t), KernelPin()); err != nil {
		t.Fatalf("the fetched kernel is not the pinned one: %v", err)
	}
}
