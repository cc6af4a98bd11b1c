// Package busybox locates the host's static busybox (Debian's busybox-static), the one
// binary that gives the fast test toolchain and the boot benchmark a shell without a libc.
package busybox

import (
	"fmt"
	"os/exec"

	"github.com/cloche-dev/cloche/internal/image/internal/staticelf"
)

// candidates are where Debian's busybox-static installs the binary; PATH is searched last.
var candidates = []string{"/bin/busybox", "/usr/bin/busybox"}

// Find returns the path of a statically linked busybox, or an error saying how to get one.
func Find() (string, error) {
	paths := append([]string{}, candidates...)
	if p, err := exec.LookPath("busybox"); err == nil {
		paths = append(paths, p)
	}
	var lastErr error
	for _, p := range paths {
		err := staticelf.Check(p)
		if err == nil {
			return p, nil
		}
		lastErr = err
	}
	if lastErr == nil {
		return "", fmt.Errorf("busybox not found (install busybox-static, see scripts/install-deps.sh)")
	}
	return "", fmt.Errorf("no static busybox found (install busybox-static, see scripts/install-deps.sh): %w", lastErr)
}
