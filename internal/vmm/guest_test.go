package vmm

// Test guests: Debian's cloud kernel (the one cloche boots) and a busybox initramfs built
// here, whose /init is a shell script given by each test.

import (
	"bytes"
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/u-root/u-root/pkg/cpio"
)

const (
	testKernelVersion = "6.12.95+deb12-cloud-amd64"
	testKernelPackage = "linux-image-" + testKernelVersion
	// testKernelDebDir is where the project's machine setup already fetched the package.
	testKernelDebDir = "/tmp/kdeb"
	testBusybox      = "/bin/busybox"
)

// testKernel holds an unpacked kernel package.
type testKernel struct {
	vmlinuz string
	modules string // lib/modules/<version>/kernel
}

var kernelOnce struct {
	sync.Once
	k   testKernel
	err string
}

// needKernel finds the test kernel in the user cache (unpacking or fetching its package on
// first use) or skips the test saying how to provide one.
func needKernel(t testing.TB) testKernel {
	t.Helper()
	kernelOnce.Do(func() { kernelOnce.k, kernelOnce.err = findKernel() })
	if kernelOnce.err != "" {
		t.Skipf("no test kernel: %s (apt-get download %s from bookworm-backports into %s)",
			kernelOnce.err, testKernelPackage, testKernelDebDir)
	}
	return kernelOnce.k
}

func findKernel() (testKernel, string) {
	cache, err := os.UserCacheDir()
	if err != nil {
		return testKernel{}, "no user cache directory: " + err.Error()
	}
	cache = filepath.Join(cache, "cloche-test")
	tree := filepath.Join(cache, testKernelVersion)
	k := testKernel{
		vmlinuz: filepath.Join(tree, "boot", "vmlinuz-"+testKernelVersion),
		modules: filepath.Join(tree, "lib", "modules", testKernelVersion, "kernel"),
	}
	if _, err := os.Stat(k.vmlinuz); err == nil {
		return k, ""
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return testKernel{}, err.Error()
	}
	deb := ""
	for _, dir := range []string{cache, testKernelDebDir} {
		m, _ := filepath.Glob(filepath.Join(dir, testKernelPackage+"_*_amd64.deb"))
		if len(m) > 0 {
			deb = m[0]
			break
		}
	}
	if deb == "" {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "apt-get", "download", testKernelPackage)
		cmd.Dir = cache
		if out, err := cmd.CombinedOutput(); err != nil {
			return testKernel{}, "apt-get download failed: " + err.Error() + ": " + string(bytes.TrimSpace(out))
		}
		m, _ := filepath.Glob(filepath.Join(cache, testKernelPackage+"_*_amd64.deb"))
		if len(m) == 0 {
			return testKernel{}, "apt-get download left no package in " + cache
		}
		deb = m[0]
	}
	tmp, err := os.MkdirTemp(cache, ".unpack-")
	if err != nil {
		return testKernel{}, err.Error()
	}
	defer os.RemoveAll(tmp)
	if out, err := exec.Command("dpkg-deb", "-x", deb, tmp).CombinedOutput(); err != nil {
		return testKernel{}, "dpkg-deb -x " + deb + ": " + err.Error() + ": " + string(out)
	}
	// Another test process may have won the race: its tree is as good as ours.
	if err := os.Rename(tmp, tree); err != nil {
		if _, statErr := os.Stat(k.vmlinuz); statErr != nil {
			return testKernel{}, "put unpacked kernel in place: " + err.Error()
		}
	}
	return k, ""
}

