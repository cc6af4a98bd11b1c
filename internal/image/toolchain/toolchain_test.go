package toolchain

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/internal/filestamp"
	"github.com/cloche-dev/cloche/job"
)

func busyboxRoot(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "root")
	if err := MakeBusyboxRoot(dir); err != nil {
		t.Fatalf("MakeBusyboxRoot: %v", err)
	}
	return dir
}

func debugfs(t *testing.T, img, request string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", request, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v: %s", request, err, out)
	}
	// Drop the version banner.
	var kept []string
	for line := range strings.SplitSeq(string(out), "\n") {
		if !strings.HasPrefix(line, "debugfs ") {
			kept = append(kept, line)
		}
	}
	return strings.Join(kept, "\n")
}

func verityVerify(img string, tc *job.Toolchain) ([]byte, error) {
	return exec.Command("veritysetup", "verify", img, img, tc.VerityRootHash, "--no-superblock",
		"--hash=sha256", "--data-block-size=4096", "--hash-block-size=4096",
		"--data-blocks="+strconv.FormatInt(tc.DataBlocks, 10),
		"--hash-offset="+strconv.FormatInt(tc.HashOffset, 10), "--salt="+tc.VeritySalt).CombinedOutput()
}

func TestFromDirIsReproducible(t *testing.T) {
	ctx := context.Background()
	// Two trees with the same content made at different times and in different orders:
	// neither file times nor creation order may reach the image.
	rootA := busyboxRoot(t)
	os.WriteFile(filepath.Join(rootA, "b.txt"), []byte("b"), 0o644)
	os.WriteFile(filepath.Join(rootA, "a.txt"), []byte("a"), 0o644)
	time.Sleep(1100 * time.Millisecond)
	rootB := busyboxRoot(t)
	os.WriteFile(filepath.Join(rootB, "a.txt"), []byte("a"), 0o644)
	os.WriteFile(filepath.Join(rootB, "b.txt"), []byte("b"), 0o644)

	out := t.TempDir()
	imgA, imgB := filepath.Join(out, "a.img"), filepath.Join(out, "b.img")
	tcA, err := FromDir(ctx, rootA, imgA, "busybox")
	if err != nil {
		t.Fatalf("FromDir: %v", err)
	}
	tcB, err := FromDir(ctx, rootB, imgB, "busybox")
	if err != nil {
		t.Fatalf("FromDir: %v", err)
	}
	a, _ := os.ReadFile(imgA)
	b, _ := os.ReadFile(imgB)
	if !bytes.Equal(a, b) {
		t.Fatalf("two images of the same tree differ (%d vs %d bytes)", len(a), len(b))
	}
	if *tcA != *tcB {
		t.Errorf("toolchain records differ: %+v vs %+v", tcA, tcB)
	}
	if int64(len(a)) != tcA.ImageSize || tcA.HashOffset != tcA.DataBlocks*4096 || tcA.Name != "busybox" {
		t.Errorf("record %+v does not describe the %d-byte image", tcA, len(a))
	}

	// The record fits the job manifest's rules.
	m := job.Manifest{Type: job.ManifestType, InvocationID: "t", TEE: "sim", Toolchain: *tcA,
		Source:  job.Source{ArchiveSHA256: strings.Repeat("0", 64), ArchiveSize: 1},
		Command: []string{"sh"}, Workdir: ".", Artifacts: []string{"out"}, TimeoutSeconds: 1, MaxOutputBytes: 1}
	if err := m.Validate(); err != nil {
		t.Errorf("toolchain record rejected by the manifest rules: %v", err)
	}

	// outPath.json holds the same record; Load accepts the untouched image.
	var fromJSON job.Toolchain
	meta, _ := os.ReadFile(imgA + ".json")
	if err := json.Unmarshal(meta, &fromJSON); err != nil || fromJSON != *tcA {
		t.Errorf("%s.json = %s (%v), want %+v", imgA, meta, err, tcA)
	}
	if got, err := Load(imgA); err != nil || *got != *tcA {
		t.Errorf("Load = %+v, %v", got, err)
	}

	// The filesystem is consistent (debugfs's edits kept checksums valid).
	if out, err := exec.Command("e2fsck", "-fn", imgA).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn: %v: %s", err, out)
	}

	// The filesystem holds the tree with normalised times and the guest's mount points.
	dumped := filepath.Join(t.TempDir(), "busybox")
	debugfs(t, imgA, "dump /bin/busybox "+dumped)
	want, _ := os.ReadFile("/bin/busybox")
	got, _ := os.ReadFile(dumped)
	if !bytes.Equal(got, want) {
		t.Error("/bin/busybox in the image differs from the host's busybox")
	}
	stat := debugfs(t, imgA, "stat /a.txt")
	for _, field := range []string{"ctime", "atime", "mtime"} {
		if !strings.Contains(stat, " "+field+": 0x00000000:00000000") {
			t.Errorf("/a.txt %s is not the epoch:\n%s", field, stat)
		}
	}
	if link := debugfs(t, imgA, "stat /bin/sh"); !strings.Contains(link, `Fast link dest: "busybox"`) {
		t.Errorf("/bin/sh is not a symlink to busybox:\n%s", link)
	}
}

