package verify

import (
	"context"
	"crypto"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/verifier"
	"github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/measure"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/reference"
)

// ReferenceOptions say where the trusted launch measurements come from: a signed
// reference-values bundle (BundlePath, verified with Key), or the guest image files, from
// which the verifier computes the values itself (GuestImageDir, plus the firmware for snp
// and tdx). Neither set: Options.EmbeddedReferences are used.
type ReferenceOptions struct {
	BundlePath string
	Key        crypto.PublicKey

	GuestImageDir string
	// Firmware is the image the guest was launched with (-bios): OVMF AmdSev for snp,
	// TDVF for tdx.
	Firmware string
	// VCPUType and GuestFeatures shape the SNP VMSAs; each listed guest features value is
	// tried (default 0x1 and 0x21, the two host kernel defaults).
	VCPUType      string
	GuestFeatures []uint64
}

// Check reports options that contradict each other or lack what they need.
func (r *ReferenceOptions) Check() error {
	switch {
	case r.BundlePath != "" && r.GuestImageDir != "":
		return errors.New("give reference values or a guest image to compute them from, not both")
	case r.BundlePath != "" && r.Key == nil:
		return errors.New("Reference.BundlePath: reference values need the key they are signed with (Reference.Key)")
	case r.BundlePath == "" && r.Key != nil:
		return errors.New("Reference.Key: a reference-values key was given without reference values (Reference.BundlePath)")
	case r.GuestImageDir == "" && (r.Firmware != "" || r.VCPUType != "" || len(r.GuestFeatures) > 0):
		return errors.New("Reference.Firmware, VCPUType and GuestFeatures are used with Reference.GuestImageDir only")
	}
	return nil
}

// refMatch is the reference value a measurement matched and where it came from.
type refMatch struct {
	summary string
	value   reference.Value
	doc     *reference.Document
	// releaseSigned: the document is the signed or embedded values of a guest release, so
	// its ToolVersion names the builder's version.
	releaseSigned bool
	// statementSHA256 is the digest of the matching document's signed statement, when the
	// verifier knows it ("" otherwise).
	statementSHA256 string
	// shippedSHA256 is the digest of the reference values a guest image directory ships
	// (computed-values case), "" when it ships none.
	shippedSHA256 string
}

// referenceSource is one trusted document to look the measurement up in.
type referenceSource struct {
	doc             *reference.Document
	summary         string
	releaseSigned   bool
	statementSHA256 string
	shippedSHA256   string
}

// referenceSources loads the trusted documents: the given signed bundle, the values
// computed from the given guest image, or else the embedded references.
func referenceSources(ctx context.Context, o *Options, tee attest.TEE, guest provenance.GuestImage) ([]referenceSource, error) {
	r := &o.Reference
	switch {
	case r.BundlePath != "":
		b, err := reference.ReadBundle(r.BundlePath)
		if err != nil {
			return nil, fail(CheckReference, err)
		}
		v, err := reference.VerifyBundle(b, r.Key)
		if err != nil {
			return nil, fail(CheckReference, fmt.Errorf("%s: %w", r.BundlePath, err))
		}
		return []referenceSource{{doc: v.Document, releaseSigned: true, statementSHA256: v.StatementSHA256,
			summary: fmt.Sprintf("signed reference values %s… (cloche %s)", v.StatementSHA256[:16], v.Document.ToolVersion)}}, nil
	case r.GuestImageDir != "":
		doc, err := computeReference(ctx, r, tee, guest)
		if err != nil {
			return nil, fail(CheckReference, err)
		}
		src := referenceSource{doc: doc, summary: "values computed from " + r.GuestImageDir}
		if b, err := reference.ReadBundle(filepath.Join(r.GuestImageDir, reference.BundleFileName)); err == nil {
			if _, digest, err := reference.UnverifiedStatement(b); err == nil {
				src.shippedSHA256 = digest
			}
		}
		return []referenceSource{src}, nil
	}
	var out []referenceSource
	for i, d := range o.EmbeddedReferences {
		if d == nil {
			continue
		}
		out = append(out, referenceSource{doc: d, releaseSigned: true,
			summary: fmt.Sprintf("embedded reference values %d (cloche %s)", i+1, d.ToolVersion)})
	}
	return out, nil
}

