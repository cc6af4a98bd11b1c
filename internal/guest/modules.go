package guest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// requiredModules must load (or already be loaded) when load.list names them: without them
// the guest can read no disk, verify no toolchain or build no root. The TEE modules
// (teeModules) are required where their TEE is present and not loaded at all elsewhere;
// anything else (pvpanic) may fail.
var requiredModules = map[string]bool{"virtio_blk": true, "dm_verity": true, "overlay": true}

// TEEHardware is which confidential-computing guest this kernel runs as, as the kernel
// itself reports it before any module is loaded.
type TEEHardware struct {
	SNP bool // SEV-SNP: the kernel registered the sev-guest platform device (or CPU flag sev_snp)
	TDX bool // TDX: CPU flag tdx_guest
}

// needs reports whether a TEE module is wanted on this hardware, and whether the name is a
// TEE module at all. The drivers' probes fail (ENODEV) without their TEE, after the kernel
// has decompressed, verified and linked them; configfs and tsm only serve those drivers'
// configfs-tsm reports.
func (h TEEHardware) needs(name string) (needed, isTEE bool) {
	switch name {
	case "sev_guest":
		return h.SNP, true
	case "tdx_guest":
		return h.TDX, true
	case "configfs", "tsm":
		return h.SNP || h.TDX, true
	}
	return false, false
}

// DetectTEE reads what the kernel found: SNP guests get the sev-guest platform device at
// boot (arch/x86/coco/sev registers it only when SNP is active) and TDX guests the tdx_guest
// CPU flag. Either signal is enough to make the TEE's modules required, so a TEE host whose
// module does not load fails the run instead of falling back to something else.
func DetectTEE(procRoot, sysRoot string) (TEEHardware, error) {
	flags, err := cpuFlags(filepath.Join(procRoot, "cpuinfo"))
	if err != nil {
		return TEEHardware{}, fmt.Errorf("reading CPU flags: %w", err)
	}
	h := TEEHardware{SNP: flags["sev_snp"], TDX: flags["tdx_guest"]}
	if _, err := os.Stat(filepath.Join(sysRoot, "bus", "platform", "devices", "sev-guest")); err == nil {
		h.SNP = true
	} else if !errors.Is(err, fs.ErrNotExist) {
		return TEEHardware{}, fmt.Errorf("looking for the sev-guest platform device: %w", err)
	}
	return h, nil
}

// cpuFlags returns the union of the "flags" lines of /proc/cpuinfo.
func cpuFlags(p string) (map[string]bool, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	flags := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(k) != "flags" {
			continue
		}
		for _, f := range strings.Fields(v) {
			flags[f] = true
		}
	}
	if len(flags) == 0 {
		return nil, fmt.Errorf("%s has no flags line", p)
	}
	return flags, nil
}

// Limits on load.list, which comes from the (measured) initramfs but is still parsed
// defensively.
const (
	maxModuleList  = 64 << 10
	maxModuleCount = 256
)

// moduleName turns "/lib/modules/6.12/kernel/drivers/md/dm-verity.ko.xz" into "dm_verity",
// the name the kernel uses.
func moduleName(p string) string {
	b := path.Base(p)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

// parseModuleList reads load.list: one absolute path per line, dependencies first; blank
// lines and lines starting with # are skipped.
func parseModuleList(r io.Reader) ([]string, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxModuleList+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxModuleList {
		return nil, fmt.Errorf("module list is larger than %d bytes", maxModuleList)
	}
	var paths []string
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for line := 1; sc.Scan(); line++ {
		p := strings.TrimSpace(sc.Text())
		if p == "" || strings.HasPrefix(p, "#") {
			continue
		}
		if !path.IsAbs(p) || path.Clean(p) != p {
			return nil, fmt.Errorf("module list line %d: %q is not a clean absolute path", line, p)
		}
		paths = append(paths, p)
		if len(paths) > maxModuleCount {
			return nil, fmt.Errorf("module list names more than %d modules", maxModuleCount)
		}
	}
	return paths, sc.Err()
}

// moduleLoader loads one module file; finitModule is the real one.
type moduleLoader func(path string) error

// finitModule loads a (possibly xz-compressed) module with finit_module(2); the kernel
// decompresses it itself (CONFIG_MODULE_DECOMPRESS).
func finitModule(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	if strings.HasSuffix(p, ".xz") || strings.HasSuffix(p, ".zst") || strings.HasSuffix(p, ".gz") {
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	return unix.FinitModule(int(f.Fd()), "", flags)
}

// LoadModules loads the modules in the list at listPath in order, skipping the TEE modules
// the hardware does not need. A module that is already loaded (EEXIST) is fine; a failure is
// fatal for a required module or a needed TEE module, and a logged warning otherwise.
func LoadModules(listPath string, load moduleLoader, hw TEEHardware, log *slog.Logger) error {
	f, err := os.Open(listPath)
	if err != nil {
		return fmt.Errorf("opening the module list: %w", err)
	}
	defer f.Close()
	paths, err := parseModuleList(f)
	if err != nil {
		return fmt.Errorf("module list %s: %w", listPath, err)
	}
	for _, p := range paths {
		name := moduleName(p)
		needed, isTEE := hw.needs(name)
		if isTEE && !needed {
			log.Debug("kernel module not needed without its TEE", "module", name)
			continue
		}
		err := load(p)
		switch {
		case err == nil:
			log.Debug("loaded kernel module", "module", name)
		case errors.Is(err, unix.EEXIST):
			log.Debug("kernel module already loaded", "module", name)
		case requiredModules[name] || isTEE:
			return fmt.Errorf("loading required kernel module %s from %s: %w", name, p, err)
		default:
			log.Info("optional kernel module not loaded", "module", name, "err", err)
		}
	}
	return nil
}