func TestFromDirAddsMountPoints(t *testing.T) {
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "hello"), []byte("hi\n"), 0o644)
	img := filepath.Join(t.TempDir(), "t.img")
	if _, err := FromDir(context.Background(), root, img, ""); err != nil {
		t.Fatalf("FromDir: %v", err)
	}
	for _, m := range MountPoints {
		stat := debugfs(t, img, "stat /"+m)
		if !strings.Contains(stat, "Type: directory") || !strings.Contains(stat, "Mode:  0755") ||
			!strings.Contains(stat, " mtime: 0x00000000:00000000") {
			t.Errorf("/%s is not an epoch-dated 0755 directory:\n%s", m, stat)
		}
	}
}

func TestVerityHashTree(t *testing.T) {
	img := filepath.Join(t.TempDir(), "t.img")
	tc, err := FromDir(context.Background(), busyboxRoot(t), img, "busybox")
	if err != nil {
		t.Fatalf("FromDir: %v", err)
	}
	if out, err := verityVerify(img, tc); err != nil {
		t.Fatalf("veritysetup verify of a fresh image: %v: %s", err, out)
	}

	// FromDir stamps the image with its digest, which Load then trusts (TestLoadReadsNoImage).
	if _, err := os.Stat(img + filestamp.Suffix); err != nil {
		t.Fatalf("no stamp after FromDir: %v", err)
	}
	if _, err := Load(img); err != nil {
		t.Fatal(err)
	}

	// Flip one byte of /bin/busybox's data, found through the filesystem: the stamp no
	// longer matches (the change time moved), so Load hashes again and finds it.
	blocks := debugfs(t, img, "blocks /bin/busybox")
	first, err := strconv.ParseInt(strings.Fields(blocks)[0], 10, 64)
	if err != nil || first*4096 >= tc.HashOffset {
		t.Fatalf("cannot locate /bin/busybox's first block: %q", blocks)
	}
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var buf [1]byte
	f.ReadAt(buf[:], first*4096+100)
	buf[0] ^= 0x40
	f.WriteAt(buf[:], first*4096+100)
	f.Close()

	if out, err := verityVerify(img, tc); err == nil {
		t.Fatalf("veritysetup verify passed after a data byte was flipped: %s", out)
	}
	if _, err := Load(img); !errors.Is(err, ErrModified) {
		t.Errorf("Load after flipping a byte: %v, want ErrModified", err)
	}
}

