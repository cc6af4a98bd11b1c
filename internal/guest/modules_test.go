package guest

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func writeModuleList(t *testing.T, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "load.list")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const kmod = "/lib/modules/6.12.0-cloud-amd64/kernel/"

func TestLoadModulesOrderAndErrors(t *testing.T) {
	list := writeModuleList(t,
		"# dependencies first",
		kmod+"drivers/block/virtio_blk.ko.xz",
		kmod+"drivers/md/dm-mod.ko.xz",
		"",
		kmod+"drivers/md/dm-verity.ko.xz",
		kmod+"drivers/virt/coco/sev-guest/sev-guest.ko.xz",
		kmod+"fs/overlayfs/overlay.ko.xz",
		kmod+"drivers/misc/pvpanic/pvpanic.ko.xz",
	)
	var loaded []string
	var logs bytes.Buffer
	load := func(p string) error {
		loaded = append(loaded, moduleName(p))
		switch moduleName(p) {
		case "dm_mod":
			return unix.EEXIST // already there: fine
		case "pvpanic":
			return unix.ENODEV // no pvpanic device: optional
		}
		return nil
	}
	if err := LoadModules(list, load, TEEHardware{SNP: true}, slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
		t.Fatal(err)
	}
	want := []string{"virtio_blk", "dm_mod", "dm_verity", "sev_guest", "overlay", "pvpanic"}
	if !reflect.DeepEqual(loaded, want) {
		t.Errorf("load order %v, expected %v", loaded, want)
	}
	if !strings.Contains(logs.String(), "optional kernel module not loaded") || !strings.Contains(logs.String(), "pvpanic") {
		t.Errorf("the optional failure was not logged: %s", logs.String())
	}
}

// teeList is load.list with every TEE module, in the order the image builder writes them.
func teeList(t *testing.T) string {
	return writeModuleList(t,
		kmod+"drivers/block/virtio_blk.ko.xz",
		kmod+"fs/configfs/configfs.ko.xz",
		kmod+"drivers/virt/coco/tsm.ko.xz",
		kmod+"drivers/virt/coco/sev-guest/sev-guest.ko.xz",
		kmod+"drivers/virt/coco/tdx-guest/tdx-guest.ko.xz",
	)
}

func TestLoadModulesOnlyTheTEEsOwn(t *testing.T) {
	for _, tc := range []struct {
		hw   TEEHardware
		want []string
	}{
		{TEEHardware{}, []string{"virtio_blk"}},
		{TEEHardware{SNP: true}, []string{"virtio_blk", "configfs", "tsm", "sev_guest"}},
		{TEEHardware{TDX: true}, []string{"virtio_blk", "configfs", "tsm", "tdx_guest"}},
	} {
		var loaded []string
		load := func(p string) error { loaded = append(loaded, moduleName(p)); return nil }
		if err := LoadModules(teeList(t), load, tc.hw, slog.New(slog.DiscardHandler)); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(loaded, tc.want) {
			t.Errorf("%+v: loaded %v, expected %v", tc.hw, loaded, tc.want)
		}
	}
}

// On SNP or TDX hardware the TEE's driver must load: a failing probe there is not skipped.
func TestLoadModulesTEEDriverRequiredOnItsTEE(t *testing.T) {
	for hw, mod := range map[TEEHardware]string{{SNP: true}: "sev_guest", {TDX: true}: "tdx_guest"} {
		load := func(p string) error {
			if moduleName(p) == mod {
				return unix.ENODEV
			}
			return nil
		}
		err := LoadModules(teeList(t), load, hw, slog.New(slog.DiscardHandler))
		if !errors.Is(err, unix.ENODEV) || !strings.Contains(err.Error(), mod) {
			t.Errorf("%+v with %s failing: %v", hw, mod, err)
		}
	}
}

func TestDetectTEE(t *testing.T) {
	fake := func(flags string, sevDevice bool) (proc, sys string) {
		proc, sys = t.TempDir(), t.TempDir()
		cpuinfo := "processor\t: 0\nflags\t\t: fpu sse2 " + flags + "\n\nprocessor\t: 1\nflags\t\t: fpu sse2 " + flags + "\n"
		if err := os.WriteFile(filepath.Join(proc, "cpuinfo"), []byte(cpuinfo), 0o644); err != nil {
			t.Fatal(err)
		}
		if sevDevice {
			if err := os.MkdirAll(filepath.Join(sys, "bus", "platform", "devices", "sev-guest"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		return proc, sys
	}
	for _, tc := range []struct {
		flags string
		dev   bool
		want  TEEHardware
	}{
		{"hypervisor", false, TEEHardware{}},
		{"hypervisor tdx_guest", false, TEEHardware{TDX: true}},
		{"hypervisor", true, TEEHardware{SNP: true}},
		{"hypervisor sev sev_es sev_snp", false, TEEHardware{SNP: true}},
	} {
		proc, sys := fake(tc.flags, tc.dev)
		got, err := DetectTEE(proc, sys)
		if err != nil || got != tc.want {
			t.Errorf("flags %q, device %v: %+v, %v; expected %+v", tc.flags, tc.dev, got, err, tc.want)
		}
	}
	if _, err := DetectTEE(t.TempDir(), t.TempDir()); err == nil {
		t.Error("a missing /proc/cpuinfo was taken as no TEE")
	}
}

func TestLoadModulesRequiredFailure(t *testing.T) {
	for _, req := range []string{"virtio_blk", "dm_verity", "overlay"} {
		list := writeModuleList(t, kmod+"drivers/block/virtio_blk.ko.xz", kmod+"drivers/md/dm-verity.ko.xz", kmod+"fs/overlayfs/overlay.ko.xz")
		load := func(p string) error {
			if moduleName(p) == req {
				return unix.ENOENT
			}
			return nil
		}
		err := LoadModules(list, load, TEEHardware{}, slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)))
		if !errors.Is(err, unix.ENOENT) || !strings.Contains(err.Error(), "loading required kernel module "+req) {
			t.Errorf("%s failing: %v", req, err)
		}
	}
}

func TestModuleListRejectsBadLines(t *testing.T) {
	for _, bad := range []string{"relative/x.ko", "/lib/modules/../x.ko", "/lib//modules/x.ko"} {
		list := writeModuleList(t, bad)
		err := LoadModules(list, func(string) error { return nil }, TEEHardware{}, slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)))
		if err == nil || !strings.Contains(err.Error(), "is not a clean absolute path") {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if err := LoadModules(filepath.Join(t.TempDir(), "none"), nil, TEEHardware{}, nil); err == nil {
		t.Error("missing module list accepted")
	}
	huge := writeModuleList(t, strings.Repeat("/a.ko\n", 20000))
	if err := LoadModules(huge, func(string) error { return nil }, TEEHardware{}, slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil))); err == nil {
		t.Error("oversized module list accepted")
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		kmod + "drivers/md/dm-verity.ko.xz": "dm_verity",
		"/x/virtio_blk.ko":                  "virtio_blk",
		"/x/tsm.ko.zst":                     "tsm",
	} {
		if got := moduleName(in); got != want {
			t.Errorf("moduleName(%q) = %q, expected %q", in, got, want)
		}
	}
}