// needBusybox returns the static busybox binary or skips.
func needBusybox(t testing.TB) []byte {
	t.Helper()
	f, err := elf.Open(testBusybox)
	if err != nil {
		t.Skipf("no static busybox at %s (apt-get install busybox-static): %v", testBusybox, err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			f.Close()
			t.Skipf("%s is dynamically linked; the initramfs needs busybox-static", testBusybox)
		}
	}
	f.Close()
	b, err := os.ReadFile(testBusybox)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// initPrelude mounts the pseudo file systems, loads the modules in /lib/modules.list order
// and waits for the virtio disks.
const initPrelude = `#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
echo "cloche-test: booted"
for m in $(cat /lib/modules.list); do
	unxz -c "/lib/$m" > /tmp/m.ko && insmod /tmp/m.ko || echo "cloche-test: loading $m failed"
done
disk() { for d in /sys/block/vd*; do [ "$(cat $d/serial 2>/dev/null)" = "$1" ] && echo /dev/${d##*/}; done; }
`

// testModules are the kernel modules every test guest loads, dependencies first.
var testModules = []string{
	"drivers/block/virtio_blk.ko.xz",
	"drivers/misc/pvpanic/pvpanic.ko.xz",
	"drivers/misc/pvpanic/pvpanic-pci.ko.xz",
}

// buildInitramfs writes a newc initramfs with busybox, the modules and script as /init
// (after initPrelude) and returns its path.
func buildInitramfs(t testing.TB, k testKernel, script string) string {
	t.Helper()
	bb := needBusybox(t)
	recs := []cpio.Record{
		cpio.Directory("bin", 0o755),
		cpio.Directory("dev", 0o755),
		cpio.Directory("lib", 0o755),
		cpio.Directory("proc", 0o755),
		cpio.Directory("sys", 0o755),
		cpio.Directory("tmp", 0o1777),
		// The kernel opens /dev/console for init before devtmpfs is mounted.
		cpio.CharDev("dev/console", 0o600, 5, 1),
		cpio.StaticFile("bin/busybox", string(bb), 0o755),
		cpio.StaticFile("init", initPrelude+script, 0o755),
	}
	var list []string
	for _, m := range testModules {
		b, err := os.ReadFile(filepath.Join(k.modules, m))
		if err != nil {
			t.Fatalf("kernel module: %v", err)
		}
		name := filepath.Base(m)
		list = append(list, name)
		recs = append(recs, cpio.StaticFile("lib/"+name, string(b), 0o644))
	}
	recs = append(recs, cpio.StaticFile("lib/modules.list", strings.Join(list, "\n")+"\n", 0o644))
	cpio.MakeAllReproducible(recs)

	path := filepath.Join(t.TempDir(), "initramfs.cpio")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := cpio.Newc.Writer(f)
	if err := cpio.WriteRecords(w, recs); err != nil {
		t.Fatalf("write initramfs: %v", err)
	}
	if err := cpio.WriteTrailer(w); err != nil {
		t.Fatalf("write initramfs trailer: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// consoleRecorder is a Config.Console that keeps the lines and tells waiters when a line
// containing a given text has arrived.
type consoleRecorder struct {
	t       testing.TB
	mu      sync.Mutex
	partial []byte
	lines   []string
	waiters map[string]chan struct{}
}

func newConsoleRecorder(t testing.TB) *consoleRecorder {
	return &consoleRecorder{t: t, waiters: map[string]chan struct{}{}}
}

// seen returns a channel closed once a line containing text has arrived.
func (c *consoleRecorder) seen(text string) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch, ok := c.waiters[text]
	if !ok {
		ch = make(chan struct{})
		c.waiters[text] = ch
		for _, l := range c.lines {
			if strings.Contains(l, text) {
				close(ch)
				break
			}
		}
	}
	return ch
}

func (c *consoleRecorder) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.partial = append(c.partial, p...)
	for {
		i := bytes.IndexByte(c.partial, '\n')
		if i < 0 {
			break
		}
		line := strings.TrimRight(string(c.partial[:i]), "\r")
		c.partial = c.partial[i+1:]
		c.lines = append(c.lines, line)
		for text, ch := range c.waiters {
			select {
			case <-ch:
			default:
				if strings.Contains(line, text) {
					close(ch)
				}
			}
		}
	}
	return len(p), nil
}

func (c *consoleRecorder) text() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.lines, "\n") + "\n" + string(c.partial)
}

// has reports whether some line contains text.
func (c *consoleRecorder) has(text string) bool {
	select {
	case <-c.seen(text):
		return true
	default:
		return false
	}
}

// dumpOnFailure logs the console if the test fails.
func (c *consoleRecorder) dumpOnFailure() {
	c.t.Cleanup(func() {
		if c.t.Failed() {
			c.t.Logf("guest console:\n%s", c.text())
		}
	})
}

// qemuProcesses lists the pids of live processes whose command line mentions marker.
func qemuProcesses(t testing.TB, marker string) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []string
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if bytes.Contains(b, []byte(marker)) {
			pids = append(pids, e.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return pids
}
