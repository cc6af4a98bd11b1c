package verify

import (
	"errors"
	"slices"
	"testing"

	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/reference"
)

// The referenceValuesSha256 annotation is bound only by reference values whose signature
// was checked; agreeing with the unverified file a guest image directory ships is reported
// as unbound, and disagreeing with either fails.
func TestGuestBindingReferenceValuesAnnotation(t *testing.T) {
	d := &reference.Document{GuestImage: reference.GuestImage{Kernel: reference.File{SHA256: "k"}, Initrd: reference.File{SHA256: "i"}, Cmdline: "c"}}
	g := provenance.GuestImage{KernelSHA256: "k", InitrdSHA256: "i", Cmdline: "c", ReferenceValues: "aa"}
	val := reference.Value{MemoryMiB: 2048}
	unbound, err := checkGuestBinding(g, &refMatch{doc: d, value: val, statementSHA256: "aa"})
	if err != nil || slices.Contains(unbound, "referenceValuesSha256") {
		t.Errorf("signed reference values: unbound %v, %v", unbound, err)
	}
	unbound, err = checkGuestBinding(g, &refMatch{doc: d, value: val, shippedSHA256: "aa"})
	if err != nil || !slices.Contains(unbound, "referenceValuesSha256") {
		t.Errorf("unverified shipped values: unbound %v, %v; want referenceValuesSha256 unbound", unbound, err)
	}
	if _, err := checkGuestBinding(g, &refMatch{doc: d, value: val, shippedSHA256: "bb"}); !errors.Is(err, ErrMismatchBinding) {
		t.Errorf("shipped values disagreeing: %v", err)
	}
}
