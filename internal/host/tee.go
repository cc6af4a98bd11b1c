package host

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/hostcheck"
	"github.com/cloche-dev/cloche/internal/image/guestimage"
)

// unavailable marks a reason as ErrUnavailable without repeating its text.
type unavailable struct{ error }

func (unavailable) Is(target error) bool { return target == ErrUnavailable }

// HostCheck is the hostcheck.Host for this configuration: its QEMU, firmware and QGS,
// and the guest image at guestDir (whose absence is only a warning).
func (c *Config) HostCheck(guestDir string) hostcheck.Host {
	h := hostcheck.Default(c.QEMU)
	h.SNPFirmware, h.TDXFirmware, h.QGS = c.SNPFirmware, c.TDXFirmware, c.QGS
	if h.SNPFirmware == "" {
		h.SNPFirmware = SNPFirmwarePath(c.StateDir)
	}
	if h.TDXFirmware == "" {
		h.TDXFirmware = TDXFirmwarePath(c.StateDir)
	}
	if img, err := guestimage.Load(guestDir); err == nil {
		h.Kernel = filepath.Join(img.Dir, img.Kernel.Path)
		h.Initrd = filepath.Join(img.Dir, img.Initrd.Path)
	}
	return h
}

func (h *Host) resolveTEE(ctx context.Context) error {
	guestDir := h.cfg.GuestImage
	if guestDir == "" {
		guestDir = GuestImageDir(h.state)
	}
	tee, err := ResolveTEE(ctx, h.cfg.TEE, func() hostcheck.Host { return h.cfg.HostCheck(guestDir) })
	h.tee = tee
	return err
}

// ResolveTEE turns a configured TEE into the one to launch. sim needs nothing; snp and
// tdx must pass the host checks; auto ("" too) takes SEV-SNP, then TDX, and otherwise
// fails: a simulated build is never chosen silently, it proves nothing about the host.
// check is called only when the host must be probed. Errors are *ConfigError for field
// TEE; a TEE this machine lacks is also ErrUnavailable.
func ResolveTEE(ctx context.Context, tee attest.TEE, check func() hostcheck.Host) (attest.TEE, error) {
	switch tee {
	case attest.TEESim:
		return attest.TEESim, nil
	case "":
		tee = "auto"
	case attest.TEESNP, attest.TEETDX, "auto":
	default:
		return "", configErr("TEE", fmt.Sprintf("%q", tee), errors.New("expected auto, snp, tdx or sim"))
	}
	r := check().Check(ctx)
	switch {
	case tee == attest.TEESNP || tee == attest.TEETDX:
		if missing := r.Missing(string(tee)); len(missing) > 0 {
			return "", configErr("TEE", string(tee), unavailable{fmt.Errorf("this host cannot launch %s guests: %s (see `cloche doctor`)",
				strings.ToUpper(string(tee)), DescribeMissing(missing))})
		}
		return tee, nil
	case r.SNP:
		return attest.TEESNP, nil
	case r.TDX:
		return attest.TEETDX, nil
	}
	return "", configErr("TEE", "auto", unavailable{errors.New("no SEV-SNP or TDX host support was found (run `cloche doctor` for what is missing); choose the simulated TEE, sim, to run without one (no hardware guarantee)")})
}

// DescribeMissing says what each missing check found and how to fix it, in one line.
func DescribeMissing(missing []hostcheck.Check) string {
	parts := make([]string, 0, len(missing))
	for _, c := range missing {
		parts = append(parts, fmt.Sprintf("%s: %s (fix: %s)", c.Name, c.Detail, c.Fix))
	}
	return strings.Join(parts, "; ")
}
