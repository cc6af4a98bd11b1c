package host

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/image/toolchain"
	"github.com/cloche-dev/cloche/internal/progress"
	"github.com/cloche-dev/cloche/provenance"
)

// SigningKey loads the signing key at key, or with key empty the state directory's, creating
// that one on first use (created reports it). It returns the signer and the key's path; the
// public key is beside it, with .pub appended.
func SigningKey(state, key string) (signer *provenance.KeySigner, path string, created bool, err error) {
	path = key
	if path == "" {
		path = SigningKeyPath(state)
		if _, statErr := os.Stat(path); errors.Is(statErr, os.ErrNotExist) {
			if err := provenance.GenerateKey(path, path+".pub"); err != nil {
				return nil, "", false, fmt.Errorf("creating a signing key: %w", err)
			}
			created = true
		}
	}
	// LoadKeySigner's errors name the key's path already.
	if signer, err = provenance.LoadKeySigner(path); err != nil {
		return nil, "", false, err
	}
	return signer, path, created, nil
}

// Firmware is the firmware a hardware TEE launch uses: snp or tdx when set, else the state
// directory's default file; "" for the simulated TEE, which boots without one.
func Firmware(tee attest.TEE, snp, tdx, state string) string {
	switch {
	case tee == attest.TEESNP && snp != "":
		return snp
	case tee == attest.TEESNP:
		return SNPFirmwarePath(state)
	case tee == attest.TEETDX && tdx != "":
		return tdx
	case tee == attest.TEETDX:
		return TDXFirmwarePath(state)
	}
	return ""
}

// DefaultToolchain returns the default toolchain image (toolchain.DefaultPackages recorded
// as toolchain.DefaultName in state), assembling it the first time (minutes: mmdebstrap
// downloads and installs the packages).
func DefaultToolchain(ctx context.Context, state string, meter *progress.Meter, log *slog.Logger) (string, error) {
	_, p, err := toolchain.Build(ctx, toolchain.Options{Packages: toolchain.DefaultPackages, StateDir: state,
		Name: toolchain.DefaultName, Progress: meter, Log: log})
	if err != nil {
		return "", fmt.Errorf("default toolchain image: %w", err)
	}
	return p, nil
}
