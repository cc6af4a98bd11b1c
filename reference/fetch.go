package reference

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/sigstore/sigstore-go/pkg/root"
	sigverify "github.com/sigstore/sigstore-go/pkg/verify"

	"github.com/cloche-dev/cloche/internal/atomicfile"
	guest "github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/internal/release"
	"github.com/cloche-dev/cloche/provenance"
)

// GuestReleaseAssets are the files a guest image release attaches (the release workflow's
// guest-image job), by their names in a guest image directory.
func GuestReleaseAssets() []string {
	return []string{guest.KernelFile, guest.InitrdFile, guest.MetadataFile, BundleFileName}
}

// ErrUntrustedRelease is wrapped when a fetched guest image release cannot be tied to a
// trusted source, or its files differ from what that source says.
var ErrUntrustedRelease = errors.New("guest image release not trusted")

// FetchOptions say which guest image release to fetch, from where, and what trusts it.
type FetchOptions struct {
	Release guest.Release
	// Dir is the guest image directory to create (replaced whole, never half-written).
	Dir    string
	Client *release.Client
	// Embedded are this cloche's embedded reference values (EmbeddedValues): when one is of
	// this release (its ToolVersion is the tag), the files must be what it lists.
	Embedded []*Document
	// VerifySigned verifies the release's reference-values bundle when no embedded
	// document is of this release, and returns its signed statement (ReleaseWorkflowSigned);
	// nil: such a release is refused.
	VerifySigned func(bundle []byte, rel guest.Release) ([]byte, error)
}

// FetchGuestRelease downloads a guest image release into o.Dir and accepts it only when its
// kernel and initrd are what trusted reference values of that release list: the embedded
// values of this cloche, or else the release's own bundle, verified by o.VerifySigned. A
// cached directory of the same release is checked the same way and reused.
func FetchGuestRelease(ctx context.Context, o FetchOptions) (*guest.Image, error) {
	if err := o.Release.Validate(); err != nil {
		return nil, err
	}
	if img, err := checkFetched(o, o.Dir); err == nil {
		return img, nil
	}
	if err := os.MkdirAll(filepath.Dir(o.Dir), 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(o.Dir), "."+filepath.Base(o.Dir)+".fetch-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if err := download(ctx, o, tmp); err != nil {
		return nil, err
	}
	if err := writeRelease(tmp, o.Release); err != nil {
		return nil, err
	}
	if _, err := checkFetched(o, tmp); err != nil {
		return nil, err
	}
	if err := os.RemoveAll(o.Dir); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, o.Dir); err != nil {
		return nil, err
	}
	return guest.Load(o.Dir)
}

func download(ctx context.Context, o FetchOptions, dir string) error {
	if o.Client == nil {
		return errors.New("fetch guest image release: no release client")
	}
	rel, err := o.Client.FindRelease(ctx, o.Release.Tag)
	if err != nil {
		return fmt.Errorf("guest image release %s of %s: %w", o.Release.Tag, o.Release.Repository, err)
	}
	if _, err := o.Client.Download(ctx, rel, dir, GuestReleaseAssets()); err != nil {
		return fmt.Errorf("guest image release %s of %s: %w", o.Release.Tag, o.Release.Repository, err)
	}
	return nil
}

func writeRelease(dir string, r guest.Release) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, guest.ReleaseFile), append(b, '\n'), 0o644)
}

// checkFetched checks a fetched directory: its files are what guest-image.json says
// (guest.Load), it is the release asked for, and the trusted document of that release
// lists those kernel, initrd and cmdline.
func checkFetched(o FetchOptions, dir string) (*guest.Image, error) {
	img, err := guest.Load(dir)
	if err != nil {
		return nil, err
	}
	rel, err := guest.LoadRelease(dir)
	if err != nil {
		return nil, err
	}
	if rel == nil || *rel != o.Release {
		return nil, fmt.Errorf("%s is not release %s of %s", dir, o.Release.Tag, o.Release.Repository)
	}
	doc, source, err := trustedDocument(o, dir)
	if err != nil {
		return nil, err
	}
	gi := doc.GuestImage
	for _, c := range []struct{ what, got, want string }{
		{guest.KernelFile, img.Kernel.SHA256, gi.Kernel.SHA256},
		{guest.InitrdFile, img.Initrd.SHA256, gi.Initrd.SHA256},
		{"cmdline", img.Cmdline, gi.Cmdline},
	} {
		if c.got != c.want {
			return nil, fmt.Errorf("%w: %s of release %s is %q, the %s say %q", ErrUntrustedRelease, c.what, o.Release.Tag, c.got, source, c.want)
		}
	}
	return img, nil
}

// trustedDocument is the embedded document of o.Release, or else the release's bundle
// verified by o.VerifySigned.
func trustedDocument(o FetchOptions, dir string) (*Document, string, error) {
	for _, d := range o.Embedded {
		if d != nil && "v"+strings.TrimPrefix(d.ToolVersion, "v") == o.Release.Tag {
			return d, "reference values embedded in this cloche", nil
		}
	}
	if o.VerifySigned == nil {
		return nil, "", fmt.Errorf("%w: this cloche embeds no reference values of release %s, and no trusted root was given to check the release's own", ErrUntrustedRelease, o.Release.Tag)
	}
	b, err := ReadBundle(filepath.Join(dir, BundleFileName))
	if err != nil {
		return nil, "", err
	}
	stmt, err := o.VerifySigned(b, o.Release)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %s of release %s: %w", ErrUntrustedRelease, BundleFileName, o.Release.Tag, err)
	}
	d, err := ParseStatement(stmt)
	if err != nil {
		return nil, "", err
	}
	if "v"+strings.TrimPrefix(d.ToolVersion, "v") != o.Release.Tag {
		return nil, "", fmt.Errorf("%w: the signed reference values are cloche %s's, not release %s's", ErrUntrustedRelease, d.ToolVersion, o.Release.Tag)
	}
	return d, "signed reference values of the release", nil
}

// ReleaseWorkflowSigned returns a FetchOptions.VerifySigned that accepts a keyless bundle
// signed, per tm, by the release workflow of the release's repository at its tag.
func ReleaseWorkflowSigned(tm root.TrustedMaterial) func([]byte, guest.Release) ([]byte, error) {
	return func(bundle []byte, rel guest.Release) ([]byte, error) {
		san := "https://github.com/" + rel.Repository + "/.github/workflows/release.yml@refs/tags/" + rel.Tag
		id, err := sigverify.NewShortCertificateIdentity(provenance.GitHubActionsIssuer, "", san, "")
		if err != nil {
			return nil, err
		}
		vb, err := provenance.VerifyBundleSigner(bundle, provenance.VerifyOptions{TrustedMaterial: tm, Identities: []sigverify.CertificateIdentity{id}})
		if err != nil {
			return nil, err
		}
		return vb.Statement, nil
	}
}
