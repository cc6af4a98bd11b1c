package main

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/cloche-dev/cloche/verify"
)

// --tdx-rtmr0-event pins RTMR0's event digests in order (lowercased), and
// --unsafe-allow-any-rtmr0 maps to verify.Options.UnsafeAllowAnyRTMR0; the library's message
// for an unpinned RTMR0 reaches the user in these flags' words.
func TestVerifyRTMR0Flags(t *testing.T) {
	f := &verifyFlags{}
	fs := pflag.NewFlagSet("verify", pflag.ContinueOnError)
	f.register(fs)
	a, b := strings.Repeat("AB", 48), strings.Repeat("01", 48)
	if err := fs.Parse([]string{"--tdx-rtmr0-event", a, "--tdx-rtmr0-event", b, "--unsafe-allow-any-rtmr0"}); err != nil {
		t.Fatal(err)
	}
	p, err := f.pins()
	if err != nil {
		t.Fatal(err)
	}
	if len(p.RTMR0Events) != 2 || p.RTMR0Events[0] != strings.ToLower(a) || p.RTMR0Events[1] != b {
		t.Errorf("Pins.RTMR0Events %q", p.RTMR0Events)
	}
	o := &verify.Options{}
	if err := f.measurementOptions(o); err != nil {
		t.Fatal(err)
	}
	if !o.UnsafeAllowAnyRTMR0 {
		t.Error("--unsafe-allow-any-rtmr0 did not set UnsafeAllowAnyRTMR0")
	}
	msg := flagWords("Pin it (EvidencePolicy.TDX.RTMR[0], or an MRTD||RTMR0||RTMR1||RTMR2 value in ExpectedMeasurements), or pin the digests of its events in order (Pins.RTMR0Events); UnsafeAllowAnyRTMR0 accepts any")
	for _, w := range []string{"--tdx-rtmr0 HEX", "--measurement HEX", "--tdx-rtmr0-event HEX", "--unsafe-allow-any-rtmr0"} {
		if !strings.Contains(msg, w) {
			t.Errorf("%q does not name %s", msg, w)
		}
	}
}
