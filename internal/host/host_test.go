package host

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/build"
	"github.com/cloche-dev/cloche/internal/hostcheck"
	"github.com/cloche-dev/cloche/internal/vmm"
	"github.com/cloche-dev/cloche/job"
)

// simConfig is a host that needs no probing, fetching or building: the sim TEE with the
// images named (New does not open them; build.Run does).
func simConfig(t *testing.T) Config {
	return Config{StateDir: t.TempDir(), TEE: attest.TEESim, GuestImage: "/images/guest", Toolchain: "/images/tc.img", Version: "test"}
}

// A bad configuration is refused by New within milliseconds, naming the field, before it
// creates a key or builds anything.
func TestNewRefusesBadConfigNamingTheField(t *testing.T) {
	for _, tc := range []struct {
		field  string
		modify func(*Config)
		want   string
	}{
		{"TEE", func(c *Config) { c.TEE = "sgx" }, "expected auto, snp, tdx or sim"},
		{"KDS.ProductLine", func(c *Config) { c.KDS.ProductLine = "Rome" }, "expected Milan or Genoa"},
		{"Accel", func(c *Config) { c.Accel = "hvf" }, "expected auto, kvm or tcg"},
		{"Version", func(c *Config) { c.Version = "" }, "expected cloche's version"},
		{"RekorURL", func(c *Config) { c.RekorURL = "rekor.example" }, "expected an http(s) URL"},
		{"GuestImage,GuestRelease.Tag", func(c *Config) { c.GuestRelease.Tag = "v1.0.0" }, "give one"},
		{"GuestRelease", func(c *Config) { c.GuestImage = ""; c.GuestRelease.Tag = "latest" }, "expected vX.Y.Z"},
	} {
		t.Run(tc.field, func(t *testing.T) {
			c := simConfig(t)
			tc.modify(&c)
			start := time.Now()
			_, err := New(context.Background(), c)
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Field != tc.field || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v; want a ConfigError for %s saying %q", err, tc.field, tc.want)
			}
			if took := time.Since(start); took > time.Second {
				t.Errorf("refused after %s", took)
			}
			if _, err := os.Stat(SigningKeyPath(c.StateDir)); !os.IsNotExist(err) {
				t.Errorf("a signing key was created for a refused configuration: %v", err)
			}
		})
	}
}

// A TEE the machine lacks is ErrUnavailable, not ErrConfig: the configuration is fine.
func TestResolveTEEUnavailableIsNotAConfigError(t *testing.T) {
	empty := t.TempDir()
	check := func() hostcheck.Host {
		return hostcheck.Host{SysRoot: empty, DevRoot: empty, QEMU: "qemu",
			Run:       func(context.Context, string, ...string) ([]byte, error) { return nil, errors.New("no qemu") },
			ProbeKVM:  func(context.Context) error { return errors.New("no kvm") },
			SEVCPUID:  func() (vmm.SEVCPUID, error) { return vmm.SEVCPUID{}, nil },
			DialVsock: func(context.Context, uint32, uint32) error { return errors.New("no qgs") }}
	}
	for _, tee := range []attest.TEE{attest.TEESNP, "auto"} {
		_, err := ResolveTEE(context.Background(), tee, check)
		if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrConfig) {
			t.Errorf("ResolveTEE(%s) = %v; want ErrUnavailable only", tee, err)
		}
		var ce *ConfigError
		if !errors.As(err, &ce) {
			t.Fatalf("ResolveTEE(%s): %v is no ConfigError", tee, err)
		}
		named := ce.Named("--tee")
		if !errors.Is(named, ErrUnavailable) || !strings.HasPrefix(named.Error(), "--tee ") {
			t.Errorf("Named = %q, ErrUnavailable %v", named, errors.Is(named, ErrUnavailable))
		}
	}
}

// Every job runs with the host's images, key, TEE set-up and version; a job asking for
// another TEE is refused, and its own signer and logger replace the host's.
func TestRunUsesTheHostsSetup(t *testing.T) {
	c := simConfig(t)
	c.Accel, c.QEMU = "tcg", "/opt/qemu"
	h, err := New(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if !h.KeyCreated() || h.SigningKeyPath() != SigningKeyPath(c.StateDir) || h.TEE() != attest.TEESim {
		t.Fatalf("host: key %s created %v, TEE %s", h.SigningKeyPath(), h.KeyCreated(), h.TEE())
	}
	j := Job{Spec: job.Spec{Command: []string{"make"}}, SourceDir: "/src", OutDir: "/out"}
	o, err := h.Options(j)
	if err != nil {
		t.Fatal(err)
	}
	if o.TEE != attest.TEESim || o.GuestImageDir != c.GuestImage || o.ToolchainImage != c.Toolchain ||
		o.SimDir != SimTEEDir(c.StateDir) || o.Signer != h.Signer() || o.Accel != "tcg" || o.QEMU != "/opt/qemu" ||
		o.Version != "test" || o.Firmware != "" || o.SourceDir != "/src" || o.OutDir != "/out" || o.Command[0] != "make" {
		t.Errorf("build options %+v do not carry the host's setup", o)
	}

	j.Spec.TEE = attest.TEESNP
	if _, err := h.Run(context.Background(), j); !errors.Is(err, build.ErrInput) || !strings.Contains(err.Error(), `asks for TEE "snp"`) {
		t.Errorf("a job asking for snp on a sim host: %v", err)
	}

	other := &fakeSigner{}
	j.Spec.TEE, j.Signer = "auto", other
	if o, err = h.Options(j); err != nil || o.Signer != other || o.TEE != attest.TEESim {
		t.Errorf("job signer: %v, %v, TEE %s", o.Signer, err, o.TEE)
	}
}

// With Config.Signer (the action's keyless signer) no key is read or created.
func TestConfigSignerCreatesNoKey(t *testing.T) {
	c := simConfig(t)
	c.Signer = &fakeSigner{}
	h, err := New(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if h.Signer() != c.Signer || h.SigningKeyPath() != "" {
		t.Errorf("signer %v, key %q", h.Signer(), h.SigningKeyPath())
	}
	if _, err := os.Stat(filepath.Join(c.StateDir, "signing-key.pem")); !os.IsNotExist(err) {
		t.Errorf("a key was created: %v", err)
	}
}

type fakeSigner struct{}

func (*fakeSigner) SignStatement(context.Context, []byte) ([]byte, error) { return nil, nil }
