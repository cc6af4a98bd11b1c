package verify

import (
	"bytes"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/verifier"
	"github.com/cloche-dev/cloche/reference"
)

func TestCheckRTMRs(t *testing.T) {
	reg := func(b byte) []byte { return bytes.Repeat([]byte{b}, 48) }
	claims := &verifier.Claims{TEE: attest.TEETDX, Rtmrs: [][]byte{reg(0), reg(1), reg(2), reg(3)}}
	hx := func(b byte) string { return hex.EncodeToString(reg(b)) }
	cases := []struct {
		name string
		v    reference.Value
		want string // "" = match
	}{
		{"matching kernel and cmdline", reference.Value{TEE: attest.TEETDX, RTMR1: hx(1), RTMR2: hx(2)}, ""},
		{"other kernel", reference.Value{TEE: attest.TEETDX, RTMR1: hx(9), RTMR2: hx(2)}, "RTMR1 is"},
		{"other cmdline or initrd", reference.Value{TEE: attest.TEETDX, RTMR1: hx(1), RTMR2: hx(9)}, "RTMR2 is"},
		{"MRTD-only value", reference.Value{TEE: attest.TEETDX}, "MRTD alone"},
		{"SNP value needs no RTMRs", reference.Value{TEE: attest.TEESNP}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := checkRTMRs(c.v, claims)
			if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
				t.Fatalf("checkRTMRs = %v, want %q", err, c.want)
			}
		})
	}
	if err := checkRTMRs(reference.Value{TEE: attest.TEETDX, RTMR1: hx(1), RTMR2: hx(2)}, &verifier.Claims{TEE: attest.TEETDX}); err == nil {
		t.Fatal("a quote without RTMRs matched")
	}
}

// TDX RTMR0 (the TD HOB, the UEFI variables, the host's ACPI tables) must be pinned, as a
// register or as the digests of the events that replayed to it; otherwise verification
// fails, unless UnsafeAllowAnyRTMR0.
func TestCheckRTMR0(t *testing.T) {
	digest := func(b byte) []byte { return bytes.Repeat([]byte{b}, 48) }
	events := []verifier.RTMR0Event{
		{Type: 0x8000000B, Digest: digest(1), Data: []byte("\x08TdxTable")},
		{Type: 0x4, Digest: digest(2), Data: make([]byte, 4), DataBound: true},
		{Type: 0xA, Digest: digest(3), Data: []byte("ACPI DATA")},
	}
	claims := &verifier.Claims{TEE: attest.TEETDX, RTMR0Events: events}
	pins := []string{hex.EncodeToString(digest(1)), hex.EncodeToString(digest(2)), hex.EncodeToString(digest(3))}
	cases := []struct {
		name string
		o    Options
		c    *verifier.Claims
		want string // "" = passes
		warn bool
	}{
		{"nothing pinned", Options{}, claims, "TDX RTMR0 is not checked", false},
		{"UnsafeAllowAnyRTMR0", Options{UnsafeAllowAnyRTMR0: true}, claims, "", true},
		{"InsecureSkipMeasurement", Options{InsecureSkipMeasurement: true}, claims, "", true},
		{"RTMR0 pinned", Options{EvidencePolicy: verifier.Policy{TDX: verifier.TDXPolicy{RTMR: [3][]byte{digest(9)}}}}, claims, "", false},
		{"long measurement pinned", Options{ExpectedMeasurements: [][]byte{make([]byte, 192)}}, claims, "", false},
		{"events pinned", Options{Pins: Pins{RTMR0Events: pins}}, claims, "", false},
		{"other ACPI tables", Options{Pins: Pins{RTMR0Events: []string{pins[0], pins[1], hex.EncodeToString(digest(4))}}}, claims, `RTMR0 event 2 (the log labels it Platform Config Flags "ACPI DATA") has digest 0303`, false},
		{"an event more than pinned", Options{Pins: Pins{RTMR0Events: pins[:2]}}, claims, "extends RTMR0 with 3 events, 2 are pinned", false},
		{"an event fewer than pinned", Options{Pins: Pins{RTMR0Events: append(slices.Clone(pins), hex.EncodeToString(digest(5)))}}, claims, "extends RTMR0 with 3 events, 4 are pinned", false},
		{"events pinned, log not replayed", Options{Pins: Pins{RTMR0Events: pins}}, &verifier.Claims{TEE: attest.TEETDX}, "was not replayed", false},
		{"events pinned on SNP", Options{Pins: Pins{RTMR0Events: pins}}, &verifier.Claims{TEE: attest.TEESNP}, "has no RTMR0", false},
		{"SNP needs none", Options{}, &verifier.Claims{TEE: attest.TEESNP}, "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := &Result{}
			err := checkRTMR0(&c.o, res, c.c)
			if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
				t.Fatalf("checkRTMR0 = %v, want %q", err, c.want)
			}
			var ve *Error
			if err != nil && (!errors.As(err, &ve) || ve.Check != CheckRTMR0) {
				t.Fatalf("error %v is not check %s", err, CheckRTMR0)
			}
			if got := len(res.Checks) == 1 && res.Checks[0].Outcome == Warning; got != c.warn {
				t.Errorf("checks %+v, want a warning: %v", res.Checks, c.warn)
			}
			if c.c.TEE == attest.TEETDX && len(res.RTMR0Events) != len(c.c.RTMR0Events) {
				t.Errorf("result lists %d RTMR0 events, want %d", len(res.RTMR0Events), len(c.c.RTMR0Events))
			}
		})
	}
}
