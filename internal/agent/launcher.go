package agent

import (
	"context"
	"io"
	"log/slog"

	"github.com/cloche-dev/cloche/internal/build"
	"github.com/cloche-dev/cloche/internal/host"
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
	// Console receives the guest console (the job's live log).
	Console io.Writer
	Logger  *slog.Logger
	// Stage reports progress: build.StageVM moves the job to running, build.StageCollect
	// to collecting.
	Stage func(build.Stage)
}

// HostLauncher runs jobs on this host as the host is configured (host.New): its guest
// image, toolchain, signer and TEE set-up, the same as `cloche run` and the action use.
type HostLauncher struct {
	Host *host.Host
}

// Launch implements Launcher.
func (l HostLauncher) Launch(ctx context.Context, req LaunchRequest) (*build.Outcome, error) {
	return l.Host.Run(ctx, host.Job{
		Spec:      req.Spec.Spec,
		SourceDir: req.SourceDir,
		OutDir:    req.OutDir,
		WorkDir:   req.WorkDir,
		Console:   req.Console,
		OnStage:   req.Stage,
		Logger:    req.Logger,
		Unsigned:  req.Spec.Signing == SigningClient,
	})
}
