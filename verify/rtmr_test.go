package verify

import (
	"bytes"
	"encoding/hex"
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
