package build

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/cloche-dev/cloche/internal/vmm"
	"github.com/cloche-dev/cloche/job"
)

// Defaults and limits of a build's inputs, declared once: `cloche run`, the agent's
// configuration and its job checks use these.
const (
	DefaultVCPUs          = vmm.DefaultVCPUs
	MinVCPUs              = 1
	MaxVCPUs              = vmm.MaxVCPUs
	DefaultMemoryMiB      = vmm.DefaultMemoryMiB
	MinMemoryMiB          = vmm.MinMemoryMiB
	MaxMemoryMiB          = vmm.MaxMemoryMiB
	DefaultTimeout        = 10 * time.Minute
	MinTimeout            = time.Second
	DefaultMaxOutputBytes = 256 << 20
)

// InputError is a build input outside what a build accepts. Field is the Options field;
// callers that take the input under another name (a CLI flag, a JSON field) map it.
type InputError struct {
	Field string
	Value string // the value as given, formatted for a message
	Err   error  // what was expected
}

func (e *InputError) Error() string {
	return fmt.Sprintf("build input %s %s: %v", e.Field, e.Value, e.Err)
}

// Unwrap gives both ErrInput and the reason.
func (e *InputError) Unwrap() []error { return []error{ErrInput, e.Err} }

func inputErr(field, value string, format string, args ...any) error {
	return &InputError{Field: field, Value: value, Err: fmt.Errorf(format, args...)}
}

// CheckVCPUs checks a vCPU count against MinVCPUs..MaxVCPUs.
func CheckVCPUs(n int) error {
	if n < MinVCPUs || n > MaxVCPUs {
		return inputErr("VCPUs", fmt.Sprint(n), "expected %d..%d vCPUs", MinVCPUs, MaxVCPUs)
	}
	return nil
}

// CheckMemoryMiB checks a guest memory size against MinMemoryMiB..MaxMemoryMiB.
func CheckMemoryMiB(n int) error {
	if n < MinMemoryMiB || n > MaxMemoryMiB {
		return inputErr("MemoryMiB", fmt.Sprint(n), "expected %d..%d MiB", MinMemoryMiB, MaxMemoryMiB)
	}
	return nil
}

// CheckInput checks the inputs a caller chose, in the order a user reads them, before any
// expensive step (no image is built, no VM started; it returns within milliseconds). It
// returns an *InputError naming the field.
//
// Unlike Run, it takes zero as a value, not as "the default": call it on options whose
// defaults are filled in, so a user's explicit 0 is refused rather than replaced. The TEE
// is not checked here: callers resolve it (which probes the host) after this.
func (o *Options) CheckInput() error {
	for _, check := range []func() error{
		o.checkSource, o.checkOutDir, o.checkCommand, o.checkWorkdir, o.checkEnv, o.checkArtifacts,
		func() error { return CheckVCPUs(o.VCPUs) },
		func() error { return CheckMemoryMiB(o.MemoryMiB) },
		o.checkTimeout, o.checkMaxOutput, o.checkRlimits, o.checkAccel, o.checkDeps,
	} {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

func (o *Options) checkSource() error {
	st, err := os.Stat(o.SourceDir)
	switch {
	case o.SourceDir == "":
		return inputErr("SourceDir", `""`, "expected the source directory")
	case err != nil:
		return inputErr("SourceDir", fmt.Sprintf("%q", o.SourceDir), "expected an existing directory: %w", err)
	case !st.IsDir():
		return inputErr("SourceDir", fmt.Sprintf("%q", o.SourceDir), "is a file, expected a directory")
	}
	return nil
}

// checkOutDir accepts an existing writable directory, or a path whose nearest existing
// ancestor is a writable directory (Run creates the rest). Writability is tried, not read
// from permission bits: a read-only file system or an immutable directory refuses root too.
func (o *Options) checkOutDir() error {
	value := fmt.Sprintf("%q", o.OutDir)
	if o.OutDir == "" {
		return inputErr("OutDir", `""`, "expected the output directory")
	}
	dir := filepath.Clean(o.OutDir)
	for {
		st, err := os.Stat(dir)
		if err == nil {
			if !st.IsDir() {
				if dir == filepath.Clean(o.OutDir) {
					return inputErr("OutDir", value, "is a file, expected a directory (existing or to be created)")
				}
				return inputErr("OutDir", value, "%s is a file, expected a directory", dir)
			}
			break
		}
		if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
			return inputErr("OutDir", value, "expected a directory: %w", err)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	probe, err := os.CreateTemp(dir, ".cloche-write-test-")
	if err != nil {
		return inputErr("OutDir", value, "expected a writable directory: %s: %w", dir, errors.Unwrap(err))
	}
	probe.Close()
	os.Remove(probe.Name())
	return nil
}

func (o *Options) checkCommand() error {
	if err := job.CheckCommand(o.Command); err != nil {
		return inputErr("Command", fmt.Sprintf("%q", o.Command), "%w", err)
	}
	return nil
}

func (o *Options) checkWorkdir() error {
	if err := job.CheckWorkdir(o.Workdir); err != nil {
		return inputErr("Workdir", fmt.Sprintf("%q", o.Workdir), "%w", err)
	}
	return nil
}

func (o *Options) checkEnv() error {
	if len(o.Env) > job.MaxEnvEntries {
		return inputErr("Env", fmt.Sprintf("(%d entries)", len(o.Env)), "expected at most %d entries", job.MaxEnvEntries)
	}
	names := make([]string, 0, len(o.Env))
	for k := range o.Env {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if err := job.CheckEnv(k, o.Env[k]); err != nil {
			return inputErr("Env", fmt.Sprintf("%q", k+"="+o.Env[k]), "%w", err)
		}
	}
	return nil
}

func (o *Options) checkArtifacts() error {
	if len(o.Artifacts) > job.MaxArtifacts {
		return inputErr("Artifacts", fmt.Sprintf("(%d patterns)", len(o.Artifacts)), "expected at most %d patterns", job.MaxArtifacts)
	}
	for _, p := range o.Artifacts {
		if err := job.CheckArtifactPattern(p); err != nil {
			return inputErr("Artifacts", fmt.Sprintf("%q", p), "%w", err)
		}
	}
	return nil
}

func (o *Options) checkTimeout() error {
	if o.Timeout() < MinTimeout {
		return inputErr("TimeoutSeconds", o.Timeout().String(), "expected a duration of at least %s, such as 10m", MinTimeout)
	}
	return nil
}

func (o *Options) checkMaxOutput() error {
	if o.MaxOutputBytes < 1 {
		return inputErr("MaxOutputBytes", fmt.Sprint(o.MaxOutputBytes), "expected a positive number of bytes")
	}
	return nil
}

func (o *Options) checkRlimits() error {
	field, value, err := o.Rlimits.Check()
	if err == nil {
		return nil
	}
	name := map[string]string{"processes": "Rlimits.Processes", "openFiles": "Rlimits.OpenFiles"}[field]
	return inputErr(name, fmt.Sprint(value), "%w", err)
}

func (o *Options) checkAccel() error {
	switch o.Accel {
	case vmm.AccelAuto, vmm.AccelKVM, vmm.AccelTCG:
		return nil
	}
	return inputErr("Accel", fmt.Sprintf("%q", o.Accel), "expected auto, kvm or tcg")
}
