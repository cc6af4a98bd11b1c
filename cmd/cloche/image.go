package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/cloche-dev/cloche/internal/host"
	"github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/internal/image/toolchain"
	"github.com/cloche-dev/cloche/job"
)

func newImageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build the guest image or a toolchain image",
	}
	cmd.AddCommand(newImageGuestCmd(g), newImageToolchainCmd(g))
	return cmd
}

func newImageGuestCmd(g *globals) *cobra.Command {
	var out, deb, agent string
	var rel releaseFlags
	cmd := &cobra.Command{
		Use:   "guest [--out DIR] [--kernel-deb FILE] [--guest-init FILE] | --release vX.Y.Z [--repo OWNER/NAME] [--trusted-root FILE]",
		Short: "Build the guest image (Debian cloud kernel + initramfs with the guest init), reproducibly, or fetch a released one",
		Long: `Without --release, guest builds the guest image here from the pinned inputs (a local
build, labelled as such in the provenance). With --release TAG, it fetches the guest image
that release published (kernel, initrd, guest-image.json, reference values) into the state
directory's guest-images/TAG and accepts it only when the files are what trusted reference
values of that release list: the values embedded in this cloche, or else the release's own,
signed keyless by the repository's release workflow at that tag (checked against
--trusted-root). It prints the image directory for --guest-image.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			state, err := g.state()
			if err != nil {
				return err
			}
			if rel.tag != "" {
				if deb != "" || agent != "" {
					return errors.New("--release fetches a published image: --kernel-deb and --guest-init are for building one")
				}
				c := rel.config()
				c.Dir = out
				img, err := host.FetchGuestRelease(cmd.Context(), state, c, g.logger())
				if err != nil {
					return hostConfigError(err, imageReleaseFlags)
				}
				return printJSON(g, struct {
					Dir string `json:"dir"`
					*guestimage.Image
				}{img.Dir, img})
			}
			if out == "" {
				out = host.GuestImageDir(state)
			}
			if agent == "" {
				if agent, err = host.GuestInitPath(); err != nil {
					return err
				}
			}
			if deb == "" {
				if deb, err = guestimage.FetchKernelDeb(cmd.Context(), host.KernelCacheDir(state)); err != nil {
					return kernelFetchError(err)
				}
			} else if err := guestimage.CheckKernelDeb(deb, guestimage.KernelPin()); err != nil {
				return fmt.Errorf("--kernel-deb: %w", err)
			}
			img, err := guestimage.Build(cmd.Context(), guestimage.Options{KernelDeb: deb, GuestInit: agent, OutDir: out})
			if err != nil {
				return err
			}
			return printJSON(g, img)
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "output directory (default: the state directory's guest-image)")
	cmd.Flags().StringVar(&deb, "kernel-deb", "", "the pinned kernel package (.deb, checked against its pinned SHA-256) when apt no longer serves it")
	cmd.Flags().StringVar(&agent, "guest-init", "", "static guest init binary (default: cloche-guest beside this executable)")
	rel.register(cmd.Flags())
	return cmd
}

// releaseFlags name a guest image release to fetch.
type releaseFlags struct {
	tag, repo, trustedRoot, apiURL string
}

func (r *releaseFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&r.tag, "release", "", "fetch the guest image of this cloche release (vX.Y.Z) instead of building one")
	fl.StringVar(&r.repo, "repo", guestimage.DefaultReleaseRepository, "with --release: the repository that publishes it (OWNER/NAME)")
	fl.StringVar(&r.trustedRoot, "trusted-root", "", "with --release: Sigstore trusted root to check the release's signed reference values with (needed when this cloche does not embed that release's)")
	fl.StringVar(&r.apiURL, "github-api-url", "", "with --release: GitHub API URL (default $GITHUB_API_URL or https://api.github.com)")
}

// imageReleaseFlags are the flags of `image guest --release` behind each field.
var imageReleaseFlags = map[string]string{"GuestRelease": "--release/--repo", "GuestRelease.TrustedRoot": "--trusted-root"}

// kernelFetchError adds the flag that supplies the kernel package by hand.
func kernelFetchError(err error) error {
	if errors.Is(err, guestimage.ErrKernelUnavailable) {
		return fmt.Errorf("%w; download %s and supply it with --kernel-deb FILE", err, guestimage.KernelPin().FileName())
	}
	return err
}

// config is the release these flags name, as the host fetches it; none without --release.
// The token is $GITHUB_TOKEN (public releases need none).
func (r releaseFlags) config() host.GuestRelease {
	if r.tag == "" {
		return host.GuestRelease{}
	}
	return host.GuestRelease{Tag: r.tag, Repository: r.repo, TrustedRoot: r.trustedRoot,
		APIURL: cmp.Or(r.apiURL, os.Getenv("GITHUB_API_URL")), Token: os.Getenv("GITHUB_TOKEN")}
}

func newImageToolchainCmd(g *globals) *cobra.Command {
	var out, name, fromImage, goVersion string
	var packages []string
	cmd := &cobra.Command{
		Use:   "toolchain [DIR] [--out FILE] | --from-image REPOSITORY@sha256:HEX",
		Short: "Make a read-only toolchain image (ext4 + dm-verity) from DIR, a container image, or Debian packages",
		Long: `With DIR, make a reproducible read-only ext4 image of it with a dm-verity hash tree and
print its digests. With --from-image, pull that container image (named by its manifest
digest: a tag alone is refused), check every digest, flatten its layers reproducibly and
cache the image in the state directory by that digest; the record names the image, so a
verifier can pull the same digest and recompute the verity root hash. Otherwise, assemble
a Debian root with --package (default gcc, make, libc6-dev) and cache it in the state
directory: it is rebuilt only when the package list changes.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case fromImage != "" && (len(args) == 1 || len(packages) > 0 || out != ""):
				return usageError(errors.New("--from-image makes the image from a container image: DIR, --out and --package do not go with it"))
			case fromImage != "":
				return toolchainFromImage(cmd.Context(), g, fromImage, name)
			case goVersion != "":
				if len(args) == 1 || len(packages) > 0 || out == "" {
					return usageError(errors.New("--go makes a busybox root with that Go release: it needs --out FILE, and DIR and --package do not go with it"))
				}
				return goToolchain(cmd, g, goVersion, out, name)
			case len(args) == 1:
				if out == "" {
					return fmt.Errorf("--out FILE is required when making an image from a directory")
				}
				if name == "" {
					name = filepath.Base(filepath.Clean(args[0]))
				}
				tc, err := toolchain.FromDir(cmd.Context(), args[0], out, name)
				if err != nil {
					return err
				}
				return printJSON(g, tc)
			}
			state, err := g.state()
			if err != nil {
				return err
			}
			if len(packages) == 0 {
				packages = toolchain.DefaultPackages
			}
			if name == "" {
				name = "debian-bookworm"
			}
			tc, path, err := toolchain.Build(cmd.Context(), toolchain.Options{Packages: packages, StateDir: state, Name: name})
			if err != nil {
				return err
			}
			g.reporter().Info("toolchain image ready", "path", path)
			return printJSON(g, tc)
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "image file to write (with DIR)")
	cmd.Flags().StringVar(&name, "name", "", "toolchain name recorded in the manifest")
	cmd.Flags().StringVar(&fromImage, "from-image", "", "container `IMAGE` to flatten into the toolchain, by manifest digest (REGISTRY/REPOSITORY@sha256:HEX)")
	cmd.Flags().StringVar(&goVersion, "go", "", "make a busybox root with this exact Go `RELEASE` (such as go1.26.8), fetched from the Go module proxy as golang.org/toolchain, for builds with --deps go")
	cmd.Flags().StringArrayVar(&packages, "package", nil, "Debian package to include (repeatable; default gcc, make, libc6-dev)")
	return cmd
}

