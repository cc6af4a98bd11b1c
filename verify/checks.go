package verify

import (
	"errors"
	"fmt"
)

// Check names, used in FAILED lines and in `cloche verify --json`. They are stable: scripts
// match on them. docs/design.md ("Check names") says what each one means; CheckNames lists
// them in order.
const (
	CheckOptions  = "options"
	CheckArtifact = "artifact"
	// CheckBundle: the bundle file cannot be read or is not a cloche bundle;
	// CheckBundleMaterial: it carries verification material nothing here checks.
	CheckBundle         = "bundle"
	CheckBundleMaterial = "bundle.material"
	CheckSignature      = "signature"
	CheckIdentity       = "signer.identity"
	CheckStatement      = "statement.parse"
	CheckSubject        = "subject"
	// CheckChecksums: a file a checksums file (itself a subject) lists is missing or
	// differs.
	CheckChecksums = "checksums"
	CheckManifest  = "manifest.parse"
	CheckResult    = "result.parse"
	// Evidence checks, one per attest sentinel (EvidenceCheck).
	CheckEvidenceParse     = "evidence.parse"
	CheckSimulated         = "evidence.simulated"
	CheckChain             = "evidence.chain"
	CheckEvidenceSignature = "evidence.signature"
	CheckPolicy            = "evidence.policy"
	CheckFirmware          = "evidence.firmware"
	CheckChipID            = "evidence.chip-id"
	CheckTCB               = "evidence.tcb"
	CheckRevocation        = "evidence.revocation"
	CheckCollateral        = "evidence.collateral"
	CheckQEIdentity        = "evidence.qe-identity"
	CheckUnsupported       = "evidence.unsupported"
	CheckPlatform          = "evidence.platform"
	CheckEvidenceTEE       = "evidence.tee"
	CheckMeasurement       = "measurement"
	CheckReference         = "reference-values"
	CheckHostData          = "binding.host-data"
	CheckReportData        = "binding.report-data"
	CheckResultManifest    = "result.manifest"
	CheckResultStatus      = "result.status"

	// CheckEventLog: the TDX event log is missing or does not replay to the quote's RTMR0.
	// CheckRTMR0: TDX RTMR0 (the TD HOB, the UEFI variables and the host's ACPI tables) is
	// not pinned, or differs from the pin, or its events from the pinned events.
	CheckEventLog = "evidence.event-log"
	CheckRTMR0    = "measurement.rtmr0"

	// Statement fields: CheckConsistency compares with the manifest and result record,
	// CheckGuestImage the guest-image dependency with the reference value that matched,
	// CheckTime the build times.
	CheckConsistency = "statement.fields"
	CheckGuestImage  = "statement.guest-image"
	// CheckGuestRelease: the guest image release the statement names differs from the
	// release whose reference values list the measurement.
	CheckGuestRelease = "statement.guest-release"
	CheckTime         = "statement.time"
	// Expectations and pins. CheckExpectSource and CheckExpectToolchain fail before anything
	// is read when the options name no expectation for the source or the toolchain.
	CheckExpectSource     = "expect.source"
	CheckExpectToolchain  = "expect.toolchain"
	CheckSourceTree       = "source.tree"
	CheckSourceCommit     = "source.commit"
	CheckSourceRepository = "source.repository"
	CheckSourceRef        = "source.ref"
	CheckSourceTag        = "source.tag"
	CheckBuilderID        = "builder.id"
	CheckPinToolchain     = "pin.toolchain"
	CheckPinCommand       = "pin.command"
	CheckPinEnv           = "pin.env"
	CheckPinACPI          = "pin.acpi-tables"
)

// CheckNames lists every check name in the order Verify runs them.
var CheckNames = []string{
	CheckOptions, CheckExpectSource, CheckExpectToolchain, CheckArtifact, CheckBundle, CheckBundleMaterial, CheckSignature, CheckIdentity,
	CheckStatement, CheckSubject, CheckChecksums, CheckManifest, CheckResult, CheckEvidenceParse, CheckSimulated,
	CheckChain, CheckEvidenceSignature, CheckPolicy, CheckFirmware, CheckChipID, CheckTCB,
	CheckRevocation, CheckCollateral, CheckQEIdentity, CheckUnsupported, CheckPlatform, CheckMeasurement,
	CheckHostData, CheckReportData, CheckEventLog, CheckEvidenceTEE, CheckResultManifest, CheckResultStatus,
	CheckConsistency, CheckTime, CheckReference, CheckRTMR0, CheckGuestImage, CheckGuestRelease, CheckSourceTree,
	CheckSourceCommit, CheckSourceTag, CheckSourceRepository, CheckSourceRef, CheckBuilderID,
	CheckPinToolchain, CheckPinCommand, CheckPinEnv, CheckPinACPI,
}

// Outcome is what became of one check.
type Outcome string

// Outcomes. A verification passes when no check failed; a warning is a check that passed
// with a limitation the caller must show; skipped means not asked for (an expectation
// that was not given).
const (
	Passed  Outcome = "passed"
	Failed  Outcome = "failed"
	Warning Outcome = "warning"
	Skipped Outcome = "skipped"
)

// CheckOutcome is one entry of Result.Checks.
type CheckOutcome struct {
	Name    string  `json:"name"`
	Outcome Outcome `json:"outcome"`
	Detail  string  `json:"detail,omitempty"`
}

// Error is a failed check: Check names it, Err says why.
type Error struct {
	Check string
	Err   error
}

func (e *Error) Error() string { return e.Check + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

func fail(check string, err error) error { return &Error{Check: check, Err: err} }

// record appends a check outcome to the result.
func (r *Result) record(name string, o Outcome, format string, a ...any) {
	r.Checks = append(r.Checks, CheckOutcome{Name: name, Outcome: o, Detail: fmt.Sprintf(format, a...)})
}

// failed records err (a *Error, or anything else under check) and returns it.
func (r *Result) failed(check string, err error) error {
	var ve *Error
	if !errors.As(err, &ve) {
		ve = &Error{Check: check, Err: err}
	}
	r.Checks = append(r.Checks, CheckOutcome{Name: ve.Check, Outcome: Failed, Detail: ve.Err.Error()})
	return ve
}
