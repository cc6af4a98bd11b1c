package toolchain

import (
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"

	"github.com/cloche-dev/cloche/internal/progress"
	"github.com/cloche-dev/cloche/job"
)

// imageFormatVersion changes whenever the way a container image is flattened changes, so
// that cached images flattened the old way are not reused.
const imageFormatVersion = "cloche-toolchain-oci-flatten-1"

// The platform the guest runs: an image index is resolved to its manifest for it.
const (
	imageOS   = "linux"
	imageArch = "amd64"
)

// maxImageManifest bounds an image manifest or index.
const maxImageManifest = 4 << 20

// ErrImageDigest is wrapped when the registry serves bytes whose digest is not the one
// asked for (the manifest, or a layer the manifest names).
var ErrImageDigest = errors.New("container image content does not match its digest")

// ImageOptions says which container image to make a toolchain from.
type ImageOptions struct {
	// SourceImage is REPOSITORY@sha256:HEX (a tag before the digest is allowed and
	// ignored). A tag alone is refused: it can be moved to other content.
	SourceImage string
	StateDir    string // images are cached under StateDir/toolchains/<key>/
	Name        string // recorded in the job.Toolchain; defaults to SourceImage
	// Transport carries the registry requests (nil: the default transport). Requests are
	// anonymous.
	Transport http.RoundTripper
	Progress  *progress.Meter
	Log       *slog.Logger // warnings; nil discards them
}

var digestSuffix = regexp.MustCompile(`@sha256:[0-9a-f]{64}$`)

// ParseSourceImage checks that ref names an image by its manifest digest and returns it in
// its fully qualified form (REGISTRY/REPOSITORY@sha256:HEX), without touching the network.
func ParseSourceImage(ref string) (name.Digest, error) {
	if !digestSuffix.MatchString(ref) {
		return name.Digest{}, fmt.Errorf("sourceImage %q must end in @sha256: and the 64 hex digits of the manifest digest (a tag alone can be moved to other content)", ref)
	}
	if len(ref) > job.MaxSourceImageLen {
		return name.Digest{}, fmt.Errorf("sourceImage is longer than %d characters", job.MaxSourceImageLen)
	}
	d, err := name.NewDigest(ref, name.StrictValidation)
	if err != nil {
		return name.Digest{}, fmt.Errorf("sourceImage %q: %w", ref, err)
	}
	return name.NewDigest(d.Context().Name() + "@" + d.DigestStr())
}

// FromImage pulls the container image opts.SourceImage names, flattens its layers into a
// tree (docs/design.md, "Toolchains from container images") and makes the image of that
// tree as FromDir does, with the tree's modes and owners. The result is cached under
// StateDir/toolchains/<key>/, key the SHA-256 of the format versions and the manifest
// digest; a cached image is reused while it matches its metadata. It returns the toolchain
// record, whose SourceImage is the fully qualified reference, and the image path.
func FromImage(ctx context.Context, opts ImageOptions) (*job.Toolchain, string, error) {
	ref, err := ParseSourceImage(opts.SourceImage)
	if err != nil {
		return nil, "", fmt.Errorf("toolchain from image: %w", err)
	}
	if opts.StateDir == "" {
		return nil, "", errors.New("toolchain from image: StateDir is required")
	}
	id := job.Toolchain{Name: opts.Name, SourceImage: ref.String()}
	if id.Name == "" {
		id.Name = id.SourceImage
	}
	dir := filepath.Join(opts.StateDir, "toolchains", imageCacheKey(ref.DigestStr()))
	imagePath := filepath.Join(dir, ImageFile)

	phase := opts.Progress.Begin(ctx, "toolchain image", "sourceImage", id.SourceImage)
	if tc, err := Load(imagePath); err == nil {
		// The same digest pulled under another name or repository is the same image; the
		// record says how it was asked for this time, since a build loads it from there.
		if tc.Name != id.Name || tc.SourceImage != id.SourceImage {
			tc.Name, tc.SourceImage = id.Name, id.SourceImage
			if err := writeMeta(imagePath, tc); err != nil {
				return nil, "", fmt.Errorf("toolchain from image: %w", err)
			}
		}
		phase.Cached("path", imagePath)
		return tc, imagePath, nil
	} else if !errors.Is(err, os.ErrNotExist) && opts.Log != nil {
		opts.Log.WarnContext(ctx, "cached toolchain image unusable; rebuilding", "path", imagePath, "err", err)
	}
	tc, err := defaultTools.fromImage(ctx, phase, ref, opts.Transport, dir, imagePath, id)
	if err != nil {
		phase.Fail(err)
		return nil, "", fmt.Errorf("toolchain from image %s: %w", id.SourceImage, err)
	}
	phase.Done("path", imagePath)
	return tc, imagePath, nil
}

