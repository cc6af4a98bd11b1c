package main

import (
	"encoding/hex"
	"fmt"
	"io"
	"path/filepath"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/cloche-dev/cloche/internal/build"
	"github.com/cloche-dev/cloche/internal/fileio"
	"github.com/cloche-dev/cloche/internal/host"
	"github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/measure"
)

func newVersionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit, Go version and the guest image measurement cloche run would launch",
		Long: `Version prints this build's version, source commit and Go version, and the simulated-TEE
launch measurement of the state directory's guest image with the default vCPUs and memory:
the value a default 'cloche run --tee sim' reports. It never builds the guest image.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			printVersion(g.stdout, g.stateDirPath())
			return nil
		},
	}
}

func printVersion(w io.Writer, state string) {
	fmt.Fprintf(w, "cloche %s\ncommit: %s\ngo: %s\nguest image: %s\n", version, buildCommit(), runtime.Version(), guestImageSummary(state))
}

// buildCommit is the commit set at build time, else the one the Go toolchain recorded.
func buildCommit() string {
	if commit != "" {
		return commit
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown (built without -X main.commit or VCS information)"
}

// guestImageSummary names the default guest image and its simulated-TEE measurement, or
// says why there is none; it reads files only.
func guestImageSummary(state string) string {
	if state == "" {
		return "unknown (no state directory: set --state-dir or CLOCHE_STATE_DIR)"
	}
	dir := host.GuestImageDir(state)
	img, err := guestimage.Load(dir)
	if err != nil {
		return fmt.Sprintf("no guest image built yet in %s; run `cloche image guest`", dir)
	}
	m, err := measure.Sim(filepath.Join(img.Dir, img.Kernel.Path), filepath.Join(img.Dir, img.Initrd.Path), img.Cmdline, build.DefaultVCPUs, build.DefaultMemoryMiB)
	if err != nil {
		return fmt.Sprintf("%s cannot be measured: %v", dir, err)
	}
	s := fmt.Sprintf("%s\nmeasurement (sim, %d vCPUs, %d MiB): %s", dir, build.DefaultVCPUs, build.DefaultMemoryMiB, hex.EncodeToString(m[:]))
	if agent, err := host.GuestInitPath(); err == nil {
		if sum, _, err := fileio.SHA256(agent); err == nil && !img.UpToDate(sum) {
			s += "\nnote: the image was built from another guest init than " + agent + "; `cloche run` rebuilds it first, which changes the measurement"
		}
	}
	return s
}