// failingTool writes a script that prints msg to stderr and exits 3.
func failingTool(t *testing.T, msg string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tool")
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho '"+msg+"' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFromDirFailures(t *testing.T) {
	ctx := context.Background()
	root := busyboxRoot(t)
	out := filepath.Join(t.TempDir(), "t.img")

	bad := defaultTools
	bad.mke2fs = failingTool(t, "mke2fs: disk on fire")
	if _, err := bad.fromDir(ctx, root, out, job.Toolchain{}, nil); err == nil || !strings.Contains(err.Error(), "disk on fire") ||
		!strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("failing mke2fs: %v", err)
	}
	bad = defaultTools
	bad.veritysetup = failingTool(t, "Device too small")
	if _, err := bad.fromDir(ctx, root, out, job.Toolchain{}, nil); err == nil || !strings.Contains(err.Error(), "Device too small") {
		t.Errorf("failing veritysetup: %v", err)
	}
	bad = defaultTools
	bad.veritysetup = "true" // succeeds without a root hash
	if _, err := bad.fromDir(ctx, root, out, job.Toolchain{}, nil); err == nil || !strings.Contains(err.Error(), "Root hash") {
		t.Errorf("veritysetup without a root hash: %v", err)
	}
	bad = defaultTools
	bad.mke2fs = "/nonexistent/mke2fs"
	if _, err := bad.fromDir(ctx, root, out, job.Toolchain{}, nil); err == nil || !strings.Contains(err.Error(), "/nonexistent/mke2fs") {
		t.Errorf("missing mke2fs: %v", err)
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed build left %s behind", out)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".t.img.tmp-*")); len(left) != 0 {
		t.Errorf("a failed build left temp files: %v", left)
	}

	// A tree beyond the size limit is refused before any tool runs (a sparse file).
	huge := t.TempDir()
	f, _ := os.Create(filepath.Join(huge, "sparse"))
	f.Truncate(maxTreeBytes + 1)
	f.Close()
	if _, err := FromDir(ctx, huge, out, ""); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Errorf("a tree over the size limit: %v", err)
	}

	withFileProc := t.TempDir()
	os.WriteFile(filepath.Join(withFileProc, "proc"), nil, 0o644)
	if _, err := FromDir(ctx, withFileProc, out, ""); err == nil || !strings.Contains(err.Error(), "/proc") {
		t.Errorf("/proc as a regular file: %v", err)
	}
	oddName := t.TempDir()
	os.WriteFile(filepath.Join(oddName, "a\"b"), nil, 0o644)
	if _, err := FromDir(ctx, oddName, out, ""); err == nil || !strings.Contains(err.Error(), "quote") {
		t.Errorf("file name with a quote: %v", err)
	}
	if _, err := FromDir(ctx, filepath.Join(root, "missing"), out, ""); err == nil {
		t.Error("a missing source directory was accepted")
	}
}

func TestLoadRejectsBadMetadata(t *testing.T) {
	img := filepath.Join(t.TempDir(), "t.img")
	tc, err := FromDir(context.Background(), busyboxRoot(t), img, "x")
	if err != nil {
		t.Fatal(err)
	}
	bad := *tc
	bad.HashOffset += 4096
	meta, _ := json.Marshal(bad)
	os.WriteFile(img+".json", meta, 0o644)
	if _, err := Load(img); err == nil || !strings.Contains(err.Error(), "hashOffset") {
		t.Errorf("inconsistent hash offset: %v", err)
	}
	os.WriteFile(img+".json", []byte(`{"imageSha256":"x","extra":1}`), 0o644)
	if _, err := Load(img); err == nil {
		t.Error("unknown field accepted")
	}
	good, _ := json.Marshal(tc)
	os.WriteFile(img+".json", good, 0o644)
	os.Truncate(img, tc.ImageSize-4096)
	if _, err := Load(img); !errors.Is(err, ErrModified) {
		t.Errorf("truncated image: %v, want ErrModified", err)
	}
}

func TestHasSuite(t *testing.T) {
	dir := t.TempDir()
	deb822 := filepath.Join(dir, "a.sources")
	os.WriteFile(deb822, []byte("Types: deb\nURIs: http://m/debian\nSuites: bookworm-backports\n\n"+
		"# disabled\nTypes: deb\nURIs: http://m/debian\nSuites: bookworm\nEnabled: no\n\n"+
		"Types: deb-src\nURIs: http://m/debian\nSuites: bookworm\n"), 0o644)
	if ok, err := hasSuite(deb822, "bookworm"); ok || err != nil {
		t.Errorf("deb822 without an enabled deb entry for bookworm: %v %v", ok, err)
	}
	os.WriteFile(deb822, []byte("Types: deb deb-src\nURIs: http://m/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"), 0o644)
	if ok, err := hasSuite(deb822, "bookworm"); !ok || err != nil {
		t.Errorf("deb822 with bookworm: %v %v", ok, err)
	}
	list := filepath.Join(dir, "sources.list")
	os.WriteFile(list, []byte("# deb http://m/debian bookworm main\ndeb [signed-by=/k.gpg arch=amd64] http://m/debian bookworm main\n"), 0o644)
	if ok, err := hasSuite(list, "bookworm"); !ok || err != nil {
		t.Errorf("one-line with options: %v %v", ok, err)
	}
	if ok, _ := hasSuite(list, "trixie"); ok {
		t.Error("trixie found in a bookworm-only list")
	}
}

