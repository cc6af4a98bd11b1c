// Package guest builds the cloche guest image: the kernel from the pinned Debian backports
// cloud kernel package (KernelPin) and an initramfs holding the guest init as PID 1 plus the kernel modules it
// loads. The image is what the launch measurement identifies (docs/design.md, "one measurement per
// guest release"), so building it twice from the same inputs gives identical bytes.
package guestimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/cloche-dev/cloche/internal/atomicfile"
	"github.com/cloche-dev/cloche/internal/fileio"
	"github.com/cloche-dev/cloche/internal/filestamp"
	"github.com/cloche-dev/cloche/internal/image/internal/staticelf"
)

// DefaultCmdline is the guest kernel command line. It is part of the launch measurement
// (SNP kernel hashes, TDX RTMR), so it is fixed per guest release:
//
//	console=ttyS0  kernel messages and PID 1's stdio go to the first serial port, which
//	               the host reads as the build log;
//	quiet          only warnings and errors from the kernel, so the log is the build's;
//	panic=-1       reboot at once on a panic; QEMU runs with -no-reboot, so the VM exits
//	               instead of hanging until the host's timeout;
//	oops=panic     treat a kernel oops as a panic: a guest whose kernel hit a bug must not
//	               go on to produce evidence (fail closed);
//	rdinit=/init   run the guest init from the initramfs as PID 1 (the default, stated so
//	               that a changed kernel default cannot change what runs);
//	sysctl.kernel.sysrq=0
//	               no magic SysRq: Debian's kernel enables it on the serial console, where
//	               a BREAK from the host could power the guest off or remount it read-only
//	               mid-build (the guest init refuses to run if it is not 0);
//	no_timer_check no boot-time check that the 8254 timer reaches the IO-APIC: on a loaded
//	               host the vCPU is descheduled during the check and the kernel panics
//	               ("IO-APIC + timer doesn't work", seen under TCG with both cores busy);
//	               the check only decides whether to panic, the timers are the same.
const DefaultCmdline = "console=ttyS0 quiet panic=-1 oops=panic rdinit=/init sysctl.kernel.sysrq=0 no_timer_check"

// DefaultModules are the modules the guest init loads (Build adds their dependencies):
// the virtio disk driver for the input, toolchain and output disks; dm-verity for the
// toolchain; overlayfs for the writable layer over it; configfs and tsm for configfs-tsm
// reports; the SEV-SNP and TDX guest drivers; pvpanic-pci, so that a guest kernel panic
// ends the VM at once (vmm runs QEMU with a pvpanic device and panic=exit-failure) instead
// of waiting out the host's time limit.
var DefaultModules = []string{"virtio_blk", "dm-verity", "overlay", "configfs", "tsm", "sev-guest", "tdx-guest", "pvpanic-pci"}

// File names inside an image directory.
const (
	KernelFile   = "vmlinuz"
	InitrdFile   = "initrd.img"
	MetadataFile = "guest-image.json"
)

// Paths inside the initramfs that the guest init relies on.
const (
	InitPath     = "/init"
	LoadListPath = "/lib/modules/load.list"
)

// maxCmdline is the x86 kernel's COMMAND_LINE_SIZE (2048) less the terminating NUL.
const maxCmdline = 2047

const maxMetadataSize = 1 << 20

// ErrModified is wrapped by Load when a file no longer has its recorded digest or size.
var ErrModified = errors.New("guest image file does not match its recorded digest")

// Options says what to build.
type Options struct {
	KernelDeb string   // path of the kernel image .deb (see FetchKernelDeb)
	GuestInit string   // the static cloche-guest binary, installed as /init
	OutDir    string   // where vmlinuz, initrd.img and guest-image.json are written
	Modules   []string // nil means DefaultModules
	Cmdline   string   // empty means DefaultCmdline
}

