package build

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/kds"
	"github.com/cloche-dev/cloche/internal/vmm"
	"github.com/cloche-dev/cloche/job"
)

func TestOptionsCheckTEE(t *testing.T) {
	src := t.TempDir()
	base := Options{Spec: job.Spec{Command: []string{"true"}}, SourceDir: src, OutDir: filepath.Join(t.TempDir(), "out"),
		Signer: nil, Version: "test"}
	for _, tc := range []struct {
		name   string
		modify func(*Options)
		want   string
	}{
		{"snp without firmware", func(o *Options) { o.TEE = attest.TEESNP }, "snp build needs the firmware image"},
		{"tdx without firmware", func(o *Options) { o.TEE = attest.TEETDX }, "tdx build needs the firmware image"},
		{"sim without state", func(o *Options) { o.TEE = attest.TEESim }, "simulated-TEE state directory"},
		{"unknown tee", func(o *Options) { o.TEE = "sgx" }, `TEE "sgx", expected sim, snp or tdx`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			tc.modify(&o)
			o.setDefaults()
			o.Signer = nopSigner{}
			err := o.check()
			if !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("check = %v, want ErrInput mentioning %q", err, tc.want)
			}
		})
	}
}

// TestHardwareTEEBuildFailsFastWithoutHardware runs the whole host side of an SNP and a TDX
// build on this host (no such hardware): it must stop at the launch with the missing piece
// named, publish nothing, and never wait for a VM.
func TestHardwareTEEBuildFailsFastWithoutHardware(t *testing.T) {
	if _, err := os.Stat("/dev/sev"); err == nil {
		t.Skip("this host has /dev/sev")
	}
	e := newEnv(t)
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "a.txt"), []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	fw := filepath.Join(t.TempDir(), "fw.fd")
	if err := os.WriteFile(fw, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		tee  attest.TEE
		want string
	}{
		{attest.TEESNP, "kvm_amd"},
		{attest.TEETDX, "kvm_intel"},
	} {
		t.Run(string(tc.tee), func(t *testing.T) {
			o := e.options(t, src, "true")
			o.TEE, o.Firmware, o.Accel, o.SimDir = tc.tee, fw, "auto", ""
			o.KDS = kds.New(kds.Options{Offline: true})
			_, err := Run(context.Background(), o)
			if !errors.Is(err, ErrGuest) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "TEE not available") {
				t.Fatalf("Run = %v, want ErrGuest naming %s", err, tc.want)
			}
			if _, err := os.Stat(filepath.Join(o.OutDir, BundleName)); err == nil {
				t.Error("a bundle was published")
			}
		})
	}
}

func TestHostTEEForHardware(t *testing.T) {
	for _, tee := range []attest.TEE{attest.TEESNP, attest.TEETDX} {
		o := &Options{Spec: job.Spec{TEE: tee}, Firmware: "/fw", QGS: "vsock:2:4050"}
		o.setDefaults()
		h, err := newHostTEE(o)
		if err != nil {
			t.Fatal(err)
		}
		if tee == attest.TEESNP && h.kds == nil {
			t.Error("snp without a KDS client")
		}
		digest := [32]byte{1, 2, 3}
		cfg := vmmConfigFor(t, h, o, digest)
		if cfg.LaunchDigest != digest || cfg.Firmware != "/fw" || cfg.TDX.QGS != "vsock:2:4050" || cfg.SimService != nil {
			t.Errorf("%s: VM config %+v", tee, cfg)
		}
		rd := [64]byte{9}
		opts, err := h.verifyOptions(digest, rd)
		if err != nil {
			t.Fatal(err)
		}
		if opts.AllowSimulated || len(opts.SimRoots) != 0 || !bytes.Equal(opts.ExpectedHostData, digest[:]) || !bytes.Equal(opts.ExpectedReportData, rd[:]) {
			t.Errorf("%s: host verify options %+v", tee, opts)
		}
		if h.simRootPath() != "" {
			t.Errorf("%s: a simulated root path for a hardware build", tee)
		}
		// Evidence of another kind than the launch is refused before anything else.
		if err := h.complete(context.Background(), &attest.Evidence{TEE: attest.TEESim}); err == nil || !strings.Contains(err.Error(), "launch") {
			t.Errorf("%s: complete(sim evidence) = %v", tee, err)
		}
	}
	// TDX evidence needs nothing from the host: complete leaves it as it was.
	h, _ := newHostTEE(&Options{Spec: job.Spec{TEE: attest.TEETDX}})
	ev := &attest.Evidence{TEE: attest.TEETDX, Report: []byte("quote")}
	if err := h.complete(context.Background(), ev); err != nil || ev.Certs != nil {
		t.Errorf("tdx complete = %v, certs %+v", err, ev.Certs)
	}
	// SNP evidence goes through KDS completion, which refuses a malformed report.
	h, _ = newHostTEE(&Options{Spec: job.Spec{TEE: attest.TEESNP}, KDS: kds.New(kds.Options{Offline: true})})
	if err := h.complete(context.Background(), &attest.Evidence{TEE: attest.TEESNP, Report: make([]byte, 10)}); !errors.Is(err, attest.ErrMalformed) {
		t.Errorf("snp complete of a truncated report = %v", err)
	}
}

// nopSigner satisfies Options.check; these tests never reach signing.
type nopSigner struct{}

func (nopSigner) SignStatement(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("nopSigner does not sign")
}

func vmmConfigFor(t *testing.T, h *hostTEE, o *Options, digest [32]byte) vmm.Config {
	t.Helper()
	var cfg vmm.Config
	if err := h.configure(&cfg, o, nil, digest); err != nil {
		t.Fatal(err)
	}
	return cfg
}
