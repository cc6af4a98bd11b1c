package reference

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/atomicfile"
	"github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/internal/vmm"
	"github.com/cloche-dev/cloche/measure"
	"github.com/cloche-dev/cloche/provenance"
)

// CreateOptions say which configurations to compute values for.
type CreateOptions struct {
	GuestImageDir string
	ToolVersion   string
	// VCPUs lists the vCPU counts; default 1, 2, 4, 8.
	VCPUs []int
	// MemoryMiB lists the memory sizes for sim and tdx values; default vmm.DefaultMemoryMiB.
	MemoryMiB []int
	// NoSim leaves out the simulated TEE's values.
	NoSim bool
	// SNPFirmware, when set, adds SNP values for each of VCPUTypes (default EPYC-v4) and
	// GuestFeatures (default 0x1 and 0x21).
	SNPFirmware   string
	VCPUTypes     []string
	GuestFeatures []uint64
	// TDXFirmware, when set, adds TDX values for each of MRTDOrders (default single-pass).
	TDXFirmware string
	MRTDOrders  []measure.PageAddOrder
}

func (o *CreateOptions) defaults() {
	if len(o.VCPUs) == 0 {
		o.VCPUs = []int{1, 2, 4, 8}
	}
	if len(o.MemoryMiB) == 0 {
		o.MemoryMiB = []int{vmm.DefaultMemoryMiB}
	}
	if len(o.VCPUTypes) == 0 {
		o.VCPUTypes = []string{"EPYC-v4"}
	}
	if len(o.GuestFeatures) == 0 {
		o.GuestFeatures = []uint64{0x1, 0x21}
	}
	if len(o.MRTDOrders) == 0 {
		o.MRTDOrders = []measure.PageAddOrder{measure.SinglePass}
	}
}

// Create computes the reference values of a guest image.
func Create(ctx context.Context, o CreateOptions) (*Document, error) {
	o.defaults()
	img, err := guestimage.Load(o.GuestImageDir)
	if err != nil {
		return nil, fmt.Errorf("reference values: %w", err)
	}
	d := &Document{
		ToolVersion: o.ToolVersion,
		GuestImage: GuestImage{
			Kernel:        File{Name: img.Kernel.Path, SHA256: img.Kernel.SHA256, Size: img.Kernel.Size},
			Initrd:        File{Name: img.Initrd.Path, SHA256: img.Initrd.SHA256, Size: img.Initrd.Size},
			Cmdline:       img.Cmdline,
			KernelPackage: img.KernelPackage,
			Recipe:        img.Recipe,
		},
	}
	if err := o.checkShapes(); err != nil {
		return nil, err
	}
	for _, values := range []func(context.Context, *guestimage.Image) ([]Value, error){
		o.simValues, o.snpValues, o.tdxValues,
	} {
		v, err := values(ctx, img)
		if err != nil {
			return nil, err
		}
		d.Values = append(d.Values, v...)
	}
	if len(d.Values) == 0 {
		return nil, errors.New("reference values: nothing to compute: give a firmware for snp or tdx, or leave sim on")
	}
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return d, nil
}

// checkShapes refuses vCPU counts and memory sizes no launch has.
func (o *CreateOptions) checkShapes() error {
	for _, n := range o.VCPUs {
		if n < 1 || n > measure.MaxVCPUs {
			return fmt.Errorf("reference values: %d vCPUs, expected 1..%d", n, measure.MaxVCPUs)
		}
	}
	for _, m := range o.MemoryMiB {
		if m < 64 || m > 1<<24 {
			return fmt.Errorf("reference values: memory %d MiB, expected 64..%d", m, 1<<24)
		}
	}
	return nil
}

// simValues are the simulated TEE's values, per vCPU count and memory size, unless NoSim.
func (o *CreateOptions) simValues(_ context.Context, img *guestimage.Image) ([]Value, error) {
	if o.NoSim {
		return nil, nil
	}
	in, err := measure.LaunchInputsFromFiles(img.KernelPath(), img.InitrdPath(), img.Cmdline, 1, 1)
	if err != nil {
		return nil, fmt.Errorf("reference values: sim: %w", err)
	}
	var values []Value
	for _, n := range o.VCPUs {
		for _, mem := range o.MemoryMiB {
			in.VCPUs, in.MemoryMiB = uint32(n), uint64(mem)
			m := measure.SimMeasurement(in)
			values = append(values, Value{TEE: attest.TEESim, VCPUs: n, MemoryMiB: mem, Measurement: hex.EncodeToString(m[:])})
		}
	}
	return values, nil
}