// File names one file of the image and its digest.
type File struct {
	Path   string `json:"path"` // file name inside the image directory
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Image describes a built guest image (the content of guest-image.json).
type Image struct {
	KernelVersion string `json:"kernelVersion"`
	KernelPackage string `json:"kernelPackage"` // name_version of the .deb
	Kernel        File   `json:"kernel"`
	Initrd        File   `json:"initrd"`
	Cmdline       string `json:"cmdline"`
	// KernelDebSHA256 is the SHA-256 of the kernel package the image was built from;
	// KernelPinned says it is KernelPin's, which a released image always is.
	KernelDebSHA256 string   `json:"kernelDebSha256,omitempty"`
	KernelPinned    bool     `json:"kernelPinned,omitempty"`
	GuestInitSHA256 string   `json:"guestInitSha256"`
	Modules         []string `json:"modules"` // load order, dependencies first
	// Recipe digests what the image was built from (see RecipeDigest), so a cached image
	// is reused only when the guest init, kernel package, module list and cmdline are unchanged.
	Recipe string `json:"recipe"`
	Dir    string `json:"-"`
}

// RecipeDigest is SHA-256 over the inputs that decide an image's bytes besides the kernel
// package's own content: the guest init's digest, the kernel package name_version, the requested
// modules in order and the cmdline, NUL-separated after a version tag. The tag changes with
// what the builder does to those inputs (v2: modules stored decompressed).
func RecipeDigest(agentSHA256, kernelPackage string, modules []string, cmdline string) string {
	h := sha256.New()
	h.Write([]byte("cloche-guest-image-recipe-v2\x00" + agentSHA256 + "\x00" + kernelPackage + "\x00"))
	for _, m := range modules {
		h.Write([]byte(m + "\x00"))
	}
	h.Write([]byte(cmdline))
	return hex.EncodeToString(h.Sum(nil))
}

// UpToDate reports whether the image was built from this guest init with the default modules
// and cmdline; callers rebuild when it is not.
func (im *Image) UpToDate(agentSHA256 string) bool {
	return im.GuestInitSHA256 == agentSHA256 && im.Recipe == RecipeDigest(agentSHA256, im.KernelPackage, DefaultModules, DefaultCmdline)
}

// BootDigests are the SHA-256 digests of the kernel and initrd that Load checked, as
// bytes: what a simulated launch measures (measure.LaunchInputs), without a second read of
// the files.
func (im *Image) BootDigests() (kernel, initrd [32]byte, err error) {
	for _, f := range []struct {
		file File
		sum  *[32]byte
	}{{im.Kernel, &kernel}, {im.Initrd, &initrd}} {
		b, err := hex.DecodeString(f.file.SHA256)
		if err != nil || len(b) != len(f.sum) {
			return kernel, initrd, fmt.Errorf("boot digests: %s: malformed SHA-256 %q", f.file.Path, f.file.SHA256)
		}
		copy(f.sum[:], b)
	}
	return kernel, initrd, nil
}

// KernelPath and InitrdPath are the files' locations on this machine.
func (im *Image) KernelPath() string { return filepath.Join(im.Dir, im.Kernel.Path) }
func (im *Image) InitrdPath() string { return filepath.Join(im.Dir, im.Initrd.Path) }

// Build makes the guest image described by opts in opts.OutDir.
func Build(ctx context.Context, opts Options) (*Image, error) {
	modules, cmdline, initBin, err := opts.inputs()
	if err != nil {
		return nil, err
	}
	pkg, debSHA256, err := kernelPackage(ctx, opts.KernelDeb)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "cloche-kernel-")
	if err != nil {
		return nil, fmt.Errorf("build guest image: %w", err)
	}
	defer os.RemoveAll(tmp)
	kern, err := extractKernel(ctx, opts.KernelDeb, tmp)
	if err != nil {
		return nil, fmt.Errorf("build guest image: %w", err)
	}
	vmlinuz, err := readLimited(kern.vmlinuz, maxKernelSize)
	if err != nil {
		return nil, fmt.Errorf("build guest image: kernel: %w", err)
	}
	order, initrd, err := buildInitramfs(ctx, kern, initBin, modules)
	if err != nil {
		return nil, err
	}
	im := &Image{
		KernelVersion:   kern.version,
		KernelPackage:   pkg,
		Kernel:          fileOf(KernelFile, vmlinuz),
		Initrd:          fileOf(InitrdFile, initrd),
		Cmdline:         cmdline,
		KernelDebSHA256: debSHA256,
		KernelPinned:    debSHA256 == KernelPin().SHA256,
		GuestInitSHA256: sha256Hex(initBin),
		Modules:         order,
		Recipe:          RecipeDigest(sha256Hex(initBin), pkg, modules, cmdline),
		Dir:             opts.OutDir,
	}
	if err := writeImage(im, vmlinuz, initrd); err != nil {
		return nil, err
	}
	return im, nil
}

