package guest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cloche-dev/cloche/job"
)

// dm-verity is tested for real inside a QEMU (TCG) guest running Debian's cloud kernel,
// because development hosts may lack device-mapper: this test binary, built static, is the
// guest's /init and runs TestVerityGuestSide there. The kernel is found in
// $CLOCHE_TEST_KERNEL_DIR or the user cache's cloche-test/<version>/ (boot/vmlinuz-*,
// lib/modules/<version>/), as image/guestimage extracts it.

const verityMarker = "cloche-verity-test-marker\n"

// verityVMParams is passed to the guest side in /verity-test.json.
type verityVMParams struct {
	Toolchain  job.Toolchain `json:"toolchain"`
	ModuleList string        `json:"moduleList"`
}

// TestVerityGuestSide runs only as PID 1 inside the VM started by TestVerityInQEMU.
func TestVerityGuestSide(t *testing.T) {
	raw, err := os.ReadFile("/verity-test.json")
	if os.Getpid() != 1 || err != nil {
		t.Skip("runs only as /init of the VM started by TestVerityInQEMU")
	}
	var p verityVMParams
	if err := json.Unmarshal(raw, &p); err != nil {
		t.Fatal(err)
	}
	if err := mountEarly(); err != nil {
		t.Fatal(err)
	}
	log := newInitRun(Config{Console: os.Stdout}).log
	if err := LoadModules(p.ModuleList, finitModule, mustDetectTEE(t), log); err != nil {
		t.Fatal(err)
	}
	disks, err := FindDisks("/sys", "/dev", SerialToolchain, "cloche-corrupt", "cloche-short")
	if err != nil {
		t.Fatal(err)
	}

	// The good image mounts and reads back.
	if err := mountToolchain("/sys", "/dev", "good", disks[SerialToolchain], p.Toolchain, "/run/good"); err != nil {
		t.Fatalf("good toolchain: %v", err)
	}
	b, err := os.ReadFile("/run/good/marker.txt")
	if err != nil || string(b) != verityMarker {
		t.Errorf("good toolchain: marker %q, %v", b, err)
	}
	if err := verityStatus("/dev", "good"); err != nil {
		t.Errorf("good toolchain status: %v", err)
	}
	if err := os.WriteFile("/run/good/x", nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("writing to the toolchain: %v, expected EROFS", err)
	}

	// One flipped byte in the marker file: the read fails and the status says corrupted.
	err = mountToolchain("/sys", "/dev", "corrupt", disks["cloche-corrupt"], p.Toolchain, "/run/corrupt")
	if err == nil {
		_, rerr := os.ReadFile("/run/corrupt/marker.txt")
		if !errors.Is(rerr, unix.EIO) {
			t.Errorf("reading a corrupted block: %v, expected EIO", rerr)
		}
		if serr := verityStatus("/dev", "corrupt"); !errors.Is(serr, ErrVerityCorrupted) {
			t.Errorf("status after a corrupted read: %v, expected ErrVerityCorrupted", serr)
		}
	} else if !errors.Is(err, ErrVerityCorrupted) {
		t.Errorf("corrupted toolchain: %v", err)
	}

	// A wrong root hash: nothing verifies, so the mount fails naming verity.
	wrong := p.Toolchain
	wrong.VerityRootHash = strings.Repeat("0", 64)
	err = mountToolchain("/sys", "/dev", "wronghash", disks[SerialToolchain], wrong, "/run/wrong")
	if !errors.Is(err, ErrVerityCorrupted) || !strings.Contains(err.Error(), "does not match the manifest's verity root hash") {
		t.Errorf("wrong root hash: %v", err)
	}

	// A disk shorter than the manifest's image is refused before device-mapper is touched.
	err = mountToolchain("/sys", "/dev", "short", disks["cloche-short"], p.Toolchain, "/run/short")
	if err == nil || !strings.Contains(err.Error(), "smaller than the manifest's image size") {
		t.Errorf("short disk: %v", err)
	}
}

func TestVerityInQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	kdir := os.Getenv("CLOCHE_TEST_KERNEL_DIR")
	if kdir == "" {
		cache, _ := os.UserCacheDir()
		dirs, _ := filepath.Glob(filepath.Join(cache, "cloche-test", "*-cloud-amd64"))
		if len(dirs) == 0 {
			t.Skip("no Debian cloud kernel extracted (set CLOCHE_TEST_KERNEL_DIR or build the guest image once)")
		}
		kdir = dirs[len(dirs)-1]
	}
	kernels, _ := filepath.Glob(filepath.Join(kdir, "boot", "vmlinuz-*"))
	moddirs, _ := filepath.Glob(filepath.Join(kdir, "lib", "modules", "*"))
	if len(kernels) != 1 || len(moddirs) != 1 {
		t.Skipf("%s holds no single boot/vmlinuz-* and lib/modules/<version>", kdir)
	}
	for _, tool := range []string{"qemu-system-x86_64", "veritysetup", "mkfs.ext4", "modinfo"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := t.TempDir()
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}

	// Toolchain image: ext4 data, then the verity tree at the data's end, as the manifest
	// describes it.
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "marker.txt"), []byte(verityMarker), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "toolchain.img")
	const dataBlocks = 2048 // 8 MiB
	run("mkfs.ext4", "-q", "-b", "4096", "-O", "^has_journal", "-d", data, img, fmt.Sprint(dataBlocks))
	salt := make([]byte, 32)
	rand.Read(salt)
	out := run("veritysetup", "format", "--no-superblock", "--hash=sha256", "--data-block-size=4096", "--hash-block-size=4096",
		fmt.Sprintf("--hash-offset=%d", dataBlocks*4096), "--salt="+hex.EncodeToString(salt), img, img)
	m := regexp.MustCompile(`Root hash:\s+([0-9a-f]{64})`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no root hash in veritysetup output:\n%s", out)
	}
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	size := (fi.Size() + 4095) / 4096 * 4096
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	tc := job.Toolchain{ImageSize: size, VerityRootHash: m[1], VeritySalt: hex.EncodeToString(salt),
		DataBlocks: dataBlocks, HashOffset: dataBlocks * 4096}

	good, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(good[:dataBlocks*4096], []byte(verityMarker))
	if at < 0 {
		t.Fatal("marker not found in the ext4 image")
	}
	bad := bytes.Clone(good)
	bad[at] ^= 1
	corrupt := filepath.Join(dir, "corrupt.img")
	short := filepath.Join(dir, "short.img")
	if err := os.WriteFile(corrupt, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(short, good[:size-4096], 0o644); err != nil {
		t.Fatal(err)
	}

	// Initramfs: this test binary as /init, the modules with their dependencies, the
	// parameters.
	initBin := filepath.Join(dir, "init")
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	build := exec.CommandContext(ctx, gobin, "test", "-c", "-o", initBin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the static test binary: %v\n%s", err, b)
	}
	mods, err := moduleClosureFor(ctx, moddirs[0], "virtio_blk", "dm-verity")
	if err != nil {
		t.Fatal(err)
	}
	params, _ := json.Marshal(verityVMParams{Toolchain: tc, ModuleList: "/lib/modules/load.list"})
	cp := newCpio()
	cp.dir("dev")
	cp.dir("proc")
	cp.dir("sys")
	cp.dir("run")
	cp.dir("tmp")
	cp.node("dev/console", unix.S_IFCHR|0o600, 5, 1)
	binData, err := os.ReadFile(initBin)
	if err != nil {
		t.Fatal(err)
	}
	cp.file("init", 0o755, binData)
	cp.file("verity-test.json", 0o644, params)
	var list []string
	made := map[string]bool{}
	for _, mod := range mods {
		rel := strings.TrimPrefix(mod, kdir+"/")
		for d := filepath.Dir(rel); d != "." && !made[d]; d = filepath.Dir(d) {
			made[d] = true
		}
		b, err := os.ReadFile(mod)
		if err != nil {
			t.Fatal(err)
		}
		list = append(list, "/"+rel)
		cp.pending = append(cp.pending, cpioFile{rel, 0o644, b})
	}
	var dirs []string
	for d := range made {
		dirs = append(dirs, d)
	}
	sortByDepth(dirs)
	for _, d := range dirs {
		cp.dir(d)
	}
	for _, f := range cp.pending {
		cp.file(f.name, f.mode, f.data)
	}
	cp.file("lib/modules/load.list", 0o644, []byte(strings.Join(list, "\n")+"\n"))
	initrd := filepath.Join(dir, "initrd.cpio")
	if err := os.WriteFile(initrd, cp.finish(), 0o644); err != nil {
		t.Fatal(err)
	}

	qemu := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-accel", "tcg", "-machine", "q35", "-m", "512", "-smp", "1", "-nographic", "-nodefaults", "-no-reboot",
		"-serial", "stdio", "-kernel", kernels[0], "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet -- -test.run=^TestVerityGuestSide$ -test.v",
		"-drive", "file="+img+",if=none,id=d0,format=raw,readonly=on", "-device", "virtio-blk-pci,drive=d0,serial="+SerialToolchain,
		"-drive", "file="+corrupt+",if=none,id=d1,format=raw,readonly=on", "-device", "virtio-blk-pci,drive=d1,serial=cloche-corrupt",
		"-drive", "file="+short+",if=none,id=d2,format=raw,readonly=on", "-device", "virtio-blk-pci,drive=d2,serial=cloche-short",
	)
	console, err := qemu.CombinedOutput()
	t.Logf("guest console:\n%s", console)
	if err != nil {
		t.Fatalf("qemu: %v", err)
	}
	if !bytes.Contains(console, []byte("--- PASS: TestVerityGuestSide")) || !bytes.Contains(console, []byte("\nPASS")) {
		t.Fatal("the guest side did not pass (see the console above)")
	}
}

