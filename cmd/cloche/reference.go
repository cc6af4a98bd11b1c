package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/sethvargo/go-githubactions"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/cloche-dev/cloche/internal/build"
	"github.com/cloche-dev/cloche/measure"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/reference"
	"github.com/cloche-dev/cloche/verify"
)

func newReferenceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "reference",
		Short: "Publish signed reference values (expected launch measurements) for a guest image",
	}
	cmd.AddCommand(newReferenceCreateCmd(g), newReferenceListCmd(g))
	return cmd
}

func newReferenceListCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "Show the reference values built into this cloche (the guest images its release published)",
		Long: `List prints the reference values embedded in this cloche at release time: for each
document, the cloche release that computed it, the guest image's kernel and initrd digests,
and every launch measurement it lists per TEE, vCPU count and memory size. 'cloche verify'
accepts a build's measurement when one of them lists it, with no measurement flag. A
development build embeds none.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			embedded, err := reference.EmbeddedDocuments()
			if err != nil {
				return err
			}
			if asJSON {
				b, err := json.MarshalIndent(embedded, "", "  ")
				if err != nil {
					return err
				}
				fmt.Fprintln(g.stdout, string(b))
				return nil
			}
			printEmbedded(g.stdout, embedded)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the embedded documents as JSON")
	return cmd
}

func printEmbedded(w io.Writer, embedded []reference.Embedded) {
	if len(embedded) == 0 {
		fmt.Fprintln(w, "no reference values are embedded in this cloche (a development build): verify needs --reference-values, --guest-image or --measurement")
		return
	}
	for _, e := range embedded {
		d := e.Document
		fmt.Fprintf(w, "%s (statement sha256 %s)\n  cloche %s; kernel %s sha256 %s; initrd %s sha256 %s\n", e.Name, e.SHA256,
			d.ToolVersion, d.GuestImage.Kernel.Name, d.GuestImage.Kernel.SHA256, d.GuestImage.Initrd.Name, d.GuestImage.Initrd.SHA256)
		for _, v := range d.Values {
			mem := "any memory"
			if v.MemoryMiB != 0 {
				mem = fmt.Sprintf("%d MiB", v.MemoryMiB)
			}
			fmt.Fprintf(w, "  %-4s %2d vCPUs %-10s %s\n", v.TEE, v.VCPUs, mem, v.Measurement)
		}
	}
}

type referenceCreateFlags struct {
	guestImage, key, out          string
	keyless                       bool
	fulcioURL, rekorURL           string
	vcpus, memory                 []int
	noSim                         bool
	snpFirmware, tdxFirmware      string
	vcpuTypes, features, mrtdOrds []string
}

func newReferenceCreateCmd(g *globals) *cobra.Command {
	f := &referenceCreateFlags{}
	cmd := &cobra.Command{
		Use:   "create --guest-image DIR --key FILE [flags]",
		Short: "Compute and sign the reference values of a guest image",
		Long: `Create computes, for a guest image, the launch measurement each TEE will report per vCPU
count (sim always unless --no-sim; snp with --snp-firmware; tdx with --tdx-firmware), lists
them with the digests of the files they were computed from and this tool's version, and
signs the document as an in-toto statement (predicate type ` + reference.PredicateType + `)
in a Sigstore bundle with --key.

The bundle is written to --out (default: ` + reference.BundleFileName + ` in the guest image
directory, where 'cloche run' finds it and records its digest in the provenance); the
signed statement is printed on stdout. A verifier uses it with
'cloche verify --reference-values FILE --reference-key KEY.pub'.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runReferenceCreate(cmd, g, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.guestImage, "guest-image", "", "guest image `DIR` (from 'cloche image guest')")
	fl.StringVar(&f.key, "key", "", "ECDSA P-256 private key (PEM) of the guest image release")
	fl.BoolVar(&f.keyless, "keyless", false, "sign keyless instead of --key: a Fulcio certificate for the GitHub Actions workflow's OIDC identity (the release workflow's), logged in Rekor")
	fl.StringVar(&f.fulcioURL, "fulcio-url", "", "with --keyless: the Fulcio URL (default Sigstore's public-good instance)")
	fl.StringVar(&f.rekorURL, "rekor-url", "", "with --keyless: the Rekor URL (default Sigstore's public-good instance)")
	fl.StringVar(&f.out, "out", "", "where to write the signed bundle (default: DIR/"+reference.BundleFileName+")")
	fl.IntSliceVar(&f.vcpus, "vcpus", []int{1, 2, 4, 8}, "vCPU counts to list")
	fl.IntSliceVar(&f.memory, "memory", []int{build.DefaultMemoryMiB}, "guest memory sizes in MiB (sim and tdx values depend on it)")
	fl.BoolVar(&f.noSim, "no-sim", false, "leave out the simulated TEE's values")
	fl.StringVar(&f.snpFirmware, "snp-firmware", "", "OVMF AmdSev build to compute SNP values with")
	fl.StringSliceVar(&f.vcpuTypes, "vcpu-type", []string{"EPYC-v4"}, "snp: QEMU vCPU types")
	fl.StringSliceVar(&f.features, "guest-features", []string{"0x1", "0x21"}, "snp: SEV_FEATURES values")
	fl.StringVar(&f.tdxFirmware, "tdx-firmware", "", "TDVF build to compute TDX values with")
	fl.StringSliceVar(&f.mrtdOrds, "mrtd-order", []string{"single-pass"}, "tdx: single-pass and/or two-pass")
	return cmd
}