// checkReference runs once the evidence is verified and the statement's guest-image
// dependency is known to name the evidence's measurement. It returns the matching value
// (nil when no trusted document was given).
//
// For TDX the measurement is MRTD, which covers the firmware alone: a listed value matches
// only when its RTMR1 (kernel) and RTMR2 (cmdline, initrd) equal the quote's too.
func checkReference(ctx context.Context, o *Options, tee attest.TEE, guest provenance.GuestImage, claims *verifier.Claims) (*refMatch, error) {
	if err := o.Reference.Check(); err != nil {
		return nil, fail(CheckOptions, err)
	}
	sources, err := referenceSources(ctx, o, tee, guest)
	if err != nil || len(sources) == 0 {
		return nil, err
	}
	measurement := claims.Measurement
	var rtmrMismatch error
	var names []string
	for _, src := range sources {
		names = append(names, src.summary)
		for _, v := range src.doc.Lookup(tee, measurement) {
			if v.VCPUs != guest.VCPUs || (v.MemoryMiB != 0 && v.MemoryMiB != guest.MemoryMiB) {
				continue
			}
			if err := checkRTMRs(v, claims); err != nil {
				rtmrMismatch = err
				continue
			}
			return &refMatch{summary: fmt.Sprintf("%s: %s, %d vCPUs", src.summary, v.TEE, v.VCPUs), value: v, doc: src.doc,
				releaseSigned: src.releaseSigned, statementSHA256: src.statementSHA256, shippedSHA256: src.shippedSHA256}, nil
		}
	}
	if rtmrMismatch != nil {
		return nil, fail(CheckMeasurement, fmt.Errorf("%w: MRTD %s is listed but %v (the %s)", reference.ErrNotListed, hex.EncodeToString(measurement), rtmrMismatch, strings.Join(names, "; ")))
	}
	return nil, fail(CheckMeasurement, fmt.Errorf("%w: measurement %s (%s, %d vCPUs, %d MiB) is not listed by the %s",
		reference.ErrNotListed, hex.EncodeToString(measurement), tee, guest.VCPUs, guest.MemoryMiB, strings.Join(names, "; ")))
}

// checkGuestBinding holds the statement's guest-image dependency to the reference value
// that matched the measurement: every annotation the value's document determines must
// say what the document says. It returns the annotations nothing binds (dropped from
// what the verifier reports).
func checkGuestBinding(g provenance.GuestImage, m *refMatch) ([]string, error) {
	if m == nil {
		return []string{"kernelSha256", "initrdSha256", "cmdline", "vcpus", "memoryMiB", "recipe", "referenceValuesSha256"}, nil
	}
	gi := m.doc.GuestImage
	for _, c := range []struct{ field, got, want string }{
		{"kernelSha256", g.KernelSHA256, gi.Kernel.SHA256},
		{"initrdSha256", g.InitrdSHA256, gi.Initrd.SHA256},
		{"cmdline", g.Cmdline, gi.Cmdline},
	} {
		if c.got != c.want {
			return nil, fail(CheckGuestImage, fmt.Errorf("%w: guest-image annotation %s is %q, the reference values that list the measurement say %q", ErrMismatchBinding, c.field, c.got, c.want))
		}
	}
	if g.Recipe != "" && g.Recipe != gi.Recipe {
		return nil, fail(CheckGuestImage, fmt.Errorf("%w: guest-image annotation recipe is %q, the reference values say %q", ErrMismatchBinding, g.Recipe, gi.Recipe))
	}
	var unbound []string
	if m.value.MemoryMiB == 0 {
		unbound = append(unbound, "memoryMiB") // not measured on this TEE
	}
	// Only a document whose signature was checked binds the annotation; the reference
	// values a guest image directory ships were not verified (their file can say anything),
	// so agreeing with them is consistency, not a binding.
	want := m.statementSHA256
	verified := want != ""
	if !verified {
		want = m.shippedSHA256
	}
	switch {
	case g.ReferenceValues == "":
	case want == "":
		unbound = append(unbound, "referenceValuesSha256")
	case g.ReferenceValues != want:
		return nil, fail(CheckGuestImage, fmt.Errorf("%w: guest-image annotation referenceValuesSha256 is %s, the trusted reference values are %s", ErrMismatchBinding, g.ReferenceValues, want))
	case !verified:
		unbound = append(unbound, "referenceValuesSha256")
	}
	return unbound, nil
}

