package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/attest"
)

// argAfter returns the values following each occurrence of flag.
func argAfter(args []string, flag string) []string {
	var v []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			v = append(v, args[i+1])
		}
	}
	return v
}

func TestArgsSimConfig(t *testing.T) {
	args, err := Args(Config{
		Kernel: "/k/vmlinuz", Initrd: "/k/initrd", Cmdline: "console=ttyS0",
		InputDisk: "/d/in.img", ToolchainDisk: "/d/tool,chain.img", OutputDisk: "/d/out.img",
		TEE: attest.TEESim,
	}, AccelTCG, "/run/x/simtee.sock")
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(args, " ")
	for _, want := range []string{
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-nic none",
		"-display none", "-monitor none", "-machine q35", "-accel tcg,thread=single", "-cpu max",
		"-smp 2", "-m 2048", "-kernel /k/vmlinuz", "-initrd /k/initrd", "-append console=ttyS0",
		"-serial chardev:console",
		"-device virtio-serial-pci,id=simtee-bus",
		"-chardev socket,id=simtee,path=/run/x/simtee.sock,server=off",
		"-device virtserialport,bus=simtee-bus.0,chardev=simtee,name=" + attest.SimPortName,
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("args lack %q:\n%s", want, joined)
		}
	}
	drives := argAfter(args, "-drive")
	wantDrives := []string{
		"file=/d/in.img,if=none,id=input,format=raw,readonly=on,cache=writeback,werror=report,rerror=report",
		// A comma in a path is doubled, or QEMU would read the rest as another option.
		"file=/d/tool,,chain.img,if=none,id=toolchain,format=raw,readonly=on,cache=writeback,werror=report,rerror=report",
		"file=/d/out.img,if=none,id=output,format=raw,readonly=off,cache=writeback,werror=report,rerror=report",
	}
	if !slices.Equal(drives, wantDrives) {
		t.Errorf("drives = %q, want %q", drives, wantDrives)
	}
	devices := argAfter(args, "-device")
	for _, want := range []string{
		"virtio-blk-pci,drive=input,serial=cloche-input",
		"virtio-blk-pci,drive=toolchain,serial=cloche-toolchain",
		"virtio-blk-pci,drive=output,serial=cloche-output",
	} {
		if !slices.Contains(devices, want) {
			t.Errorf("devices lack %q: %q", want, devices)
		}
	}
}