// inputs checks the options and returns the modules and cmdline (the defaults when not
// given) and the guest init's bytes; it creates OutDir.
func (opts Options) inputs() (modules []string, cmdline string, initBin []byte, err error) {
	if opts.KernelDeb == "" || opts.GuestInit == "" || opts.OutDir == "" {
		return nil, "", nil, errors.New("build guest image: KernelDeb, GuestInit and OutDir are all required")
	}
	modules = opts.Modules
	if modules == nil {
		modules = DefaultModules
	}
	cmdline = opts.Cmdline
	if cmdline == "" {
		cmdline = DefaultCmdline
	}
	if err := checkCmdline(cmdline); err != nil {
		return nil, "", nil, fmt.Errorf("build guest image: %w", err)
	}
	if err := staticelf.Check(opts.GuestInit); err != nil {
		return nil, "", nil, fmt.Errorf("build guest image: guest init: %w", err)
	}
	initBin, err = readLimited(opts.GuestInit, maxInitSize)
	if err != nil {
		return nil, "", nil, fmt.Errorf("build guest image: guest init: %w", err)
	}
	if err := os.MkdirAll(opts.OutDir, 0o755); err != nil {
		return nil, "", nil, fmt.Errorf("build guest image: %w", err)
	}
	return modules, cmdline, initBin, nil
}

// kernelPackage is the kernel package's name_version and its file's SHA-256.
func kernelPackage(ctx context.Context, deb string) (pkg, debSHA256 string, err error) {
	name, version, err := debFields(ctx, deb)
	if err != nil {
		return "", "", fmt.Errorf("build guest image: kernel package: %w", err)
	}
	sum, _, err := fileio.SHA256(deb)
	if err != nil {
		return "", "", fmt.Errorf("build guest image: kernel package: %w", err)
	}
	return name + "_" + version, sum, nil
}

// buildInitramfs resolves the modules' dependencies and writes the initramfs: the guest init as
// init, the modules in load order, and the load list. It returns that order too.
func buildInitramfs(ctx context.Context, kern *extractedKernel, initBin []byte, modules []string) ([]string, []byte, error) {
	idx, err := indexModules(kern.modulesDir)
	if err != nil {
		return nil, nil, fmt.Errorf("build guest image: %w", err)
	}
	order, err := moduleClosure(ctx, idx, modules)
	if err != nil {
		return nil, nil, fmt.Errorf("build guest image: %w", err)
	}
	ramfs := newInitramfs()
	ramfs.addFile(InitPath, initBin, 0o755)
	var loadList strings.Builder
	for _, name := range order {
		data, rel, err := moduleForImage(ctx, kern.modulesDir, idx.paths[name])
		if err != nil {
			return nil, nil, fmt.Errorf("build guest image: module %s: %w", name, err)
		}
		inImage := path.Join("/lib/modules", kern.version, rel)
		ramfs.addFile(inImage, data, 0o644)
		loadList.WriteString(inImage + "\n")
	}
	ramfs.addFile(LoadListPath, []byte(loadList.String()), 0o644)
	var initrd bytes.Buffer
	if err := ramfs.write(&initrd); err != nil {
		return nil, nil, fmt.Errorf("build guest image: %w", err)
	}
	return order, initrd.Bytes(), nil
}

// moduleForImage reads the module at rel under modulesDir and returns it as the initramfs
// holds it: an xz-compressed module decompressed, under its name without ".xz". The guest
// kernel would otherwise decompress each module on every boot (about 70 ms of the boot under
// TCG); the module's signature covers the uncompressed bytes, so it still verifies.
func moduleForImage(ctx context.Context, modulesDir, rel string) ([]byte, string, error) {
	data, err := readLimited(filepath.Join(modulesDir, filepath.FromSlash(rel)), maxModuleSize)
	if err != nil || !strings.HasSuffix(rel, ".xz") {
		return data, rel, err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "xz", "--decompress", "--stdout", "--single-stream")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(data), &limitedBuffer{buf: &stdout, limit: maxModuleSize}, &stderr
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return nil, "", fmt.Errorf("xz not found (install xz-utils, see scripts/install-deps.sh): %w", err)
		}
		return nil, "", fmt.Errorf("xz --decompress %s: %w: %s", rel, err, tail(stderr.Bytes()))
	}
	return stdout.Bytes(), strings.TrimSuffix(rel, ".xz"), nil
}

