package guestimage

import (
	_ "embed" // GO_TOOLCHAIN
	"strings"
)

// goToolchain is the one declaration of the Go release the guest init is built with
// (scripts/build-guest-init.sh reads the same file): the guest init's bytes depend on the Go
// version, and they are part of the launch measurement.
//
//go:embed GO_TOOLCHAIN
var goToolchain string

// GoToolchain is the GOTOOLCHAIN value the guest init is built with, e.g. go1.26.8.
func GoToolchain() string { return strings.TrimSpace(goToolchain) }