// goToolchain is `image toolchain --go RELEASE --out FILE`: busybox and that Go release.
func goToolchain(cmd *cobra.Command, g *globals, version, out, name string) error {
	root, err := os.MkdirTemp("", "cloche-go-root-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	if err := toolchain.MakeBusyboxRoot(root); err != nil {
		return err
	}
	if err := toolchain.AddGo(cmd.Context(), root, version); err != nil {
		return err
	}
	if name == "" {
		name = version
	}
	tc, err := toolchain.FromDir(cmd.Context(), root, out, name)
	if err != nil {
		return err
	}
	return printJSON(g, tc)
}

// toolchainFromImage is `image toolchain --from-image`: the reference checked before the
// state directory or the network is touched, then the image pulled (or found cached).
func toolchainFromImage(ctx context.Context, g *globals, ref, name string) error {
	tc, path, err := imageToolchain(ctx, g, "--from-image", ref, name)
	if err != nil {
		return err
	}
	g.reporter().Info("toolchain image ready", "path", path)
	return printJSON(g, tc)
}

// imageToolchain makes (or finds cached) the toolchain image of a container image given
// with flag.
func imageToolchain(ctx context.Context, g *globals, flag, ref, name string) (*job.Toolchain, string, error) {
	if _, err := toolchain.ParseSourceImage(ref); err != nil {
		return nil, "", usageError(fmt.Errorf("%s: %w", flag, err))
	}
	state, err := g.state()
	if err != nil {
		return nil, "", err
	}
	return toolchain.FromImage(ctx, toolchain.ImageOptions{SourceImage: ref, StateDir: state, Name: name,
		Progress: g.progress(), Log: g.logger()})
}

func printJSON(g *globals, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	fmt.Fprintln(g.stdout, string(b))
	return nil
}
