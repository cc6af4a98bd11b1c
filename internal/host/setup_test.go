package host

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cloche-dev/cloche/attest"
)

func TestSigningKeyCreatedOnceInState(t *testing.T) {
	state := t.TempDir()
	_, path, created, err := SigningKey(state, "")
	if err != nil || !created || path != SigningKeyPath(state) {
		t.Fatalf("first SigningKey = %q, created %v, %v; want %s created", path, created, err, SigningKeyPath(state))
	}
	first, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + ".pub"); err != nil {
		t.Fatalf("public key beside the key: %v", err)
	}
	if _, _, created, err := SigningKey(state, ""); err != nil || created {
		t.Fatalf("second SigningKey created %v, %v; want the existing key reused", created, err)
	}
	again, err := os.ReadFile(path)
	if err != nil || string(again) != string(first) {
		t.Fatalf("the key changed on reuse (%v)", err)
	}
}

// An explicit key that is missing is an error, never replaced by a fresh one.
func TestSigningKeyExplicitMissingIsNotCreated(t *testing.T) {
	state := t.TempDir()
	missing := filepath.Join(state, "nope.pem")
	if _, _, _, err := SigningKey(state, missing); err == nil {
		t.Fatal("SigningKey with a missing explicit key succeeded")
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Fatalf("a key was written at the explicit path: %v", err)
	}
}

func TestFirmwareOverridesAndDefaults(t *testing.T) {
	state := "/s"
	for _, c := range []struct {
		tee            attest.TEE
		snp, tdx, want string
	}{
		{attest.TEESNP, "", "", SNPFirmwarePath(state)},
		{attest.TEESNP, "/a.fd", "/b.fd", "/a.fd"},
		{attest.TEETDX, "", "", TDXFirmwarePath(state)},
		{attest.TEETDX, "/a.fd", "/b.fd", "/b.fd"},
		{attest.TEESim, "/a.fd", "/b.fd", ""},
	} {
		if got := Firmware(c.tee, c.snp, c.tdx, state); got != c.want {
			t.Errorf("Firmware(%s, %q, %q) = %q, want %q", c.tee, c.snp, c.tdx, got, c.want)
		}
	}
}