// snpValues are the SNP values under SNPFirmware, if given, per vCPU type, guest features
// and vCPU count.
func (o *CreateOptions) snpValues(ctx context.Context, img *guestimage.Image) ([]Value, error) {
	if o.SNPFirmware == "" {
		return nil, nil
	}
	fw, fwFile, err := readFirmware(o.SNPFirmware)
	if err != nil {
		return nil, fmt.Errorf("reference values: snp: %w", err)
	}
	kh, err := measure.HashBootFiles(img.KernelPath(), img.InitrdPath(), img.Cmdline)
	if err != nil {
		return nil, fmt.Errorf("reference values: snp: %w", err)
	}
	var values []Value
	for _, t := range o.VCPUTypes {
		sig, err := measure.VCPUSignature(t)
		if err != nil {
			return nil, fmt.Errorf("reference values: snp: %w", err)
		}
		for _, feat := range o.GuestFeatures {
			for _, n := range o.VCPUs {
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				ld, err := measure.SNPLaunchDigest(measure.SNPOptions{Firmware: fw, Kernel: &kh, VCPUs: n, VCPUSignature: sig, GuestFeatures: feat, VMM: measure.VMMQEMU})
				if err != nil {
					return nil, fmt.Errorf("reference values: snp: %w", err)
				}
				values = append(values, Value{TEE: attest.TEESNP, VCPUs: n, Firmware: fwFile, VCPUType: t,
					GuestFeatures: fmt.Sprintf("%#x", feat), Measurement: hex.EncodeToString(ld[:])})
			}
		}
	}
	return values, nil
}

// tdxValues are the TDX values under TDXFirmware, if given, per memory size and MRTD
// order, repeated for each vCPU count (the registers do not depend on it).
func (o *CreateOptions) tdxValues(ctx context.Context, img *guestimage.Image) ([]Value, error) {
	if o.TDXFirmware == "" {
		return nil, nil
	}
	fw, fwFile, err := readFirmware(o.TDXFirmware)
	if err != nil {
		return nil, fmt.Errorf("reference values: tdx: %w", err)
	}
	var values []Value
	for _, mem := range o.MemoryMiB {
		boot, err := measure.TDXBootFromFiles(img.KernelPath(), img.InitrdPath(), img.Cmdline, uint64(mem))
		if err != nil {
			return nil, fmt.Errorf("reference values: tdx: %w", err)
		}
		for _, order := range o.MRTDOrders {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			v, err := measure.TDX(fw, boot, order)
			if err != nil {
				return nil, fmt.Errorf("reference values: tdx: %w", err)
			}
			for _, n := range o.VCPUs {
				values = append(values, Value{TEE: attest.TEETDX, VCPUs: n, MemoryMiB: mem, Firmware: fwFile, MRTDOrder: order.String(),
					Measurement: hex.EncodeToString(v.MRTD[:]), RTMR1: hex.EncodeToString(v.RTMR1[:]), RTMR2: hex.EncodeToString(v.RTMR2[:]),
					Assumptions: v.Assumptions})
			}
		}
	}
	return values, nil
}

func readFirmware(path string) ([]byte, *File, error) {
	fw, err := measure.ReadFirmware(path)
	if err != nil {
		return nil, nil, err
	}
	sum := sha256.Sum256(fw)
	return fw, &File{Name: filepath.Base(path), SHA256: hex.EncodeToString(sum[:]), Size: int64(len(fw))}, nil
}

// Sign wraps the document in an in-toto statement and signs it into a Sigstore bundle.
func Sign(ctx context.Context, signer provenance.Signer, d *Document) ([]byte, error) {
	stmt, err := d.Statement()
	if err != nil {
		return nil, err
	}
	b, err := signer.SignStatement(ctx, stmt)
	if err != nil {
		return nil, fmt.Errorf("signing reference values: %w", err)
	}
	return b, nil
}

// WriteFile writes data atomically (internal/atomicfile), readable by all.
func WriteFile(path string, data []byte) error {
	return atomicfile.WriteFile(path, data, 0o644)
}