// moduleClosureFor lists the module files for names and their dependencies, dependencies
// first, using modinfo on the extracted tree.
func moduleClosureFor(ctx context.Context, modDir string, names ...string) ([]string, error) {
	files := map[string]string{}
	err := filepath.WalkDir(modDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.Contains(d.Name(), ".ko") {
			files[moduleName(d.Name())] = p
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	var order []string
	seen := map[string]bool{}
	var visit func(n string) error
	visit = func(n string) error {
		n = strings.ReplaceAll(n, "-", "_")
		if seen[n] {
			return nil
		}
		seen[n] = true
		p, ok := files[n]
		if !ok {
			return nil // built in
		}
		out, err := exec.CommandContext(ctx, "modinfo", "-F", "depends", p).Output()
		if err != nil {
			return fmt.Errorf("modinfo %s: %w", p, err)
		}
		for _, dep := range strings.Split(strings.TrimSpace(string(out)), ",") {
			if dep != "" {
				if err := visit(dep); err != nil {
					return err
				}
			}
		}
		order = append(order, p)
		return nil
	}
	for _, n := range names {
		if err := visit(n); err != nil {
			return nil, err
		}
	}
	return order, nil
}

func sortByDepth(dirs []string) {
	for i := 1; i < len(dirs); i++ {
		for j := i; j > 0 && strings.Count(dirs[j], "/") < strings.Count(dirs[j-1], "/"); j-- {
			dirs[j], dirs[j-1] = dirs[j-1], dirs[j]
		}
	}
}

// A minimal newc cpio writer, enough for an initramfs.
type cpioFile struct {
	name string
	mode uint32
	data []byte
}

type cpioWriter struct {
	buf     bytes.Buffer
	ino     int
	pending []cpioFile
}

func newCpio() *cpioWriter { return &cpioWriter{ino: 1} }

func (c *cpioWriter) entry(name string, mode uint32, rmaj, rmin uint32, data []byte) {
	c.ino++
	fmt.Fprintf(&c.buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rmaj, rmin, len(name)+1, 0)
	c.buf.WriteString(name)
	c.buf.WriteByte(0)
	c.pad()
	c.buf.Write(data)
	c.pad()
}

func (c *cpioWriter) pad() {
	for c.buf.Len()%4 != 0 {
		c.buf.WriteByte(0)
	}
}

func (c *cpioWriter) dir(name string) { c.entry(name, unix.S_IFDIR|0o755, 0, 0, nil) }
func (c *cpioWriter) file(name string, perm uint32, data []byte) {
	c.entry(name, unix.S_IFREG|perm, 0, 0, data)
}
func (c *cpioWriter) node(name string, mode uint32, maj, min uint32) {
	c.entry(name, mode, maj, min, nil)
}
func (c *cpioWriter) finish() []byte {
	c.entry("TRAILER!!!", 0, 0, 0, nil)
	return c.buf.Bytes()
}

func mustDetectTEE(t *testing.T) TEEHardware {
	t.Helper()
	hw, err := DetectTEE("/proc", "/sys")
	if err != nil {
		t.Fatal(err)
	}
	return hw
}
