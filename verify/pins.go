package verify

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/cloche-dev/cloche/job"
)

// Pins are expectations on what the host chose for the build. The manifest the hardware
// binds says faithfully what the host chose; only a pin makes it a requirement.
type Pins struct {
	// ToolchainDigest is the toolchain image's dm-verity root hash (64 lowercase hex
	// digits).
	ToolchainDigest string
	// ACPITables is the digest of the ACPI tables the guest was given (the result record's
	// acpiTablesSha256, which the guest computed): on SEV-SNP nothing else binds them.
	ACPITables string
	// RTMR0Events are the SHA-384 digests (96 lowercase hex digits each) of every TDX event
	// log event that extends RTMR0, in log order: the TD HOB, the UEFI variables, the ACPI
	// tables QEMU generated ("ACPI DATA" events) and the boot variables, as a known-good
	// launch of the same shape logged them. nil means not pinned.
	RTMR0Events []string
	// Command is the exact argv; nil means not pinned.
	Command []string
	// Env maps variables to their required values; EnvExact also refuses variables the
	// map does not name.
	Env      map[string]string
	EnvExact bool
}

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

func (p *Pins) check() error {
	if p.ToolchainDigest != "" && !hex64.MatchString(p.ToolchainDigest) {
		return fmt.Errorf("Pins.ToolchainDigest %q: expected 64 lowercase hex digits (the toolchain's dm-verity root hash)", p.ToolchainDigest)
	}
	if p.ACPITables != "" && !hex64.MatchString(p.ACPITables) {
		return fmt.Errorf("Pins.ACPITables %q: expected 64 lowercase hex digits (a result record's acpiTablesSha256)", p.ACPITables)
	}
	if p.Command != nil && len(p.Command) == 0 {
		return errors.New("Pins.Command is empty: pin at least the program")
	}
	if p.EnvExact && p.Env == nil {
		return errors.New("Pins.EnvExact needs Pins.Env (an empty map pins an empty environment)")
	}
	return nil
}

// apply compares the pins with the attested manifest and records what was pinned and
// what was only reported.
func (p *Pins) apply(res *Result, m *job.Manifest, r *job.Result) error {
	if p.ACPITables != "" {
		if p.ACPITables != r.ACPITablesSHA256 {
			return fail(CheckPinACPI, fmt.Errorf("the guest was given ACPI tables with digest %q, expected %s", r.ACPITablesSHA256, p.ACPITables))
		}
		res.record(CheckPinACPI, Passed, "%s", p.ACPITables)
		res.Pinned = append(res.Pinned, "acpi-tables")
	} else if r.ACPITablesSHA256 != "" {
		res.Reported = append(res.Reported, "acpi-tables")
	}
	// Only the verity root hash pins the toolchain: the guest mounts the image through
	// dm-verity with the manifest's root hash, so that is what bounds the bytes it ran.
	// The image's SHA-256 is a claim the host wrote beside it, which nothing in the guest
	// checks.
	if p.ToolchainDigest != "" {
		if p.ToolchainDigest != m.Toolchain.VerityRootHash {
			hint := ""
			if p.ToolchainDigest == m.Toolchain.ImageSHA256 {
				hint = " (that is the image SHA-256 the host claims, which the guest does not check; pin the verity root hash)"
			}
			return fail(CheckPinToolchain, fmt.Errorf("the attested toolchain %q has verity root %s, expected %s%s",
				m.Toolchain.Name, m.Toolchain.VerityRootHash, p.ToolchainDigest, hint))
		}
		res.record(CheckPinToolchain, Passed, "%s", p.ToolchainDigest)
		res.Pinned = append(res.Pinned, "toolchain")
	} else {
		res.Reported = append(res.Reported, "toolchain")
	}
	if p.Command != nil {
		if strings.Join(p.Command, "\x00") != strings.Join(m.Command, "\x00") || len(p.Command) != len(m.Command) {
			return fail(CheckPinCommand, fmt.Errorf("the attested command is %q, expected %q", m.Command, p.Command))
		}
		res.record(CheckPinCommand, Passed, "%q", m.Command)
		res.Pinned = append(res.Pinned, "command")
	} else {
		res.Reported = append(res.Reported, "command")
	}
	// Limits other than the defaults can change what a build produces; no pin yet.
	if m.Rlimits != (job.Rlimits{}) {
		res.Reported = append(res.Reported, "rlimits")
	}
	if p.Env != nil {
		if err := checkEnv(p, m.Env); err != nil {
			return err
		}
		res.record(CheckPinEnv, Passed, "%d variable(s)", len(p.Env))
		res.Pinned = append(res.Pinned, "env")
	} else {
		res.Reported = append(res.Reported, "env")
	}
	return nil
}

func checkEnv(p *Pins, env map[string]string) error {
	keys := make([]string, 0, len(p.Env))
	for k := range p.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		got, ok := env[k]
		if !ok {
			return fail(CheckPinEnv, fmt.Errorf("the attested environment has no %s, expected %s=%q", k, k, p.Env[k]))
		}
		if got != p.Env[k] {
			return fail(CheckPinEnv, fmt.Errorf("the attested environment has %s=%q, expected %q", k, got, p.Env[k]))
		}
	}
	if p.EnvExact {
		extra := []string{}
		for k := range env {
			if _, ok := p.Env[k]; !ok {
				extra = append(extra, k)
			}
		}
		sort.Strings(extra)
		if len(extra) > 0 {
			return fail(CheckPinEnv, fmt.Errorf("the attested environment sets %s, which the pinned environment does not name", strings.Join(extra, ", ")))
		}
	}
	return nil
}
