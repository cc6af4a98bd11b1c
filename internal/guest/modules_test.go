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
	)
	var loaded []string
	var logs bytes.Buffer
	load := func(p string) error {
		loaded = append(loaded, moduleName(p))
		switch moduleName(p) {
		case "dm_mod":
			return unix.EEXIST // already there: fine
		case "sev_guest":
			return unix.ENODEV // no SNP here: optional
		}
		return nil
	}
	if err := LoadModules(list, load, slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
		t.Fatal(err)
	}
	want := []string{"virtio_blk", "dm_mod", "dm_verity", "sev_guest", "overlay"}
	if !reflect.DeepEqual(loaded, want) {
		t.Errorf("load order %v, expected %v", loaded, want)
	}
	if !strings.Contains(logs.String(), "optional kernel module not loaded") || !strings.Contains(logs.String(), "sev_guest") {
		t.Errorf("the optional failure was not logged: %s", logs.String())
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
		err := LoadModules(list, load, slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)))
		if !errors.Is(err, unix.ENOENT) || !strings.Contains(err.Error(), "loading required kernel module "+req) {
			t.Errorf("%s failing: %v", req, err)
		}
	}
}

func TestModuleListRejectsBadLines(t *testing.T) {
	for _, bad := range []string{"relative/x.ko", "/lib/modules/../x.ko", "/lib//modules/x.ko"} {
		list := writeModuleList(t, bad)
		err := LoadModules(list, func(string) error { return nil }, slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)))
		if err == nil || !strings.Contains(err.Error(), "is not a clean absolute path") {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if err := LoadModules(filepath.Join(t.TempDir(), "none"), nil, nil); err == nil {
		t.Error("missing module list accepted")
	}
	huge := writeModuleList(t, strings.Repeat("/a.ko\n", 20000))
	if err := LoadModules(huge, func(string) error { return nil }, slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil))); err == nil {
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