func imageCacheKey(digest string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s/%s\n%s\n", formatVersion, imageFormatVersion, imageOS, imageArch, digest)
	return "oci-" + hex.EncodeToString(h.Sum(nil))
}

// fromImage pulls and flattens ref into a work directory under dir, then makes the image.
func (t tools) fromImage(ctx context.Context, phase *progress.Phase, ref name.Digest, tr http.RoundTripper, dir, imagePath string, id job.Toolchain) (*job.Toolchain, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp(dir, ".flatten-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	root := filepath.Join(work, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return nil, err
	}
	attrs, err := pullTree(ctx, phase, ref, tr, work, root)
	if err != nil {
		return nil, err
	}
	phase.Step("making the image")
	return t.fromDir(ctx, root, imagePath, id, attrs)
}

// pullTree pulls ref's layers, checks each against the digest the manifest gives it,
// applies them in order and writes the flattened tree under root (an empty directory).
// work holds the staged layer and file contents meanwhile.
func pullTree(ctx context.Context, phase *progress.Phase, ref name.Digest, tr http.RoundTripper, work, root string) (map[string]inodeAttrs, error) {
	img, err := pullImage(ctx, ref, tr)
	if err != nil {
		return nil, err
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("image manifest: %w", err)
	}
	if len(m.Layers) > maxLayers {
		return nil, fmt.Errorf("image has %d layers, limit %d", len(m.Layers), maxLayers)
	}
	stage := filepath.Join(work, "blobs")
	if err := os.Mkdir(stage, 0o700); err != nil {
		return nil, err
	}
	f := newFlattener(stage)
	var pulled int64
	for i, desc := range m.Layers {
		phase.Step(fmt.Sprintf("layer %d of %d (%s, %d bytes)", i+1, len(m.Layers), desc.Digest, desc.Size))
		if pulled += desc.Size; desc.Size < 0 || pulled > maxTreeBytes {
			return nil, fmt.Errorf("layers exceed %d bytes", int64(maxTreeBytes))
		}
		if err := applyRemoteLayer(ctx, img, desc, work, f); err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i+1, desc.Digest, err)
		}
	}
	return f.writeTree(root)
}

// pullImage fetches ref's manifest, checks its digest, and resolves an index to its
// linux/amd64 image (whose manifest digest the index pins, and is checked too).
func pullImage(ctx context.Context, ref name.Digest, tr http.RoundTripper) (v1.Image, error) {
	opts := []remote.Option{remote.WithContext(ctx)}
	if tr != nil {
		opts = append(opts, remote.WithTransport(tr))
	}
	desc, err := remote.Get(ref, opts...)
	if err != nil {
		return nil, fmt.Errorf("fetch manifest: %w", err)
	}
	if err := checkDigest("manifest", desc.Manifest, ref.DigestStr()); err != nil {
		return nil, err
	}
	switch {
	case desc.MediaType.IsImage():
		return desc.Image()
	case desc.MediaType.IsIndex():
		return platformImage(desc)
	}
	return nil, fmt.Errorf("manifest media type %q is neither an image nor an index", desc.MediaType)
}

