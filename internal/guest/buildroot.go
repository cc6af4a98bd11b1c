package guest

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/cloche-dev/cloche/job"
)

// verityName is the device-mapper name of the verified toolchain.
const verityName = "cloche-toolchain"

// mountToolchain maps the toolchain disk through dm-verity with the manifest's root hash and
// mounts the verified device read-only at mnt. The raw disk is never mounted: every block
// the build reads is checked against the launch-bound root hash.
func mountToolchain(sysRoot, devRoot, dmName string, disk BlockDevice, tc job.Toolchain, mnt string) error {
	f, size, err := OpenBlockDevice(disk, os.O_RDONLY)
	if err != nil {
		return err
	}
	f.Close()
	if size < tc.ImageSize {
		return fmt.Errorf("toolchain disk %s is %d bytes, smaller than the manifest's image size %d", disk.Path, size, tc.ImageSize)
	}
	dev, err := setupVerity(devRoot, dmName, VerityParams{
		Dev: disk.Dev, DataBlocks: tc.DataBlocks, HashOffset: tc.HashOffset,
		RootHash: tc.VerityRootHash, Salt: tc.VeritySalt,
	})
	if err != nil {
		return fmt.Errorf("setting up dm-verity over %s: %w", disk.Path, err)
	}
	node, err := blockDeviceNode(sysRoot, devRoot, dev)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return err
	}
	// noload: the device is read-only, so a journal could not be replayed anyway.
	if err := unix.Mount(node, mnt, "ext4", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, "noload"); err != nil {
		if serr := verityStatus(devRoot, dmName); errors.Is(serr, ErrVerityCorrupted) {
			return fmt.Errorf("mounting the toolchain (%s) as ext4: %w: the toolchain disk does not match the manifest's verity root hash", node, serr)
		}
		return fmt.Errorf("mounting the toolchain (%s, verity-checked) as ext4 read-only: %w", node, err)
	}
	return nil
}

// BuildRoot is the writable root the command runs in.
type BuildRoot struct {
	// Dir is the overlay's merged directory (the chroot).
	Dir string
	// Src is Dir + "/src", the unpacked source, owned by the build user.
	Src string
}

// prepareBuildRoot mounts a tmpfs at scratch and, on it, an overlay whose lower layer is
// the read-only toolchain at lower: the build may write anywhere in its root, and all of it
// is thrown away with the VM. It creates /src owned by uid:gid.
func prepareBuildRoot(lower, scratch string, uid, gid int) (*BuildRoot, error) {
	if err := os.MkdirAll(scratch, 0o755); err != nil {
		return nil, err
	}
	if err := unix.Mount("tmpfs", scratch, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		return nil, fmt.Errorf("mounting tmpfs for the build root on %s: %w", scratch, err)
	}
	upper := filepath.Join(scratch, "upper")
	work := filepath.Join(scratch, "work")
	merged := filepath.Join(scratch, "root")
	for _, d := range []string{upper, work, merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work)
	if err := unix.Mount("overlay", merged, "overlay", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return nil, fmt.Errorf("mounting the build root overlay (%s): %w", opts, err)
	}
	src := filepath.Join(merged, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		// A toolchain may ship an empty /src; anything else there would mix with the source.
		fi, serr := os.Lstat(src)
		if !errors.Is(err, fs.ErrExist) || serr != nil || !fi.IsDir() {
			return nil, fmt.Errorf("creating /src in the build root: %w", err)
		}
	}
	if err := os.Chown(src, uid, gid); err != nil {
		return nil, err
	}
	return &BuildRoot{Dir: merged, Src: src}, nil
}