// limitedBuffer fails writes past limit bytes, so a decompression bomb stops the build.
type limitedBuffer struct {
	buf   *bytes.Buffer
	limit int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if l.buf.Len()+len(p) > l.limit {
		return 0, fmt.Errorf("decompressed module exceeds %d bytes", l.limit)
	}
	return l.buf.Write(p)
}

// writeImage writes the kernel, the initrd and the metadata into im.Dir, and records the
// digests just taken over the two files so that the first Load need not read them back
// (failing to record them only costs that Load the read).
func writeImage(im *Image, vmlinuz, initrd []byte) error {
	meta, err := json.MarshalIndent(im, "", "  ")
	if err != nil {
		return fmt.Errorf("build guest image: encode metadata: %w", err)
	}
	for _, w := range []struct {
		name string
		data []byte
	}{{KernelFile, vmlinuz}, {InitrdFile, initrd}, {MetadataFile, append(meta, '\n')}} {
		if err := atomicfile.WriteFile(filepath.Join(im.Dir, w.name), w.data, 0o644); err != nil {
			return fmt.Errorf("build guest image: %w", err)
		}
	}
	for _, f := range []File{im.Kernel, im.Initrd} {
		_ = filestamp.Record(filepath.Join(im.Dir, f.Path), filestamp.Digests{"sha256": f.SHA256})
	}
	return nil
}

// Load reads dir/guest-image.json and checks that the kernel and initrd still have the
// recorded size and SHA-256; a mismatch wraps ErrModified.
func Load(dir string) (*Image, error) {
	metaPath := filepath.Join(dir, MetadataFile)
	b, err := readLimited(metaPath, maxMetadataSize)
	if err != nil {
		return nil, fmt.Errorf("load guest image: %w", err)
	}
	var im Image
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&im); err != nil {
		return nil, fmt.Errorf("load guest image: %s: %w", metaPath, err)
	}
	if err := checkCmdline(im.Cmdline); err != nil {
		return nil, fmt.Errorf("load guest image: %s: %w", metaPath, err)
	}
	for _, f := range []struct {
		what, want string
		file       File
	}{{"kernel", KernelFile, im.Kernel}, {"initrd", InitrdFile, im.Initrd}} {
		if f.file.Path != f.want {
			return nil, fmt.Errorf("load guest image: %s: %s path is %q, expected %q", metaPath, f.what, f.file.Path, f.want)
		}
		if !hex64.MatchString(f.file.SHA256) || f.file.Size <= 0 {
			return nil, fmt.Errorf("load guest image: %s: %s digest or size is malformed", metaPath, f.what)
		}
		if err := checkFile(filepath.Join(dir, f.file.Path), f.file); err != nil {
			return nil, fmt.Errorf("load guest image: %s: %w", f.what, err)
		}
	}
	im.Dir = dir
	return &im, nil
}

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// checkFile compares a file's size and SHA-256 with want. The SHA-256 is the one recorded
// beside the file (filestamp) while the file is unchanged, so that a run does not re-read
// the kernel and initramfs: a hardware TEE measures what it boots, and the simulated one
// is measured from these same digests.
func checkFile(p string, want File) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.Size() != want.Size {
		return fmt.Errorf("%w: %s is %d bytes, expected %d", ErrModified, p, fi.Size(), want.Size)
	}
	d, err := filestamp.Sum(p, filestamp.SHA256())
	if err != nil {
		return err
	}
	if got := d["sha256"]; got != want.SHA256 {
		return fmt.Errorf("%w: %s has SHA-256 %s, expected %s", ErrModified, p, got, want.SHA256)
	}
	return nil
}

func checkCmdline(c string) error {
	if c == "" || len(c) > maxCmdline || strings.ContainsAny(c, "\x00\n\r") {
		return fmt.Errorf("kernel command line must be 1..%d bytes on one line without NUL", maxCmdline)
	}
	return nil
}

func fileOf(name string, data []byte) File {
	return File{Path: name, SHA256: sha256Hex(data), Size: int64(len(data))}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