func platformImage(desc *remote.Descriptor) (v1.Image, error) {
	idx, err := desc.ImageIndex()
	if err != nil {
		return nil, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("image index: %w", err)
	}
	var found []v1.Hash
	for _, m := range im.Manifests {
		if m.MediaType.IsImage() && m.Platform != nil && m.Platform.OS == imageOS && m.Platform.Architecture == imageArch {
			found = append(found, m.Digest)
		}
	}
	if len(found) != 1 {
		return nil, fmt.Errorf("image index has %d images for %s/%s, need exactly one", len(found), imageOS, imageArch)
	}
	img, err := idx.Image(found[0])
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", found[0], err)
	}
	raw, err := img.RawManifest()
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", found[0], err)
	}
	if err := checkDigest("platform manifest", raw, found[0].String()); err != nil {
		return nil, err
	}
	return img, nil
}

// checkDigest refuses b unless its SHA-256 is want ("sha256:HEX"); the library checks this
// too, but the whole identity of the toolchain rests on it, so it is not left implicit.
func checkDigest(what string, b []byte, want string) error {
	if len(b) > maxImageManifest {
		return fmt.Errorf("%s is %d bytes, limit %d", what, len(b), maxImageManifest)
	}
	sum := sha256.Sum256(b)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != want {
		return fmt.Errorf("%w: %s has digest %s, expected %s", ErrImageDigest, what, got, want)
	}
	return nil
}

// applyRemoteLayer downloads one layer to a file under work while hashing it, refuses it
// unless its size and SHA-256 are what the manifest says, and only then decompresses and
// applies it: no byte the manifest does not pin reaches the tree.
func applyRemoteLayer(ctx context.Context, img v1.Image, desc v1.Descriptor, work string, f *flattener) error {
	decompress, err := decompressor(desc.MediaType)
	if err != nil {
		return err
	}
	if desc.Digest.Algorithm != "sha256" {
		return fmt.Errorf("layer digest algorithm %q is not sha256", desc.Digest.Algorithm)
	}
	l, err := img.LayerByDigest(desc.Digest)
	if err != nil {
		return err
	}
	file, err := os.CreateTemp(work, "layer-")
	if err != nil {
		return err
	}
	defer os.Remove(file.Name())
	defer file.Close()
	if err := downloadVerified(ctx, l, desc, file); err != nil {
		return err
	}
	if _, err := file.Seek(0, io.SeekStart); err != nil {
		return err
	}
	r, err := decompress(file)
	if err != nil {
		return fmt.Errorf("decompress: %w", err)
	}
	defer r.Close()
	return f.applyLayer(r)
}

func downloadVerified(ctx context.Context, l v1.Layer, desc v1.Descriptor, file *os.File) error {
	rc, err := l.Compressed()
	if err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(file, h), io.LimitReader(ctxReader{ctx, rc}, desc.Size+1))
	if err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != desc.Size || got != desc.Digest.Hex {
		return fmt.Errorf("%w: the registry served %d bytes with SHA-256 %s, the manifest says %d bytes with %s",
			ErrImageDigest, n, got, desc.Size, desc.Digest.Hex)
	}
	return nil
}

// ctxReader stops a long download when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// decompressor returns how to read a layer of media type mt as a tarball. Foreign
// (non-distributable) layers are refused: their content is not in the registry.
func decompressor(mt types.MediaType) (func(io.Reader) (io.ReadCloser, error), error) {
	switch mt {
	case types.DockerLayer, types.OCILayer:
		return func(r io.Reader) (io.ReadCloser, error) { return gzip.NewReader(r) }, nil
	case types.OCILayerZStd:
		return func(r io.Reader) (io.ReadCloser, error) {
			d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
			if err != nil {
				return nil, err
			}
			return d.IOReadCloser(), nil
		}, nil
	case types.OCIUncompressedLayer, "application/vnd.docker.image.rootfs.diff.tar":
		return func(r io.Reader) (io.ReadCloser, error) { return io.NopCloser(r), nil }, nil
	}
	if strings.Contains(string(mt), "foreign") || strings.Contains(string(mt), "nondistributable") {
		return nil, fmt.Errorf("layer media type %q: foreign layers are not supported", mt)
	}
	return nil, fmt.Errorf("layer media type %q is not supported", mt)
}
