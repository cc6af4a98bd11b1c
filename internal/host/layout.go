// Package host is the runner host's side of a build: where its state lives and the defaults
// every entry point (cloche run, cloche agent, cloche action build) shares, so the layout and
// the defaults are declared once.
package host

import (
	"os"
	"path/filepath"
)

// StateDirEnv names the environment variable that sets the state directory.
const StateDirEnv = "CLOCHE_STATE_DIR"

// DefaultStateDir is the state directory when none is configured: $CLOCHE_STATE_DIR, else
// /var/lib/cloche for root, else ~/.local/state/cloche; "" when there is no home directory.
func DefaultStateDir() string {
	if dir := os.Getenv(StateDirEnv); dir != "" {
		return dir
	}
	if os.Geteuid() == 0 {
		return "/var/lib/cloche"
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return filepath.Join(home, ".local", "state", "cloche")
}

// Layout of the state directory.

// GuestImageDir is where the guest image (kernel, initramfs, measurements) is built.
func GuestImageDir(state string) string { return filepath.Join(state, "guest-image") }

// SimTEEDir holds the simulated secure processor's keys and certificates.
func SimTEEDir(state string) string { return filepath.Join(state, "sim-tee") }

// SigningKeyPath is the host's default signing key (its public half beside it, .pub).
func SigningKeyPath(state string) string { return filepath.Join(state, "signing-key.pem") }

// KernelCacheDir caches the downloaded guest kernel packages.
func KernelCacheDir(state string) string { return filepath.Join(state, "cache", "kernel") }

// KDSCacheDir caches certificates fetched from AMD's key distribution service.
func KDSCacheDir(state string) string { return filepath.Join(state, "cache", "kds") }

// SNPFirmwarePath is the default SEV-SNP firmware (OVMF built from OvmfPkg/AmdSev).
func SNPFirmwarePath(state string) string {
	return filepath.Join(state, "firmware", "OVMF.amdsev.fd")
}

// TDXFirmwarePath is the default TDX firmware (TDVF).
func TDXFirmwarePath(state string) string { return filepath.Join(state, "firmware", "TDVF.fd") }
