package runner

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/kds"
	"github.com/cloche-dev/cloche/build"
	"github.com/cloche-dev/cloche/provenance"
)

// Launcher runs one job's build. The agent reserves the budget, prepares the directories
// and calls Launch on a goroutine of its own; ctx ends when the job is cancelled or reaches
// its wall-clock limit, and Launch must then stop the VM and return promptly.
type Launcher interface {
	Launch(ctx context.Context, req LaunchRequest) (*build.Outcome, error)
}

// LaunchRequest is one job as the launcher sees it.
type LaunchRequest struct {
	JobID string
	Spec  JobSpec // defaults already applied (TEE, timeout, vCPUs, memory, output cap)
	// SourceDir holds the unpacked source (checked against Spec.Source); OutDir is empty
	// and receives the artifacts and the bundle; WorkDir holds the disks while the VM runs.
	SourceDir, OutDir, WorkDir string
	Timeout                    time.Duration
	// Console receives the guest console (the job's live log).
	Console io.Writer
	Logger  *slog.Logger
	// Stage reports progress: build.StageVM moves the job to running, build.StageCollect
	// to collecting.
	Stage func(build.Stage)
}

// BuildLauncher runs jobs with build.Run on this host, with the agent's own guest image,
// toolchain, signer and simulated TEE state.
type BuildLauncher struct {
	GuestImageDir  string
	ToolchainImage string
	SimDir         string
	Signer         provenance.Signer
	Accel, QEMU    string
	Version        string
	// SNPFirmware and TDXFirmware are the -bios images for hardware jobs; QGS the TDX quote
	// generation service; KDS completes SNP evidence with the VCEK chain.
	SNPFirmware, TDXFirmware string
	QGS                      string
	KDS                      *kds.Client
}

// firmware is the -bios image for a job's TEE ("" for sim).
func (b *BuildLauncher) firmware(tee attest.TEE) string {
	switch tee {
	case attest.TEESNP:
		return b.SNPFirmware
	case attest.TEETDX:
		return b.TDXFirmware
	}
	return ""
}

// Launch implements Launcher.
func (b *BuildLauncher) Launch(ctx context.Context, req LaunchRequest) (*build.Outcome, error) {
	s := req.Spec
	return build.Run(ctx, build.Options{
		SourceDir:       req.SourceDir,
		Command:         s.Command,
		Workdir:         s.Workdir,
		Env:             s.Env,
		Artifacts:       s.Artifacts,
		OutDir:          req.OutDir,
		TEE:             attest.TEE(s.TEE),
		GuestImageDir:   b.GuestImageDir,
		ToolchainImage:  b.ToolchainImage,
		SimDir:          b.SimDir,
		Signer:          b.Signer,
		Firmware:        b.firmware(attest.TEE(s.TEE)),
		QGS:             b.QGS,
		KDS:             b.KDS,
		Timeout:         req.Timeout,
		MaxOutputBytes:  s.MaxOutputBytes,
		VCPUs:           s.VCPUs,
		MemoryMiB:       s.MemoryMiB,
		Accel:           b.Accel,
		QEMU:            b.QEMU,
		SourceDateEpoch: s.SourceDateEpoch,
		InvocationID:    s.InvocationID,
		Repository:      s.Repository,
		Ref:             s.Ref,
		Git:             s.Git,
		Console:         req.Console,
		Logger:          req.Logger,
		Version:         b.Version,
		WorkDir:         req.WorkDir,
		OnStage:         req.Stage,
	})
}
