// Command cloche-guest is the guest init, /init of cloche's confidential VM. It is only
// meant to run as PID 1 (or as its own sandbox helper, which is PID 1 of the build's PID
// namespace); see package guest.
package main

import (
	"fmt"
	"os"

	"github.com/cloche-dev/cloche/internal/guest"
)

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "usage: cloche-guest is /init of the cloche guest VM (PID 1); it is not run by hand")
		os.Exit(2)
	}
	guest.Main()
}
