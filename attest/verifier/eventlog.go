package verifier

import (
	"bytes"
	"crypto/sha512"
	"fmt"
	"strings"

	"github.com/google/go-eventlog/register"
	"github.com/google/go-eventlog/tcg"

	"github.com/cloche-dev/cloche/attest"
)

// RTMR0Event is one event of the TDX event log that replayed to the quote's RTMR0: TDVF's
// measurements of the TD HOB (the memory map the host gave), the configuration firmware
// volume (the UEFI variables), the Secure Boot variables, the boot variables and the ACPI
// tables QEMU generated ("ACPI DATA"), which the guest kernel runs.
//
// Only Digest is bound by the replay. Type and Data are the log's words: the host can
// relabel an event without changing RTMR0, so nothing may be decided on them alone. When
// DataBound is true, Digest is SHA-384 of Data, so Data is what was measured; otherwise
// (firmware blobs, the ACPI tables) the measured bytes are not in the log and Digest is
// all a verifier can compare.
type RTMR0Event struct {
	Type      uint32
	Digest    []byte
	Data      []byte
	DataBound bool
}

// Label describes the event for messages: its type and, for a blob, its description.
// It is the log's unbound word.
func (e RTMR0Event) Label() string {
	name := fmt.Sprintf("type 0x%x", e.Type)
	if n, ok := tcg.EventType(e.Type).KnownName(); ok {
		name = n
	}
	if d := printable(e.Data); d != "" && !e.DataBound {
		name += " " + fmt.Sprintf("%q", d)
	}
	return name
}

// printable is the run of printable ASCII in b (a blob's description, "ACPI DATA").
func printable(b []byte) string {
	var s strings.Builder
	for _, c := range b {
		if c >= 0x20 && c < 0x7f {
			s.WriteByte(c)
		} else if s.Len() >= 4 {
			break
		} else {
			s.Reset()
		}
		if s.Len() >= 64 {
			break
		}
	}
	if s.Len() < 4 {
		return ""
	}
	return s.String()
}

// digestIsOfData are the event types whose digest the firmware computes over the event
// data itself (TCG PC Client PFP: EV_SEPARATOR, EV_EFI_ACTION, EV_EFI_VARIABLE_DRIVER_CONFIG,
// EV_EFI_VARIABLE_AUTHORITY). For these a log whose data does not hash to the digest was
// altered after the fact. Blob, ACPI and boot-variable events digest bytes the log does not
// carry.
var digestIsOfData = map[uint32]bool{
	uint32(tcg.Separator): true, uint32(tcg.EFIAction): true,
	uint32(tcg.EFIVariableDriverConfig): true, uint32(tcg.EFIVariableAuthority): true,
}

// checkTDXEventLog replays the TDX event log against the quote's RTMR0 and returns the
// events that replayed. It fails (ErrEventLog) when there is no log, when it is not a TCG
// crypto-agile log with SHA-384 digests, when no event extends RTMR0 (an empty replay
// "matches" any register), and when the replay is not RTMR0.
//
// CC event logs name MRs by their CC index: MRTD is 0, so RTMR0 is 1; the log area
// after the last event is padding (an all-ones MR index ends the parse).
func checkTDXEventLog(log, rtmr0 []byte) ([]RTMR0Event, error) {
	if len(log) == 0 {
		return nil, fmt.Errorf("%w: the tdx evidence carries no event log: RTMR0 (the TD HOB, the UEFI variables and the ACPI tables the host's VMM wrote) cannot be checked", attest.ErrEventLog)
	}
	if len(log) > attest.MaxEventLogSize {
		return nil, fmt.Errorf("%w: event log is %d bytes, limit %d", attest.ErrEventLog, len(log), attest.MaxEventLogSize)
	}
	if len(rtmr0) != sha512.Size384 {
		return nil, fmt.Errorf("%w: RTMR0 is %d bytes, expected %d", attest.ErrEventLog, len(rtmr0), sha512.Size384)
	}
	el, err := tcg.ParseEventLog(log, tcg.ParseOpts{AllowPadding: true})
	if err != nil {
		return nil, fmt.Errorf("%w: parsing the event log: %w", attest.ErrEventLog, err)
	}
	sha384 := false
	for _, a := range el.Algs {
		sha384 = sha384 || a == register.HashSHA384
	}
	if !sha384 {
		return nil, fmt.Errorf("%w: the event log has no SHA-384 digests (its algorithms: %v); TDX RTMRs are SHA-384", attest.ErrEventLog, el.Algs)
	}
	events, err := el.Verify([]register.MR{register.RTMR{Index: 0, Digest: bytes.Clone(rtmr0)}})
	if err != nil {
		return nil, fmt.Errorf("%w: the event log does not replay to the quote's RTMR0 %x: %w", attest.ErrEventLog, rtmr0, err)
	}
	rtmr0Idx := register.RTMR{Index: 0}.Idx()
	var out []RTMR0Event
	for _, e := range events {
		// Event.UntrustedType panics on types it does not know; Type is the same value.
		if e.Index != rtmr0Idx {
			continue
		}
		sum := sha512.Sum384(e.Data)
		ev := RTMR0Event{Type: uint32(e.Type), Digest: bytes.Clone(e.Digest), Data: bytes.Clone(e.Data), DataBound: bytes.Equal(sum[:], e.Digest)}
		if digestIsOfData[ev.Type] && !ev.DataBound {
			return nil, fmt.Errorf("%w: RTMR0 event %d (%s): its data does not hash to its digest %x, which the firmware measures for this type: the log was altered", attest.ErrEventLog, len(out), ev.Label(), ev.Digest)
		}
		out = append(out, ev)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no event of the event log extends RTMR0, so it says nothing of RTMR0 %x", attest.ErrEventLog, rtmr0)
	}
	return out, nil
}
