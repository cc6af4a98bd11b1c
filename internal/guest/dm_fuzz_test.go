package guest

import (
	"testing"
)

// FuzzDMReply: the device-mapper reply decoder reads a buffer the kernel filled in; a
// malformed one must be an error, never a panic, and never more targets than it claims.
func FuzzDMReply(f *testing.F) {
	f.Add(statusReply(dmTarget{Length: 8, Type: "verity", Params: "V"}), true)
	f.Add(statusReply(dmTarget{Length: 8, Type: "verity", Params: "C"}, dmTarget{SectorStart: 8, Length: 8, Type: "linear", Params: "x"}), true)
	f.Add(make([]byte, dmIoctlSize), false)
	f.Add([]byte{1, 2, 3}, true)
	f.Fuzz(func(t *testing.T, buf []byte, withTargets bool) {
		r, err := decodeDMReply(buf, withTargets)
		if err != nil {
			return
		}
		if !withTargets && r.Targets != nil {
			t.Fatal("targets parsed from a reply without them")
		}
		if len(r.Targets) > int(r.TargetCount) {
			t.Fatalf("%d targets from a reply that lists %d", len(r.Targets), r.TargetCount)
		}
		if withTargets {
			_ = parseVerityStatus(r.Targets)
		}
	})
}
