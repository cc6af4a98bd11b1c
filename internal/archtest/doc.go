// Package archtest keeps docs/architecture.md true: its test reads the layer table there and
// fails when a package of this module imports a layer its row does not allow, when a package
// is in no row, or when the guest init links verification, validation or testing code.
package archtest
