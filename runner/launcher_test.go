package runner

import (
	"testing"

	"github.com/cloche-dev/cloche/attest"
)

// Hardware jobs must launch with their TEE's firmware; sim jobs with none.
func TestBuildLauncherFirmware(t *testing.T) {
	b := &BuildLauncher{SNPFirmware: "/fw/ovmf-amdsev.fd", TDXFirmware: "/fw/tdvf.fd"}
	for tee, want := range map[attest.TEE]string{attest.TEESNP: "/fw/ovmf-amdsev.fd", attest.TEETDX: "/fw/tdvf.fd", attest.TEESim: ""} {
		if got := b.firmware(tee); got != want {
			t.Errorf("firmware(%s) = %q, want %q", tee, got, want)
		}
	}
}