func TestArgsAccelAndShape(t *testing.T) {
	args, err := Args(Config{Kernel: "/k", VCPUs: 4, MemoryMiB: 1024}, AccelKVM, "")
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(args, " ")
	for _, want := range []string{"-accel kvm", "-cpu host", "-smp 4", "-m 1024"} {
		if !strings.Contains(joined, want) {
			t.Errorf("args lack %q: %s", want, joined)
		}
	}
	for _, absent := range []string{"virtserialport", "-drive", "-initrd"} {
		if strings.Contains(joined, absent) {
			t.Errorf("plain config without disks has %q: %s", absent, joined)
		}
	}

	for _, tc := range []struct {
		name   string
		cfg    Config
		accel  string
		socket string
		target error
		want   string
	}{
		{"auto is not an Args accelerator", Config{Kernel: "/k"}, AccelAuto, "", nil, `accelerator "auto"`},
		{"no kernel", Config{}, AccelTCG, "", nil, "no kernel"},
		{"snp under tcg", Config{Kernel: "/k", TEE: attest.TEESNP}, AccelTCG, "", ErrTEEUnavailable, "snp needs the kvm accelerator"},
		{"tdx under tcg", Config{Kernel: "/k", TEE: attest.TEETDX}, AccelTCG, "", ErrTEEUnavailable, "tdx needs the kvm accelerator"},
		{"unknown tee", Config{Kernel: "/k", TEE: "sgx"}, AccelKVM, "", nil, `unknown TEE "sgx"`},
		{"sim without socket", Config{Kernel: "/k", TEE: attest.TEESim}, AccelTCG, "", nil, "socket"},
		{"newline in disk path", Config{Kernel: "/k", OutputDisk: "/a\nb"}, AccelTCG, "", nil, "output disk path"},
		{"NUL in cmdline", Config{Kernel: "/k", Cmdline: "a\x00b"}, AccelTCG, "", nil, "NUL"},
		{"negative vCPUs", Config{Kernel: "/k", VCPUs: -1}, AccelTCG, "", nil, "-1 vCPUs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Args(tc.cfg, tc.accel, tc.socket)
			if err == nil {
				t.Fatal("Args accepted it")
			}
			if tc.target != nil && !errors.Is(err, tc.target) {
				t.Errorf("error %v is not %v", err, tc.target)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestCreateOutputDisk(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "out.img")
	if err := os.WriteFile(p, []byte("stale output of an earlier run"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CreateOutputDisk(p, 10000); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 12288 {
		t.Errorf("size %d, want 10000 rounded up to 12288", len(b))
	}
	if strings.Trim(string(b), "\x00") != "" {
		t.Errorf("disk is not all zeros: stale data survived")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
	for _, size := range []int64{0, -1, MaxOutputDiskSize + 1} {
		if err := CreateOutputDisk(filepath.Join(dir, "bad.img"), size); err == nil {
			t.Errorf("size %d accepted", size)
		}
	}
	if err := CreateOutputDisk(filepath.Join(dir, "missing", "out.img"), 4096); err == nil {
		t.Errorf("disk in a missing directory accepted")
	}
}

func TestTailBufferKeepsTailAndSpotsMarker(t *testing.T) {
	tb := newTailBuffer(16, "KVM internal error")
	io.WriteString(tb, "0123456789")
	io.WriteString(tb, "abcdefghij")
	if got := tb.String(); got != "456789abcdefghij" {
		t.Errorf("tail = %q", got)
	}
	select {
	case <-tb.tripped:
		t.Fatal("tripped without the marker")
	default:
	}
	// The marker split across writes still counts.
	io.WriteString(tb, "x KVM inter")
	io.WriteString(tb, "nal error. Suberror: 1\n")
	select {
	case <-tb.tripped:
	default:
		t.Fatal("marker split across writes not spotted")
	}
	io.WriteString(tb, "KVM internal error again") // must not close twice

	// Without a marker it only keeps the tail.
	plain := newTailBuffer(4, "")
	io.WriteString(plain, "qemu: ")
	io.WriteString(plain, "oops")
	if got := plain.String(); got != "oops" {
		t.Errorf("tail without marker = %q", got)
	}
}

func TestSimChannelAcceptLimit(t *testing.T) {
	c, err := listenSim(filepath.Join(t.TempDir(), "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	failed := c.serve(context.Background(), os.Getpid(), 200*time.Millisecond, drainService, slog.Default())
	select {
	case err := <-failed:
		if !errors.Is(err, ErrSimService) || !strings.Contains(err.Error(), "did not connect") {
			t.Errorf("error = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no failure after the accept limit")
	}
}

func TestSimChannelRejectsForeignPeer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	c, err := listenSim(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	ran := false
	// Pretend QEMU's group is one no process can be in: this test process is not in it.
	failed := c.serve(context.Background(), 1<<30, 5*time.Second, func(context.Context, io.ReadWriter) error {
		ran = true
		return nil
	}, slog.Default())
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	select {
	case err := <-failed:
		if !errors.Is(err, ErrSimService) || !strings.Contains(err.Error(), fmt.Sprintf("expected QEMU's group %d", 1<<30)) {
			t.Errorf("error = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("foreign peer not rejected")
	}
	c.close()
	if ran {
		t.Error("service ran for a foreign peer")
	}
	// Exactly one connection: the socket is gone.
	if _, err := net.Dial("unix", path); err == nil {
		t.Error("a second connection was accepted")
	}
}

func TestSimChannelReportsServiceFailure(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	c, err := listenSim(path)
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("signing key unavailable")
	// The test process plays QEMU: its process group is the expected one.
	c.serve(context.Background(), syscall.Getpgrp(), 5*time.Second, func(ctx context.Context, rw io.ReadWriter) error {
		return boom
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The guest side sees the channel end.
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("guest side read = %v, want EOF after the service failed", err)
	}
	err = c.close()
	if !errors.Is(err, ErrSimService) || !strings.Contains(err.Error(), boom.Error()) {
		t.Errorf("close = %v, want ErrSimService with the service's error", err)
	}
}

func TestSimChannelRefusesToReplaceNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	if err := os.WriteFile(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := listenSim(path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("listenSim over a regular file = %v", err)
	}
}

func TestSimChannelDoesNotWaitForeverOnStuckService(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	c, err := listenSim(path)
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	defer close(release)
	// The service ignores its context and the connection.
	c.serve(context.Background(), syscall.Getpgrp(), 5*time.Second, func(context.Context, io.ReadWriter) error {
		<-release
		return nil
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	time.Sleep(100 * time.Millisecond) // let the service start
	start := time.Now()
	err = c.close()
	if !errors.Is(err, ErrSimService) || !strings.Contains(err.Error(), "did not return") {
		t.Errorf("close = %v, want ErrSimService about the stuck service", err)
	}
	if d := time.Since(start); d > serviceStopLimit+2*time.Second {
		t.Errorf("close waited %s", d)
	}
}
