package guest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// requiredModules must load (or already be loaded) when load.list names them: without them
// the guest can read no disk, verify no toolchain or build no root. Everything else
// (sev-guest, tdx-guest, tsm on a simulated host) may be absent.
var requiredModules = map[string]bool{"virtio_blk": true, "dm_verity": true, "overlay": true}

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

// LoadModules loads every module in the list at listPath in order. A module that is already
// loaded (EEXIST) is fine; a failure is fatal for a required module and a logged warning
// otherwise.
func LoadModules(listPath string, load moduleLoader, log *slog.Logger) error {
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
		err := load(p)
		switch {
		case err == nil:
			log.Debug("loaded kernel module", "module", name)
		case errors.Is(err, unix.EEXIST):
			log.Debug("kernel module already loaded", "module", name)
		case requiredModules[name]:
			return fmt.Errorf("loading required kernel module %s from %s: %w", name, p, err)
		default:
			log.Info("optional kernel module not loaded", "module", name, "err", err)
		}
	}
	return nil
}