func TestBuildRejectsBadOptions(t *testing.T) {
	ctx := context.Background()
	if _, _, err := Build(ctx, Options{StateDir: t.TempDir(), Packages: []string{"gcc", "--evil"}}); err == nil ||
		!strings.Contains(err.Error(), "--evil") {
		t.Errorf("bad package name: %v", err)
	}
	if _, _, err := Build(ctx, Options{StateDir: t.TempDir(), Suite: "bookworm main"}); err == nil {
		t.Error("bad suite accepted")
	}
	if _, _, err := Build(ctx, Options{}); err == nil {
		t.Error("empty StateDir accepted")
	}
	if cacheKey("bookworm", []string{"gcc", "make"}) == cacheKey("bookworm", []string{"gcc", "make", "libc6-dev"}) {
		t.Error("cache key ignores the package list")
	}
}

// TestBuildDebianToolchain runs the full mmdebstrap build (network, minutes); it runs only
// with CLOCHE_SLOW_TESTS=1. The state directory lives in the test cache so a second run
// exercises the cache.
func TestBuildDebianToolchain(t *testing.T) {
	if os.Getenv("CLOCHE_SLOW_TESTS") != "1" {
		t.Skip("set CLOCHE_SLOW_TESTS=1 to run the mmdebstrap toolchain build")
	}
	state := os.Getenv("CLOCHE_TEST_CACHE")
	if state == "" {
		d, err := os.UserCacheDir()
		if err != nil {
			t.Fatal(err)
		}
		state = filepath.Join(d, "cloche-test")
	}
	ctx := context.Background()
	start := time.Now()
	tc, img, err := Build(ctx, Options{StateDir: state})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	t.Logf("toolchain %s: %d bytes, root hash %s, in %v", img, tc.ImageSize, tc.VerityRootHash, time.Since(start).Round(time.Second))
	for _, p := range []string{"/usr/bin/make", "/usr/include/stdio.h", "/proc", "/tmp"} {
		if stat := debugfs(t, img, "stat "+p); strings.Contains(stat, "File not found") {
			t.Errorf("%s missing from the toolchain image", p)
		}
	}
	if stat := debugfs(t, img, "stat /usr/bin/gcc"); strings.Contains(stat, "File not found") {
		t.Error("/usr/bin/gcc missing from the toolchain image")
	}
	if out, err := verityVerify(img, tc); err != nil {
		t.Errorf("veritysetup verify: %v: %s", err, out)
	}
	start = time.Now()
	again, img2, err := Build(ctx, Options{StateDir: state})
	if err != nil || img2 != img || *again != *tc {
		t.Errorf("cached Build = %+v %s %v, want %+v %s", again, img2, err, tc, img)
	}
	if d := time.Since(start); d > time.Minute {
		t.Errorf("cached Build took %v; it should only re-hash the image", d)
	}
}

func TestNormaliseRootReplacesHostFiles(t *testing.T) {
	root := t.TempDir()
	outside := filepath.Join(t.TempDir(), "host-resolv.conf")
	os.WriteFile(outside, []byte("nameserver 192.0.2.1\n"), 0o644)
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc", "hostname"), []byte("buildhost\n"), 0o600)
	os.Symlink(outside, filepath.Join(root, "etc", "resolv.conf"))
	if err := normaliseRoot(root); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc", "hostname")); string(b) != "cloche\n" {
		t.Errorf("hostname = %q", b)
	}
	fi, err := os.Lstat(filepath.Join(root, "etc", "resolv.conf"))
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != 0 {
		t.Errorf("resolv.conf is not an empty regular file: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(outside); string(b) != "nameserver 192.0.2.1\n" {
		t.Errorf("a file outside the root was changed: %q", b)
	}
}
