package guestimage

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/cloche-dev/cloche/internal/strictjson"
	"github.com/cloche-dev/cloche/provenance"
)

// ReleaseFile, in a guest image directory, says the image is a published release's
// (fetched and checked by `cloche image guest --release`), not a local build.
const ReleaseFile = "release.json"

// DefaultReleaseRepository publishes cloche's guest image releases.
const DefaultReleaseRepository = "cloche-dev/cloche"

// Release names the GitHub release a guest image was published with.
type Release struct {
	// Repository is OWNER/NAME; Tag the release's tag (vX.Y.Z).
	Repository string `json:"repository"`
	Tag        string `json:"tag"`
}

// Validate checks the names are a GitHub repository and a version tag.
func (r Release) Validate() error {
	if !provenance.ValidRepository(r.Repository) {
		return fmt.Errorf("release repository %q: expected OWNER/NAME", r.Repository)
	}
	if !provenance.ValidReleaseTag(r.Tag) {
		return fmt.Errorf("release tag %q: expected vX.Y.Z", r.Tag)
	}
	return nil
}

// URI is the release's page, the guest-image dependency's uri in the provenance.
func (r Release) URI() string {
	return "https://github.com/" + r.Repository + "/releases/tag/" + r.Tag
}

// LoadRelease reads dir's ReleaseFile: nil and no error when there is none (a local build).
func LoadRelease(dir string) (*Release, error) {
	p := filepath.Join(dir, ReleaseFile)
	b, err := readLimited(p, maxMetadataSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r Release
	if err := strictjson.Decode(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return &r, nil
}
