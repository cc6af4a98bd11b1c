package vmm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/attest"
)

const testCmdline = "console=ttyS0 quiet panic=-1 no_timer_check"

// bootScript exercises everything a cloche guest needs from the VM: disks by serial, a
// read-only toolchain, the output disk, and the sim port, with console lines on the way.
const bootScript = `
in=$(disk cloche-input); tc=$(disk cloche-toolchain); out=$(disk cloche-output)
echo "cloche-test: disks input=$in toolchain=$tc output=$out"
echo "cloche-test: input says $(head -c 17 $in)"
echo "cloche-test: toolchain ro=$(cat /sys/block/${tc#/dev/}/ro)"
if dd if=/dev/zero of=$tc bs=4096 count=1 conv=fsync 2>/dev/null; then
	echo "cloche-test: toolchain write ACCEPTED"
else
	echo "cloche-test: toolchain write refused"
fi
printf 'cloche-output-ok' | dd of=$out bs=16 count=1 conv=fsync 2>/dev/null && echo "cloche-test: output written"
port=
for p in /sys/class/virtio-ports/*; do
	[ "$(cat $p/name)" = "org.cloche.simtee.0" ] && port=/dev/${p##*/}
done
echo "cloche-test: before-sim port=$port"
exec 3<>$port
echo "ping from guest" >&3
read -r reply <&3
echo "cloche-test: sim replied $reply"
exec 3>&-
sync
echo "cloche-test: powering off"
poweroff -f
`

