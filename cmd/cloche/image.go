package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/cloche-dev/cloche/host"
	guestimage "github.com/cloche-dev/cloche/image/guest"
	"github.com/cloche-dev/cloche/image/toolchain"
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
	cmd := &cobra.Command{
		Use:   "guest [--out DIR] [--kernel-deb FILE] [--guest-agent FILE]",
		Short: "Build the guest image (Debian cloud kernel + initramfs with the guest agent), reproducibly",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			state, err := g.state()
			if err != nil {
				return err
			}
			if out == "" {
				out = host.GuestImageDir(state)
			}
			if agent == "" {
				if agent, err = guestAgentPath(); err != nil {
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
			img, err := guestimage.Build(cmd.Context(), guestimage.Options{KernelDeb: deb, GuestAgent: agent, OutDir: out})
			if err != nil {
				return err
			}
			return printJSON(g, img)
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "output directory (default: the state directory's guest-image)")
	cmd.Flags().StringVar(&deb, "kernel-deb", "", "the pinned kernel package (.deb, checked against its pinned SHA-256) when apt no longer serves it")
	cmd.Flags().StringVar(&agent, "guest-agent", "", "static guest agent binary (default: cloche-guest beside this executable)")
	return cmd
}

// kernelFetchError says how to go on when the archive no longer serves the pinned kernel.
func kernelFetchError(err error) error {
	if errors.Is(err, guestimage.ErrKernelUnavailable) {
		pin := guestimage.KernelPin()
		return fmt.Errorf("%w; download %s and supply it with --kernel-deb FILE", err, pin.FileName())
	}
	return err
}

func newImageToolchainCmd(g *globals) *cobra.Command {
	var out, name string
	var packages []string
	cmd := &cobra.Command{
		Use:   "toolchain [DIR] [--out FILE]",
		Short: "Make a read-only toolchain image (ext4 + dm-verity) from DIR, or from Debian packages",
		Long: `With DIR, make a reproducible read-only ext4 image of it with a dm-verity hash tree and
print its digests. Without DIR, assemble a Debian root with --package (default gcc, make,
libc6-dev) and cache it in the state directory: it is rebuilt only when the package list
changes.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
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
	cmd.Flags().StringArrayVar(&packages, "package", nil, "Debian package to include (repeatable; default gcc, make, libc6-dev)")
	return cmd
}

func printJSON(g *globals, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	fmt.Fprintln(g.stdout, string(b))
	return nil
}
