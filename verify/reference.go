package verify

import (
	"context"
	"crypto"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/cloche-dev/cloche/attest"
	guestimage "github.com/cloche-dev/cloche/image/guest"
	"github.com/cloche-dev/cloche/measure"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/reference"
)

// CheckReference names the reference-values check: the launch measurement must be one the
// guest release's reference values list for the evidence's TEE and the statement's vCPU
// count (and memory size, where it is measured).
const CheckReference = "reference values"

// ReferenceOptions say where the trusted launch measurements come from: a signed
// reference-values bundle (BundlePath, verified with Key), or the guest image files, from
// which the verifier computes the values itself (GuestImageDir, plus the firmware for snp
// and tdx). Neither set: the check is skipped.
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

func (r *ReferenceOptions) enabled() bool { return r.BundlePath != "" || r.GuestImageDir != "" }

// Check reports options that contradict each other or lack what they need.
func (r *ReferenceOptions) Check() error {
	switch {
	case r.BundlePath != "" && r.GuestImageDir != "":
		return errors.New("give reference values or a guest image to compute them from, not both")
	case r.BundlePath != "" && r.Key == nil:
		return errors.New("reference values need the key they are signed with (expected --reference-key FILE)")
	case r.BundlePath == "" && r.Key != nil:
		return errors.New("a reference-values key was given without reference values (expected --reference-values FILE)")
	case r.GuestImageDir == "" && (r.Firmware != "" || r.VCPUType != "" || len(r.GuestFeatures) > 0):
		return errors.New("firmware, vCPU type and guest features are used with --guest-image only")
	}
	return nil
}

// checkReference runs once the evidence is verified and the statement's guest-image
// dependency is known to name the evidence's measurement. It returns a one-line summary of
// the matching value.
//
// For TDX the measurement is MRTD, which covers the firmware alone: a listed value matches
// only when its RTMR1 (kernel) and RTMR2 (cmdline, initrd) equal the quote's too.
func checkReference(ctx context.Context, r *ReferenceOptions, tee attest.TEE, guest provenance.GuestImage, claims *attest.Claims) (string, error) {
	measurement := claims.Measurement
	if !r.enabled() {
		return "", nil
	}
	if err := r.Check(); err != nil {
		return "", fail(CheckOptions, err)
	}
	var (
		doc    *reference.Document
		source string
	)
	if r.BundlePath != "" {
		b, err := reference.ReadBundle(r.BundlePath)
		if err != nil {
			return "", fail(CheckReference, err)
		}
		v, err := reference.VerifyBundle(b, r.Key)
		if err != nil {
			return "", fail(CheckReference, fmt.Errorf("%s: %w", r.BundlePath, err))
		}
		doc = v.Document
		source = fmt.Sprintf("signed reference values %s… (cloche %s)", v.StatementSHA256[:16], doc.ToolVersion)
		if guest.ReferenceValues != "" && guest.ReferenceValues != v.StatementSHA256 {
			source += fmt.Sprintf("; the guest image shipped other reference values %s…", guest.ReferenceValues[:16])
		}
	} else {
		var err error
		if doc, err = computeReference(ctx, r, tee, guest); err != nil {
			return "", fail(CheckReference, err)
		}
		source = "values computed from " + r.GuestImageDir
	}
	var rtmrMismatch error
	for _, v := range doc.Lookup(string(tee), measurement) {
		if v.VCPUs != guest.VCPUs || (v.TEE == reference.TEESim && v.MemoryMiB != guest.MemoryMiB) {
			continue
		}
		if err := checkRTMRs(v, claims); err != nil {
			rtmrMismatch = err
			continue
		}
		return fmt.Sprintf("%s: %s, %d vCPUs", source, v.TEE, v.VCPUs), nil
	}
	if rtmrMismatch != nil {
		return "", fail(CheckReference, fmt.Errorf("%w: MRTD %s is listed but %v (the %s)", reference.ErrNotListed, hex.EncodeToString(measurement), rtmrMismatch, source))
	}
	return "", fail(CheckReference, fmt.Errorf("%w: measurement %s (%s, %d vCPUs, %d MiB) is not listed by the %s",
		reference.ErrNotListed, hex.EncodeToString(measurement), tee, guest.VCPUs, guest.MemoryMiB, source))
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
	case attest.TEE(reference.TEESNP):
		if r.Firmware == "" {
			return nil, errors.New("SNP values need the firmware the guest was launched with (expected --guest-firmware FILE)")
		}
		o.NoSim, o.SNPFirmware, o.GuestFeatures = true, r.Firmware, r.GuestFeatures
		if r.VCPUType != "" {
			o.VCPUTypes = []string{r.VCPUType}
		}
	case attest.TEE(reference.TEETDX):
		if r.Firmware == "" {
			return nil, errors.New("TDX values need the TDVF the guest was launched with (expected --guest-firmware FILE)")
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
func checkRTMRs(v reference.Value, claims *attest.Claims) error {
	if v.TEE != reference.TEETDX {
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
