package verify

import (
	"context"
	"slices"
	"testing"

	"github.com/cloche-dev/cloche/verify/verifytest"
)

// A statement that names the release whose signed values list the measurement passes and
// says so; a local build passes as local; with values computed or pinned, a release claim
// is reported unbound.
func TestGuestReleaseBound(t *testing.T) {
	k := testKit(t)
	claim := verifytest.Hooks{Statement: func(b []byte) []byte {
		return guestEdit("https://github.com/cloche-dev/cloche/releases/tag/v0.1.0", "uri")(guestEdit("v0.1.0", "annotations", "release")(b))
	}}
	f, err := k.Build(t.TempDir(), claim)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Verify(context.Background(), kitOptions(k, f))
	if err != nil {
		t.Fatal(err)
	}
	if res.GuestImageRelease != "release v0.1.0" || !slices.Contains(res.Unbound, "guest-image repository") {
		t.Errorf("release claim: %q, unbound %v", res.GuestImageRelease, res.Unbound)
	}

	o := kitOptions(k, f)
	o.Reference = ReferenceOptions{}
	o.ExpectedMeasurements = [][]byte{f.Measurement[:]}
	res, err = Verify(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(res.Unbound, "guest-image release") {
		t.Errorf("a pinned measurement bound the release claim: %q, unbound %v", res.GuestImageRelease, res.Unbound)
	}

	local, err := k.Build(t.TempDir(), verifytest.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := Verify(context.Background(), kitOptions(k, local)); err != nil || res.GuestImageRelease != "local build, the bytes of release v0.1.0" {
		t.Errorf("local build: %v, %q", err, res.GuestImageRelease)
	}
}
