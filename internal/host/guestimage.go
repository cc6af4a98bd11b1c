package host

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"

	"github.com/cloche-dev/cloche/internal/fileio"
	"github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/internal/progress"
	"github.com/cloche-dev/cloche/internal/release"
	"github.com/cloche-dev/cloche/reference"
	"github.com/cloche-dev/cloche/verify"
)

// prepareGuestImage settles the guest image every job launches: the configured
// directory, a published release (fetched and checked), or the state directory's own
// build (built when missing or made from another guest init).
func (h *Host) prepareGuestImage(ctx context.Context) error {
	c := &h.cfg
	switch {
	case c.GuestImage != "":
		h.guestImage = c.GuestImage
		return nil
	case c.GuestRelease.Tag != "":
		img, err := FetchGuestRelease(ctx, h.state, c.GuestRelease, c.Logger)
		if err != nil {
			return fmt.Errorf("guest image release: %w", err)
		}
		h.guestImage = img.Dir
		return nil
	}
	h.guestImage = GuestImageDir(h.state)
	return EnsureGuestImage(ctx, h.state, h.guestImage, c.GuestInit, c.Progress)
}

// GuestInitPath finds the static guest init binary: next to this executable, as the
// Makefile and release archives place it.
func GuestInitPath() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	p := filepath.Join(filepath.Dir(exe), "cloche-guest")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("guest init not found at %s (build it with `make build`, or name it as the guest init): %w", p, err)
	}
	return p, nil
}

// EnsureGuestImage builds the guest image in dir when it is missing or was built from a
// different guest init binary than agent (default GuestInitPath).
func EnsureGuestImage(ctx context.Context, state, dir, agent string, meter *progress.Meter) error {
	if agent == "" {
		var err error
		if agent, err = GuestInitPath(); err != nil {
			return err
		}
	}
	agentSum, _, err := fileio.SHA256(agent)
	if err != nil {
		return fmt.Errorf("guest init: %w", err)
	}
	phase := meter.Begin(ctx, "guest image", "dir", dir)
	if img, err := guestimage.Load(dir); err == nil && img.UpToDate(agentSum) {
		phase.Cached()
		return nil
	}
	phase.Step("kernel package")
	deb, err := guestimage.FetchKernelDeb(ctx, KernelCacheDir(state))
	if err != nil {
		err = fmt.Errorf("guest kernel: %w", KernelFetchError(err, KernelCacheDir(state)))
		phase.Fail(err)
		return err
	}
	phase.Step("assembling the initramfs")
	if _, err := guestimage.Build(ctx, guestimage.Options{KernelDeb: deb, GuestInit: agent, OutDir: dir}); err != nil {
		err = fmt.Errorf("building the guest image: %w", err)
		phase.Fail(err)
		return err
	}
	phase.Done("kernel_deb", filepath.Base(deb))
	return nil
}

// KernelFetchError adds to a failed kernel download where the package can be put by hand.
func KernelFetchError(err error, cacheDir string) error {
	if errors.Is(err, guestimage.ErrKernelUnavailable) {
		return fmt.Errorf("%w; download %s into %s", err, guestimage.KernelPin().FileName(), cacheDir)
	}
	return err
}

// FetchGuestRelease fetches a published guest image release and checks it against its
// reference values (embedded in this cloche, or signed by the release workflow and
// checked with r.TrustedRoot), into r.Dir (default the state directory's
// guest-images/TAG).
func FetchGuestRelease(ctx context.Context, state string, r GuestRelease, log *slog.Logger) (*guestimage.Image, error) {
	rel := guestimage.Release{Repository: cmp.Or(r.Repository, guestimage.DefaultReleaseRepository), Tag: r.Tag}
	if err := rel.Validate(); err != nil {
		return nil, configErr("GuestRelease", "", err)
	}
	embedded, err := reference.EmbeddedValues()
	if err != nil {
		return nil, err
	}
	o := reference.FetchOptions{Release: rel, Dir: cmp.Or(r.Dir, filepath.Join(state, "guest-images", r.Tag)), Embedded: embedded}
	if r.TrustedRoot != "" {
		tm, err := verify.LoadTrustedRoot(r.TrustedRoot, "")
		if err != nil {
			return nil, configErr("GuestRelease.TrustedRoot", fmt.Sprintf("%q", r.TrustedRoot), err)
		}
		o.VerifySigned = reference.ReleaseWorkflowSigned(tm)
	}
	gh, err := release.NewGitHubClient(cmp.Or(r.APIURL, release.DefaultAPIURL), r.Token, &http.Client{})
	if err != nil {
		return nil, err
	}
	if o.Client, err = release.NewClient(gh, rel.Repository, release.Options{Logger: log}); err != nil {
		return nil, err
	}
	return reference.FetchGuestRelease(ctx, o)
}
