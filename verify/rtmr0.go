package verify

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/verifier"
)

// RTMR0Event is one event of the TDX event log that replayed to the quote's RTMR0, as
// --json shows it: the digest (bound by the replay) and the log's label for it (not bound:
// the host can relabel an event without changing RTMR0).
type RTMR0Event struct {
	Digest string `json:"digest"`
	Label  string `json:"label"`
}

// errRTMR0Unpinned says what to pin when nothing binds RTMR0.
var errRTMR0Unpinned = errors.New("TDX RTMR0 is not checked: it measures the TD HOB, the UEFI variables and the ACPI tables the host's VMM wrote, which the guest kernel runs, and no reference value predicts it. " +
	"Pin it (EvidencePolicy.TDX.RTMR[0], or an MRTD||RTMR0||RTMR1||RTMR2 value in ExpectedMeasurements), or pin the digests of its events in order (Pins.RTMR0Events), " +
	"both recorded from a known-good launch of the same shape (q35, vCPU count, memory, QEMU and TDVF builds; --json lists this evidence's events); UnsafeAllowAnyRTMR0 accepts any")

// checkRTMR0Options refuses RTMR0 options that contradict each other.
func (o *Options) checkRTMR0Options() error {
	for i, d := range o.Pins.RTMR0Events {
		if len(d) != 96 || strings.ToLower(d) != d || !isHex(d) {
			return fmt.Errorf("Pins.RTMR0Events[%d] %q: expected 96 lowercase hex digits (an RTMR0 event's SHA-384 digest)", i, d)
		}
	}
	if o.UnsafeAllowAnyRTMR0 && (o.Pins.RTMR0Events != nil || o.EvidencePolicy.TDX.RTMR[0] != nil) {
		return errors.New("UnsafeAllowAnyRTMR0 contradicts the RTMR0 pins given")
	}
	return nil
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil
}

// checkRTMR0 binds what TDVF measured into RTMR0 (the event log replayed to it in the
// evidence check): the quote's RTMR0 was compared with a pin, or the replayed events'
// digests are the pinned ones, in order. Anything else fails, unless UnsafeAllowAnyRTMR0
// (or InsecureSkipMeasurement, under which no register is checked).
func checkRTMR0(o *Options, res *Result, claims *verifier.Claims) error {
	if claims.TEE != attest.TEETDX {
		if o.Pins.RTMR0Events != nil {
			return fail(CheckRTMR0, fmt.Errorf("%w: RTMR0 events are pinned (Pins.RTMR0Events) but the evidence is %s, which has no RTMR0", ErrMismatchBinding, claims.TEE))
		}
		return nil
	}
	for _, e := range claims.RTMR0Events {
		res.RTMR0Events = append(res.RTMR0Events, RTMR0Event{Digest: hex.EncodeToString(e.Digest), Label: e.Label()})
	}
	var how []string
	if o.EvidencePolicy.TDX.RTMR[0] != nil {
		how = append(how, "RTMR0 pinned")
	}
	if len(o.ExpectedMeasurements) > 0 {
		// verifier.Verify compared the 192-byte MRTD||RTMR0||RTMR1||RTMR2 values
		// (pinnedMeasurements passes only those for TDX).
		how = append(how, "MRTD||RTMR0||RTMR1||RTMR2 pinned")
	}
	if o.Pins.RTMR0Events != nil {
		if err := matchRTMR0Events(o.Pins.RTMR0Events, claims.RTMR0Events); err != nil {
			return fail(CheckRTMR0, err)
		}
		how = append(how, fmt.Sprintf("%d event digests pinned", len(o.Pins.RTMR0Events)))
	}
	switch {
	case len(how) > 0:
		res.record(CheckRTMR0, Passed, "%s", strings.Join(how, "; "))
		res.Pinned = append(res.Pinned, "rtmr0")
	case o.InsecureSkipMeasurement:
		res.record(CheckRTMR0, Warning, "NOT checked (InsecureSkipMeasurement)")
	case o.UnsafeAllowAnyRTMR0:
		res.record(CheckRTMR0, Warning, "NOT checked (UnsafeAllowAnyRTMR0)")
		res.Warnings = append(res.Warnings, "TDX RTMR0 NOT checked (UnsafeAllowAnyRTMR0): the host's ACPI tables, which the guest kernel runs, and the TD HOB could be anything")
	default:
		return fail(CheckRTMR0, errRTMR0Unpinned)
	}
	return nil
}

// matchRTMR0Events compares the replayed events' digests with the pinned ones: same
// count, same order. A mismatch names the event by the log's label.
func matchRTMR0Events(pinned []string, events []verifier.RTMR0Event) error {
	if len(events) == 0 {
		return fmt.Errorf("%w: RTMR0 events are pinned but the evidence's event log was not replayed", ErrMismatchBinding)
	}
	for i, e := range events {
		got := hex.EncodeToString(e.Digest)
		if i >= len(pinned) {
			return fmt.Errorf("%w: the event log extends RTMR0 with %d events, %d are pinned; event %d (the log labels it %s) is %s", ErrMismatchBinding, len(events), len(pinned), i, e.Label(), got)
		}
		if got != pinned[i] {
			return fmt.Errorf("%w: RTMR0 event %d (the log labels it %s) has digest %s, pinned %s", ErrMismatchBinding, i, e.Label(), got, pinned[i])
		}
	}
	if len(pinned) > len(events) {
		return fmt.Errorf("%w: the event log extends RTMR0 with %d events, %d are pinned", ErrMismatchBinding, len(events), len(pinned))
	}
	return nil
}