// testDisks creates the three disks in dir: input with known text, toolchain with a known
// pattern, output empty.
func testDisks(t testing.TB, dir string) (input, toolchain, output string, toolchainBytes []byte) {
	t.Helper()
	input = filepath.Join(dir, "input.img")
	toolchain = filepath.Join(dir, "toolchain.img")
	output = filepath.Join(dir, "output.img")
	in := make([]byte, 4096)
	copy(in, "cloche-input-data\n")
	if err := os.WriteFile(input, in, 0o644); err != nil {
		t.Fatal(err)
	}
	toolchainBytes = bytes.Repeat([]byte("toolchain-block!"), 4096/16*4)
	if err := os.WriteFile(toolchain, toolchainBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CreateOutputDisk(output, 1<<20); err != nil {
		t.Fatal(err)
	}
	return input, toolchain, output, toolchainBytes
}

func TestRunBootsGuestWithDisksConsoleAndSimChannel(t *testing.T) {
	k := needKernel(t)
	initrd := buildInitramfs(t, k, bootScript)
	dir := t.TempDir()
	input, toolchain, output, toolchainBytes := testDisks(t, dir)
	console := newConsoleRecorder(t)
	console.dumpOnFailure()

	// The service answers only after the console line printed just before the request has
	// reached the host: proof that the console streams while the VM still runs.
	liveConsole := false
	var request string
	service := func(ctx context.Context, conn io.ReadWriter) error {
		r := bufio.NewReader(io.LimitReader(conn, 4096))
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
			request = strings.TrimSpace(line)
			select {
			case <-console.seen("cloche-test: before-sim"):
				liveConsole = true
			case <-time.After(10 * time.Second):
			case <-ctx.Done():
				return ctx.Err()
			}
			if _, err := io.WriteString(conn, "pong\n"); err != nil {
				return err
			}
		}
	}

	runDir := filepath.Join(dir, "run")
	res, err := Run(context.Background(), Config{
		Accel: AccelTCG, Kernel: k.vmlinuz, Initrd: initrd, Cmdline: testCmdline,
		VCPUs: 2, MemoryMiB: 512,
		InputDisk: input, ToolchainDisk: toolchain, OutputDisk: output,
		TEE: attest.TEESim, SimService: service,
		Console: console, Timeout: 5 * time.Minute, RunDir: runDir,
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("boot to poweroff: %s with %s", res.Duration, res.Accel)
	if res.Accel != AccelTCG {
		t.Errorf("Result.Accel = %q, want tcg", res.Accel)
	}
	if res.Duration <= 0 {
		t.Errorf("Result.Duration = %s", res.Duration)
	}
	if !liveConsole {
		t.Errorf("the console line before the sim request had not reached the host while the guest waited for the reply")
	}
	if request != "ping from guest" {
		t.Errorf("sim service got %q, want the guest's ping", request)
	}
	for _, want := range []string{
		"cloche-test: input says cloche-input-data",
		"cloche-test: toolchain ro=1",
		"cloche-test: toolchain write refused",
		"cloche-test: output written",
		"cloche-test: sim replied pong",
		"cloche-test: powering off",
	} {
		if !console.has(want) {
			t.Errorf("console lacks %q", want)
		}
	}
	got, err := os.ReadFile(output)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1<<20 {
		t.Errorf("output disk is %d bytes, want %d", len(got), 1<<20)
	}
	if want := "cloche-output-ok"; !bytes.HasPrefix(got, []byte(want)) || len(bytes.Trim(got[len(want):], "\x00")) != 0 {
		t.Errorf("output disk starts %q, want %q followed by zeros", got[:32], want)
	}
	if tc, _ := os.ReadFile(toolchain); !bytes.Equal(tc, toolchainBytes) {
		t.Errorf("toolchain image changed on the host")
	}
	if _, err := os.Stat(filepath.Join(runDir, simSocketName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("sim socket left behind: %v", err)
	}
	if p := qemuProcesses(t, runDir); len(p) != 0 {
		t.Errorf("QEMU still running after Run returned: %v", p)
	}
}

const hangScript = `
echo "cloche-test: hanging"
while :; do sleep 1; done
`

func TestRunKillsGuestAtTimeout(t *testing.T) {
	k := needKernel(t)
	initrd := buildInitramfs(t, k, hangScript)
	console := newConsoleRecorder(t)
	console.dumpOnFailure()
	runDir := t.TempDir()
	const limit = 12 * time.Second
	start := time.Now()
	_, err := Run(context.Background(), Config{
		Accel: AccelTCG, Kernel: k.vmlinuz, Initrd: initrd, Cmdline: testCmdline, MemoryMiB: 512,
		TEE: attest.TEESim, SimService: drainService,
		Console: console, Timeout: limit, RunDir: runDir,
	})
	elapsed := time.Since(start)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("Run error = %v, want ErrTimeout", err)
	}
	if elapsed < limit || elapsed > limit+10*time.Second {
		t.Errorf("Run returned after %s, want just after the %s limit", elapsed, limit)
	}
	if p := qemuProcesses(t, runDir); len(p) != 0 {
		t.Errorf("QEMU still running after the timeout: %v", p)
	}
	if !console.has("cloche-test: hanging") {
		t.Logf("guest did not reach its loop before the limit (slow machine?); the timeout still held")
	}
}

func TestRunStopsGuestOnCancel(t *testing.T) {
	k := needKernel(t)
	initrd := buildInitramfs(t, k, hangScript)
	console := newConsoleRecorder(t)
	console.dumpOnFailure()
	runDir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var cancelled time.Time
	go func() {
		select {
		case <-console.seen("cloche-test: hanging"):
		case <-time.After(3 * time.Minute):
		}
		cancelled = time.Now()
		cancel()
	}()
	_, err := Run(ctx, Config{
		Accel: AccelTCG, Kernel: k.vmlinuz, Initrd: initrd, Cmdline: testCmdline, MemoryMiB: 512,
		Console: console, Timeout: 5 * time.Minute, RunDir: runDir,
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run error = %v, want context.Canceled", err)
	}
	if d := time.Since(cancelled); d > 3*time.Second {
		t.Errorf("Run took %s after cancel to return", d)
	}
	if !console.has("cloche-test: hanging") {
		t.Errorf("guest never printed its marker")
	}
	if p := qemuProcesses(t, runDir); len(p) != 0 {
		t.Errorf("QEMU still running after cancel: %v", p)
	}
}

func TestRunReportsGuestPanicAsQEMUFailure(t *testing.T) {
	k := needKernel(t)
	initrd := buildInitramfs(t, k, `
echo "cloche-test: panicking"
echo c > /proc/sysrq-trigger
`)
	console := newConsoleRecorder(t)
	console.dumpOnFailure()
	start := time.Now()
	_, err := Run(context.Background(), Config{
		Accel: AccelTCG, Kernel: k.vmlinuz, Initrd: initrd,
		// No panic=-1: without pvpanic the guest would hang until the limit.
		Cmdline: "console=ttyS0 quiet", MemoryMiB: 512,
		Console: console, Timeout: 5 * time.Minute,
	})
	// Without pvpanic the panicked guest would sit there until ErrTimeout.
	if !errors.Is(err, ErrQEMU) {
		t.Fatalf("Run error = %v, want ErrQEMU", err)
	}
	if !strings.Contains(err.Error(), "exit status 1") {
		t.Errorf("error %q does not give QEMU's exit status", err)
	}
	if !console.has("Kernel panic") {
		t.Errorf("console does not show the guest's panic")
	}
	t.Logf("panic ended the VM after %s", time.Since(start))
}

// drainService is a SimService that reads until the channel ends.
func drainService(ctx context.Context, conn io.ReadWriter) error {
	_, err := io.Copy(io.Discard, conn)
	return err
}

func TestRunFailsFastOnBrokenKVM(t *testing.T) {
	// On hosts whose /dev/kvm is a software KVM (PVM), QEMU reports a KVM internal error on
	// the kernel's first VEX instruction and then waits forever.
	if _, err := os.Stat("/sys/module/kvm_pvm"); err != nil {
		t.Skip("not a host with a software KVM (kvm_pvm): nothing to fail on")
	}
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err != nil {
		t.Skipf("cannot open /dev/kvm: %v", err)
	} else {
		f.Close()
	}
	k := needKernel(t)
	initrd := buildInitramfs(t, k, hangScript)
	start := time.Now()
	_, err := Run(context.Background(), Config{
		Accel: AccelKVM, Kernel: k.vmlinuz, Initrd: initrd, Cmdline: testCmdline, MemoryMiB: 512,
		Timeout: 5 * time.Minute,
	})
	// Software KVMs break in more than one way: some print the KVM internal error and wait
	// (only the stderr watch ends those; without it this is ErrTimeout after 5 minutes), others
	// make QEMU abort on an MSR it cannot set. Either way the run must end at once as ErrQEMU.
	elapsed := time.Since(start)
	if !errors.Is(err, ErrQEMU) || errors.Is(err, ErrTimeout) {
		t.Fatalf("Run error = %v, want ErrQEMU", err)
	}
	if elapsed > time.Minute {
		t.Fatalf("broken KVM noticed after %s, want well under the 5m limit", elapsed)
	}
	if !strings.Contains(err.Error(), kvmInternalError) && !strings.Contains(err.Error(), "qemu-system") {
		t.Errorf("Run error = %v, want QEMU's own words (the KVM internal error or its abort message)", err)
	}
	t.Logf("broken KVM noticed after %s: %v", elapsed, err)
}

func TestRunKillsWholeProcessGroup(t *testing.T) {
	// A "QEMU" that starts a child and ignores SIGTERM: Run must kill both at the limit.
	dir := t.TempDir()
	fake := filepath.Join(dir, "qemu")
	// Both processes carry the script's path (and so dir) on their command lines.
	script := "#!/bin/sh\ntrap '' TERM\nsh -c 'trap \"\" TERM; while :; do sleep 1; done' \"$0\" &\nwhile :; do sleep 1; done\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(kernel, []byte("not a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Run(context.Background(), Config{QEMU: fake, Accel: AccelTCG, Kernel: kernel, Timeout: time.Second})
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("Run error = %v, want ErrTimeout", err)
	}
	if p := qemuProcesses(t, dir); len(p) != 0 {
		t.Errorf("processes left behind: %v", p)
	}
}

func TestRunReportsQEMUExitStatusAndStderr(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "qemu")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'qemu: could not load kernel' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(kernel, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Run(context.Background(), Config{QEMU: fake, Accel: AccelTCG, Kernel: kernel, Timeout: time.Minute})
	if !errors.Is(err, ErrQEMU) {
		t.Fatalf("Run error = %v, want ErrQEMU", err)
	}
	for _, want := range []string{"exit status 1", "could not load kernel"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestRunSimChannelCleanedUpWhenQEMUNeverConnects(t *testing.T) {
	// A QEMU that exits without connecting to the sim socket: Run must not wait for the
	// connection, must not run the service, and must remove the socket.
	dir := t.TempDir()
	fake := filepath.Join(dir, "qemu")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(kernel, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	runDir := filepath.Join(dir, "run")
	called := false
	_, err := Run(context.Background(), Config{
		QEMU: fake, Accel: AccelTCG, Kernel: kernel, Timeout: time.Minute, RunDir: runDir,
		TEE: attest.TEESim, SimService: func(context.Context, io.ReadWriter) error { called = true; return nil },
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if called {
		t.Errorf("SimService ran without a connection")
	}
	if _, err := os.Stat(filepath.Join(runDir, simSocketName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("sim socket left behind: %v", err)
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(kernel, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	ok := Config{Accel: AccelTCG, Kernel: kernel, Timeout: time.Minute}
	for _, tc := range []struct {
		name   string
		modify func(*Config)
		target error
		want   string
	}{
		{"missing kernel", func(c *Config) { c.Kernel = filepath.Join(dir, "no-such-vmlinuz") }, os.ErrNotExist, "kernel"},
		{"missing initrd", func(c *Config) { c.Initrd = filepath.Join(dir, "no-such-initrd") }, os.ErrNotExist, "initrd"},
		{"kernel is a directory", func(c *Config) { c.Kernel = dir }, nil, "expected a regular file"},
		{"missing output disk", func(c *Config) { c.OutputDisk = filepath.Join(dir, "out.img") }, os.ErrNotExist, "output disk"},
		{"QEMU not in PATH", func(c *Config) { c.QEMU = "no-such-qemu-system-x86_64" }, nil, `QEMU binary "no-such-qemu-system-x86_64" not found`},
		{"QEMU path missing", func(c *Config) { c.QEMU = filepath.Join(dir, "bin", "qemu") }, nil, "not found"},
		{"no timeout", func(c *Config) { c.Timeout = 0 }, nil, "Config.Timeout"},
		{"snp without firmware", func(c *Config) { c.TEE = attest.TEESNP }, ErrTEEUnavailable, "snp launch needs Config.Firmware"},
		{"tdx without firmware", func(c *Config) { c.TEE = attest.TEETDX }, ErrTEEUnavailable, "tdx launch needs Config.Firmware"},
		{"snp firmware missing", func(c *Config) { c.TEE, c.Firmware = attest.TEESNP, filepath.Join(dir, "OVMF.fd") }, os.ErrNotExist, "snp firmware"},
		{"unknown TEE", func(c *Config) { c.TEE = "sgx" }, nil, `unknown TEE "sgx"`},
		{"sim without service", func(c *Config) { c.TEE = attest.TEESim }, nil, "SimService"},
		{"bad accel", func(c *Config) { c.Accel = "hvf" }, nil, `Config.Accel "hvf"`},
		{"too many vCPUs", func(c *Config) { c.VCPUs = 1000 }, nil, "1000 vCPUs"},
		{"too little memory", func(c *Config) { c.MemoryMiB = 16 }, nil, "16 MiB"},
		{"cmdline too long", func(c *Config) { c.Cmdline = strings.Repeat("x", 3000) }, nil, "command line"},
		{"socket path too long", func(c *Config) {
			c.TEE, c.SimService = attest.TEESim, drainService
			c.RunDir = filepath.Join(dir, strings.Repeat("d", 120))
		}, nil, "socket path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.modify(&cfg)
			res, err := Run(context.Background(), cfg)
			if err == nil {
				t.Fatalf("Run accepted the config: %+v", res)
			}
			if tc.target != nil && !errors.Is(err, tc.target) {
				t.Errorf("error %v is not %v", err, tc.target)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
	t.Run("cancelled before start", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := Run(ctx, ok); !errors.Is(err, context.Canceled) {
			t.Errorf("Run error = %v, want context.Canceled", err)
		}
	})
}

func BenchmarkBootToPoweroff(b *testing.B) {
	k := needKernel(b)
	initrd := buildInitramfs(b, k, "echo cloche-test: up\npoweroff -f\n")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Run(context.Background(), Config{
			Accel: AccelTCG, Kernel: k.vmlinuz, Initrd: initrd, Cmdline: testCmdline, MemoryMiB: 512,
			Timeout: 5 * time.Minute, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		}); err != nil {
			b.Fatal(err)
		}
	}
}

type failingWriter struct{ writes int }

func (f *failingWriter) Write(p []byte) (int, error) {
	f.writes++
	return 0, errors.New("console sink is gone")
}

func TestRunKeepsDrainingConsoleAfterWriterFails(t *testing.T) {
	// A QEMU that writes 1 MB of console and exits: with the console writer failing at once,
	// the output must still be drained, or the "guest" blocks on a full pipe until the limit.
	dir := t.TempDir()
	fake := filepath.Join(dir, "qemu")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nhead -c 1000000 /dev/zero\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(kernel, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	w := &failingWriter{}
	if _, err := Run(context.Background(), Config{QEMU: fake, Accel: AccelTCG, Kernel: kernel, Console: w, Timeout: 20 * time.Second}); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if w.writes != 1 {
		t.Errorf("console writer called %d times after failing, want once", w.writes)
	}
}