// checkGuestRelease compares the release the statement says was launched with the release
// whose signed or embedded reference values list the measurement: a host that names a
// release it did not launch fails. A local build whose bytes are a release's passes (it is
// honest about being local). The repository in the uri, and any release claim no
// release's values bind (pinned or computed measurements), are reported unbound.
func checkGuestRelease(g provenance.GuestImage, m *refMatch) (string, []string, error) {
	if m == nil || !m.releaseSigned {
		if g.Release == "" {
			return "local build", nil, nil
		}
		return "release " + g.Release + " not bound", []string{"release", "repository"}, nil
	}
	want := "v" + strings.TrimPrefix(m.doc.ToolVersion, "v")
	switch g.Release {
	case "":
		return "local build, the bytes of release " + want, nil, nil
	case want:
		return "release " + want, []string{"repository"}, nil
	}
	return "", nil, fail(CheckGuestRelease, fmt.Errorf("%w: the statement says guest image release %s was launched, the reference values that list the measurement are release %s's",
		ErrMismatchBinding, g.Release, want))
}

// computeReference computes the values of the launch shape the statement names from the
// guest image files. The statement is untrusted, but a shape it lies about yields a value
// the evidence does not have.
func computeReference(ctx context.Context, r *ReferenceOptions, tee attest.TEE, guest provenance.GuestImage) (*reference.Document, error) {
	if guest.VCPUs < 1 || guest.VCPUs > measure.MaxVCPUs || guest.MemoryMiB < 64 {
		return nil, fmt.Errorf("the statement names %d vCPUs and %d MiB, which no reference value covers", guest.VCPUs, guest.MemoryMiB)
	}
	o := reference.CreateOptions{GuestImageDir: r.GuestImageDir, ToolVersion: "0.0.0-verify",
		VCPUs: []int{guest.VCPUs}, MemoryMiB: []int{guest.MemoryMiB}}
	switch tee {
	case attest.TEESim:
	case attest.TEESNP:
		if r.Firmware == "" {
			return nil, errors.New("ReferenceOptions.Firmware: SNP values need the OVMF AmdSev build the guest was launched with (expected a file)")
		}
		o.NoSim, o.SNPFirmware, o.GuestFeatures = true, r.Firmware, r.GuestFeatures
		if r.VCPUType != "" {
			o.VCPUTypes = []string{r.VCPUType}
		}
	case attest.TEETDX:
		if r.Firmware == "" {
			return nil, errors.New("ReferenceOptions.Firmware: TDX values need the TDVF the guest was launched with (expected a file)")
		}
		o.NoSim, o.TDXFirmware = true, r.Firmware
		o.MRTDOrders = []measure.PageAddOrder{measure.SinglePass, measure.TwoPass}
	default:
		return nil, fmt.Errorf("no reference values can be computed for TEE %q", tee)
	}
	img, err := guestimage.Load(r.GuestImageDir)
	if err != nil {
		return nil, err
	}
	if img.Kernel.SHA256 != guest.KernelSHA256 || img.Initrd.SHA256 != guest.InitrdSHA256 || img.Cmdline != guest.Cmdline {
		// Not a failure by itself (the measurement decides), but the likely reason for one.
		return nil, fmt.Errorf("%w: the statement's guest image (kernel %s…, initrd %s…) is not %s (kernel %s…, initrd %s…)",
			reference.ErrNotListed, guest.KernelSHA256[:16], guest.InitrdSHA256[:16], r.GuestImageDir, img.Kernel.SHA256[:16], img.Initrd.SHA256[:16])
	}
	return reference.Create(ctx, o)
}

// checkRTMRs compares a listed TDX value's RTMR1 and RTMR2 with the quote's. A TDX value
// without RTMRs is refused: MRTD alone would accept any kernel, initrd and cmdline.
func checkRTMRs(v reference.Value, claims *verifier.Claims) error {
	if v.TEE != attest.TEETDX {
		return nil
	}
	if v.RTMR1 == "" || v.RTMR2 == "" {
		return errors.New("the listed value has no RTMR1/RTMR2, and MRTD alone does not cover the kernel, initrd or cmdline")
	}
	if len(claims.Rtmrs) < 3 {
		return errors.New("the quote carries no RTMRs")
	}
	for i, want := range map[int]string{1: v.RTMR1, 2: v.RTMR2} {
		if got := hex.EncodeToString(claims.Rtmrs[i]); got != want {
			return fmt.Errorf("RTMR%d is %s, the reference value lists %s", i, got, want)
		}
	}
	return nil
}
