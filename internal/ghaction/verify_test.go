package ghaction

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/sethvargo/go-githubactions"

	"github.com/cloche-dev/cloche/verify"
)

// The verify action's TDX RTMR0 inputs reach verify.Options: the register pin, the event
// digests in order (lowercased), the opt-out; malformed values are input errors.
func TestRTMR0Inputs(t *testing.T) {
	env := func(m map[string]string) *githubactions.Action {
		return githubactions.New(githubactions.WithGetenv(func(k string) string { return m[k] }))
	}
	a, b := strings.Repeat("AB", 48), strings.Repeat("01", 48)
	o := &verify.Options{}
	err := rtmr0Inputs(env(map[string]string{
		"INPUT_TDX_RTMR0": strings.Repeat("cd", 48), "INPUT_TDX_RTMR0_EVENT": a + "\n" + b + "\n", "INPUT_UNSAFE_ALLOW_ANY_RTMR0": "true",
	}), o)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(o.EvidencePolicy.TDX.RTMR[0], bytes.Repeat([]byte{0xcd}, 48)) || len(o.Pins.RTMR0Events) != 2 ||
		o.Pins.RTMR0Events[0] != strings.ToLower(a) || o.Pins.RTMR0Events[1] != b || !o.UnsafeAllowAnyRTMR0 {
		t.Errorf("options: RTMR[0] %x, RTMR0Events %q, UnsafeAllowAnyRTMR0 %v", o.EvidencePolicy.TDX.RTMR[0], o.Pins.RTMR0Events, o.UnsafeAllowAnyRTMR0)
	}
	for _, m := range []map[string]string{{"INPUT_TDX_RTMR0": "abcd"}, {"INPUT_UNSAFE_ALLOW_ANY_RTMR0": "maybe"}} {
		if err := rtmr0Inputs(env(m), &verify.Options{}); !errors.Is(err, ErrInput) {
			t.Errorf("%v: %v, want ErrInput", m, err)
		}
	}
}
