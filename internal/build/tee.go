package build

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/kds"
	"github.com/cloche-dev/cloche/attest/verifier"
	"github.com/cloche-dev/cloche/internal/attest/simsp"
	"github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/internal/vmm"
	"github.com/cloche-dev/cloche/measure"
)

// hostTEE is the host's part of one TEE kind in a build: what the launch needs, how the
// guest's evidence is completed, and what the host checks before it signs.
//
//   - sim: the host plays the secure processor (SimSP): it measures the launch inputs,
//     answers the guest over the sim channel, and attaches its own chain.
//   - snp: QEMU binds the manifest digest as HOST_DATA; the VCEK (or VLEK) chain comes from
//     the report's certificate table, a chain file, the KDS cache or AMD's KDS.
//   - tdx: QEMU binds the manifest digest as MRCONFIGID; the quote from the host's quote
//     generation service already carries the PCK chain, so nothing is added here (Intel's
//     collateral is a verifier-side option).
type hostTEE struct {
	tee    attest.TEE
	sp     *simsp.SP
	launch simsp.Launch
	kds    *kds.Client
}

func newHostTEE(o *Options) (*hostTEE, error) {
	h := &hostTEE{tee: o.TEE, kds: o.KDS}
	switch o.TEE {
	case attest.TEESim:
		sp, err := simsp.LoadOrCreate(o.SimDir)
		if err != nil {
			return nil, fmt.Errorf("simulated TEE: %w", err)
		}
		h.sp = sp
	case attest.TEESNP:
		if h.kds == nil {
			h.kds = kds.New(kds.Options{Log: o.Logger})
		}
	}
	return h, nil
}

// simLaunchInputs are what the simulated secure processor measures when gimg is launched
// with vcpus and memoryMiB: the same as measure.LaunchInputsFromFiles of its kernel and
// initrd, from the digests guestimage.Load checked instead of a second read.
func simLaunchInputs(gimg *guestimage.Image, vcpus, memoryMiB int) (measure.LaunchInputs, error) {
	in := measure.LaunchInputs{Cmdline: gimg.Cmdline, VCPUs: uint32(vcpus), MemoryMiB: uint64(memoryMiB)}
	if vcpus <= 0 || memoryMiB <= 0 {
		return in, fmt.Errorf("launch inputs: vcpus (%d) and memory (%d MiB) must be positive", vcpus, memoryMiB)
	}
	var err error
	in.KernelSHA256, in.InitrdSHA256, err = gimg.BootDigests()
	return in, err
}

// configure adds the TEE's part to the VM configuration: the launch-bound manifest digest
// and, for sim, the simulated secure processor measuring the launch inputs the same way
// `cloche measure --tee sim` does (from the digests guestimage.Load checked, not a
// second read of the kernel and initrd).
func (h *hostTEE) configure(cfg *vmm.Config, o *Options, gimg *guestimage.Image, manifestDigest [32]byte) error {
	switch h.tee {
	case attest.TEESim:
		li, err := simLaunchInputs(gimg, o.VCPUs, o.MemoryMiB)
		if err != nil {
			return fmt.Errorf("measuring launch inputs: %w", err)
		}
		h.launch = simsp.Launch{Measurement: measure.SimMeasurement(li), HostData: manifestDigest}
		o.Logger.Info("simulated launch", "measurement", hex.EncodeToString(h.launch.Measurement[:]))
		cfg.SimService = func(ctx context.Context, conn io.ReadWriter) error {
			return h.sp.Serve(ctx, conn, h.launch)
		}
	case attest.TEESNP, attest.TEETDX:
		cfg.LaunchDigest = manifestDigest
		cfg.Firmware = o.Firmware
		cfg.TDX.QGS = o.QGS
	}
	return nil
}

// complete adds the certificates a verifier needs offline.
func (h *hostTEE) complete(ctx context.Context, ev *attest.Evidence) error {
	if ev.TEE != h.tee {
		return fmt.Errorf("the guest returned %q evidence from a %q launch", ev.TEE, h.tee)
	}
	switch h.tee {
	case attest.TEESim:
		return h.sp.Complete(ev)
	case attest.TEESNP:
		return h.kds.Complete(ctx, ev)
	}
	return nil
}

// verifyOptions are the host's own check of the evidence before it signs: the bindings,
// and for sim the simulated root and the measurement it computed. Hardware measurements are
// checked by the verifier against its reference values (the host cannot vouch for them).
func (h *hostTEE) verifyOptions(manifestDigest [32]byte, reportData [64]byte) (verifier.Options, error) {
	opts := verifier.Options{ExpectedHostData: manifestDigest[:], ExpectedReportData: reportData[:]}
	if h.tee == attest.TEESim {
		root, err := x509.ParseCertificate(h.sp.Chain().ARK)
		if err != nil {
			return opts, fmt.Errorf("simulated root: %w", err)
		}
		opts.AllowSimulated = true
		opts.SimRoots = []*x509.Certificate{root}
		opts.ExpectedMeasurements = [][]byte{h.launch.Measurement[:]}
	}
	return opts, nil
}

// simRootPath is the simulated root's file for --trusted-sim-root, empty for hardware.
func (h *hostTEE) simRootPath() string {
	if h.sp == nil {
		return ""
	}
	return h.sp.RootPath()
}
