package reference

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/cloche-dev/cloche/attest"
)

// Launch is one launch of a guest image, as the host saw it.
type Launch struct {
	TEE          attest.TEE
	VCPUs        int
	MemoryMiB    int
	KernelSHA256 string
	InitrdSHA256 string
	Measurement  []byte
}

// ShippedWith looks for the reference values shipped in a guest image directory
// (BundleFileName) and returns the SHA-256 of their signed statement when they describe this
// launch: same kernel and initrd, and the launch's measurement listed for its TEE and vCPU
// count (and memory size, where the value depends on it). It returns "" and no error when
// the directory ships no reference values.
//
// The signature is not checked here: the host holds no release key and is not trusted
// anyway. The digest lets a verifier see which published reference values the guest
// release came with; the verifier checks the signature itself.
func ShippedWith(imageDir string, l Launch) (string, error) {
	path := filepath.Join(imageDir, BundleFileName)
	b, err := ReadBundle(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	d, digest, err := UnverifiedStatement(b)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if d.GuestImage.Kernel.SHA256 != l.KernelSHA256 || d.GuestImage.Initrd.SHA256 != l.InitrdSHA256 {
		return "", fmt.Errorf("%s describes another guest image (kernel %s, initrd %s)", path, d.GuestImage.Kernel.SHA256, d.GuestImage.Initrd.SHA256)
	}
	for _, v := range d.Lookup(l.TEE, l.Measurement) {
		if v.VCPUs == l.VCPUs && (v.MemoryMiB == 0 || v.MemoryMiB == l.MemoryMiB) {
			return digest, nil
		}
	}
	return "", fmt.Errorf("%w: %s lists no %s value for %d vCPUs and %d MiB with measurement %s",
		ErrNotListed, path, l.TEE, l.VCPUs, l.MemoryMiB, hex.EncodeToString(l.Measurement))
}