func runReferenceCreate(cmd *cobra.Command, g *globals, f *referenceCreateFlags) error {
	if f.guestImage == "" {
		return errors.New("--guest-image is required")
	}
	signer, err := referenceSigner(f)
	if err != nil {
		return err
	}
	o := reference.CreateOptions{GuestImageDir: f.guestImage, ToolVersion: version, VCPUs: f.vcpus, MemoryMiB: f.memory,
		NoSim: f.noSim, SNPFirmware: f.snpFirmware, VCPUTypes: f.vcpuTypes, TDXFirmware: f.tdxFirmware}
	for _, s := range f.features {
		v, err := measure.ParseGuestFeatures(s)
		if err != nil {
			return fmt.Errorf("--guest-features: %w", err)
		}
		o.GuestFeatures = append(o.GuestFeatures, v)
	}
	for _, s := range f.mrtdOrds {
		order, err := parseMRTDOrder(s)
		if err != nil {
			return err
		}
		o.MRTDOrders = append(o.MRTDOrders, order)
	}
	doc, err := reference.Create(cmd.Context(), o)
	if err != nil {
		return err
	}
	bundle, err := reference.Sign(cmd.Context(), signer, doc)
	if err != nil {
		return err
	}
	out := f.out
	if out == "" {
		out = filepath.Join(f.guestImage, reference.BundleFileName)
	}
	if err := reference.WriteFile(out, bundle); err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	stmt, err := doc.Statement()
	if err != nil {
		return err
	}
	fmt.Fprintln(g.stdout, string(stmt))
	g.reporter().Info("wrote the reference values", "count", len(doc.Values), "guest_image", f.guestImage, "bundle", out)
	return nil
}

// referenceSigner is the release's key (--key) or, in the release workflow, a keyless
// signer for the workflow's own OIDC identity (--keyless), which is what `cloche image
// guest --release` then requires of the bundle.
func referenceSigner(f *referenceCreateFlags) (provenance.Signer, error) {
	switch {
	case f.key != "" && f.keyless:
		return nil, errors.New("--key and --keyless: give one")
	case f.keyless:
		a := githubactions.New()
		if os.Getenv("ACTIONS_ID_TOKEN_REQUEST_URL") == "" || os.Getenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN") == "" {
			return nil, errors.New("--keyless needs a GitHub Actions OIDC token: run it in a workflow job with `permissions: id-token: write`")
		}
		s, err := provenance.NewKeylessSigner(provenance.KeylessOptions{FulcioURL: f.fulcioURL, RekorURL: f.rekorURL,
			Token: func(ctx context.Context, audience string) (string, error) { return a.GetIDToken(ctx, audience) }})
		if err != nil {
			return nil, fmt.Errorf("--keyless: %w", err)
		}
		return s, nil
	case f.key == "":
		return nil, errors.New("--key or --keyless is required: the reference values are signed by the guest image's release")
	}
	s, err := provenance.LoadKeySigner(f.key)
	if err != nil {
		return nil, fmt.Errorf("--key: %w", err)
	}
	return s, nil
}

// referenceVerifyFlags are `cloche verify`'s reference-values flags.
type referenceVerifyFlags struct {
	values, key, guestImage, firmware, vcpuType string
	snpFirmware, tdxFirmware                    string
	features                                    []string
}

func (r *referenceVerifyFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&r.values, "reference-values", "", "signed reference values `FILE` (from 'cloche reference create'): the measurement must be listed for the evidence's TEE and vCPU count")
	fl.StringVar(&r.key, "reference-key", "", "public key (PEM) the reference values are signed with")
	fl.StringVar(&r.guestImage, "guest-image", "", "guest image directory: compute the reference values from its files instead")
	fl.StringVar(&r.snpFirmware, "snp-firmware", "", "with --guest-image, snp: the OVMF AmdSev build the guest was launched with")
	fl.StringVar(&r.tdxFirmware, "tdx-firmware", "", "with --guest-image, tdx: the TDVF the guest was launched with")
	fl.StringVar(&r.firmware, "guest-firmware", "", "with --guest-image: the firmware the guest was launched with")
	fl.MarkDeprecated("guest-firmware", "use --snp-firmware or --tdx-firmware")
	fl.StringVar(&r.vcpuType, "vcpu-type", "", "with --guest-image, snp: the QEMU vCPU type (default EPYC-v4)")
	fl.StringSliceVar(&r.features, "guest-features", nil, "with --guest-image, snp: SEV_FEATURES values to accept (default 0x1,0x21)")
}

func (r *referenceVerifyFlags) apply(o *verify.Options) error {
	if r.snpFirmware != "" && r.tdxFirmware != "" {
		return errors.New("--snp-firmware and --tdx-firmware: give the firmware of the TEE the bundle's evidence comes from")
	}
	firmware := cmp.Or(cmp.Or(r.snpFirmware, r.tdxFirmware), r.firmware)
	ro := verify.ReferenceOptions{BundlePath: r.values, GuestImageDir: r.guestImage, Firmware: firmware, VCPUType: r.vcpuType}
	if r.key != "" {
		k, err := provenance.LoadPublicKey(r.key)
		if err != nil {
			return fmt.Errorf("--reference-key: %w", err)
		}
		ro.Key = k
	}
	for _, s := range r.features {
		v, err := measure.ParseGuestFeatures(s)
		if err != nil {
			return fmt.Errorf("--guest-features: %w", err)
		}
		ro.GuestFeatures = append(ro.GuestFeatures, v)
	}
	if ro.VCPUType != "" {
		if _, err := measure.VCPUSignature(ro.VCPUType); err != nil {
			return fmt.Errorf("--vcpu-type: %w", err)
		}
	}
	if err := ro.Check(); err != nil {
		return errors.New(flagWords(err.Error()))
	}
	o.Reference = ro
	return nil
}
