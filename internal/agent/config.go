package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/verifier"
	"github.com/cloche-dev/cloche/internal/build"
	"github.com/cloche-dev/cloche/internal/host"
)

// Config is the agent's configuration: a JSON file (LoadConfig) with flags on top.
// Zero values take the defaults of WithDefaults.
type Config struct {
	// Socket is the unix socket the API listens on.
	Socket string `json:"socket,omitempty"`
	// SocketMode is the socket file's permission bits, octal (default "0660": the agent's
	// user and SocketGID may connect; SO_PEERCRED is checked either way).
	SocketMode string `json:"socketMode,omitempty"`
	// SocketGID, when set, is the socket file's group (e.g. the runner users' group).
	SocketGID *int `json:"socketGid,omitempty"`
	// StateDir holds jobs/ (records, logs, results). Its path must be short: the VM's
	// simulated-TEE socket lives below it (unix socket paths are at most 107 bytes).
	StateDir string `json:"stateDir,omitempty"`

	// AllowedUIDs and AllowedGIDs may submit and read jobs; the agent's own uid always may.
	// The gid is the peer's primary group as the kernel reports it with SO_PEERCRED.
	AllowedUIDs []int `json:"allowedUids,omitempty"`
	AllowedGIDs []int `json:"allowedGids,omitempty"`

	// TEE is what jobs run on unless they name one: "sim", "snp" or "tdx" (default sim).
	TEE string `json:"tee,omitempty"`

	Budget Budget `json:"budget"`
	// QueueLimit caps jobs waiting for the budget (queued, or their source still
	// arriving) from all users together; one more gets a "busy" error.
	QueueLimit int `json:"queueLimit,omitempty"`
	// UserQueueLimit caps one user's waiting jobs (default 16), so that one user cannot
	// take the whole queue; UserUploads caps one user's sources arriving at once (default 4).
	UserQueueLimit int `json:"userQueueLimit,omitempty"`
	UserUploads    int `json:"userUploads,omitempty"`
	// UserQueueBytes caps the source bytes one user's waiting jobs hold on the agent's
	// disk (default 4 × maxSourceBytes).
	UserQueueBytes int64 `json:"userQueueBytes,omitempty"`
	// UserConnections caps one uid's open connections (default 64); more are answered
	// "busy" and closed.
	UserConnections int `json:"userConnections,omitempty"`
	// UploadIdleTimeout is the longest a submission's body may pause before the agent
	// drops it (default 30s); IdleTimeout closes keep-alive connections idle that long
	// (default 60s).
	UploadIdleTimeout Duration `json:"uploadIdleTimeout,omitempty"`
	IdleTimeout       Duration `json:"idleTimeout,omitempty"`
	// DefaultVCPUs and DefaultMemoryMiB size a job that does not say (defaults 2, 2048).
	DefaultVCPUs     int `json:"defaultVcpus,omitempty"`
	DefaultMemoryMiB int `json:"defaultMemoryMiB,omitempty"`
	// DefaultTimeout is the build command's limit when a job does not say (10m).
	DefaultTimeout Duration `json:"defaultTimeout,omitempty"`
	// WallClockSlack is added to a job's build timeout for its default wall-clock limit
	// (boot, unpacking, output, signing; default 5m).
	WallClockSlack Duration `json:"wallClockSlack,omitempty"`
	// MaxWallClock caps every job from launch to end (default 2h).
	MaxWallClock Duration `json:"maxWallClock,omitempty"`
	// MaxSourceBytes caps a submitted source archive (default 1 GiB).
	MaxSourceBytes int64 `json:"maxSourceBytes,omitempty"`
	// MaxOutputBytes caps a job's artifacts plus log (default 256 MiB).
	MaxOutputBytes int64 `json:"maxOutputBytes,omitempty"`
	// MaxLogBytes caps the console log kept per job (default 64 MiB; the rest is dropped
	// with a note).
	MaxLogBytes int64 `json:"maxLogBytes,omitempty"`
	// KeepFinished is how many finished jobs (records, logs, results) are kept; the oldest
	// go first (default 1000).
	KeepFinished int `json:"keepFinished,omitempty"`

	// MetricsListen is the TCP address of the Prometheus endpoint (/metrics); empty: off.
	MetricsListen string `json:"metricsListen,omitempty"`
	// LogJSON writes the agent's logs as JSON.
	LogJSON bool `json:"logJson,omitempty"`

	// Launch configures the production launcher (build.Run); cmd/cloche fills the empty
	// ones from the state directory the way `cloche run` does.
	Launch LaunchConfig `json:"launch"`
}

// LaunchConfig names what the agent builds with.
type LaunchConfig struct {
	GuestImage string `json:"guestImage,omitempty"` // directory from `cloche image guest`
	// GuestImageRelease (vX.Y.Z) of GuestImageRepository (default cloche-dev/cloche): the
	// published guest image to launch, fetched and checked at start-up instead of a local
	// build (`cloche image guest --release`).
	GuestImageRelease    string `json:"guestImageRelease,omitempty"`
	GuestImageRepository string `json:"guestImageRepository,omitempty"`
	Toolchain            string `json:"toolchain,omitempty"`  // image from `cloche image toolchain`
	SigningKey           string `json:"signingKey,omitempty"` // ECDSA P-256 PEM
	Accel                string `json:"accel,omitempty"`      // auto, kvm or tcg
	QEMU                 string `json:"qemu,omitempty"`
	// Hardware TEEs: the firmware each launches with (SNP: AmdSev OVMF; TDX: TDVF), the TDX
	// quote generation service, and whether SNP evidence may be completed only from the
	// report, ChainFile and the KDS cache (no network).
	SNPFirmware string `json:"snpFirmware,omitempty"`
	TDXFirmware string `json:"tdxFirmware,omitempty"`
	QGS         string `json:"qgs,omitempty"`
	KDSOffline  bool   `json:"kdsOffline,omitempty"`
	KDSChain    string `json:"kdsChain,omitempty"`
	// SNPProduct is the SNP product line (Milan, Genoa) whose VCEK a version 2 report needs;
	// empty means this host's CPU's (kds.Options.ProductLine).
	SNPProduct string `json:"snpProduct,omitempty"`
}

// HostConfig is the host the agent runs its jobs on (host.New), from the configuration:
// its state directory, TEE and launch settings. The caller adds the version, logger and
// guest init.
func (c *Config) HostConfig() host.Config {
	l := c.Launch
	hc := host.Config{
		StateDir: c.StateDir, TEE: attest.TEE(c.TEE), SigningKey: l.SigningKey,
		GuestImage: l.GuestImage, Toolchain: l.Toolchain,
		SNPFirmware: l.SNPFirmware, TDXFirmware: l.TDXFirmware, QGS: l.QGS,
		KDS:   host.KDSConfig{Offline: l.KDSOffline, ChainFile: l.KDSChain, ProductLine: l.SNPProduct},
		Accel: l.Accel, QEMU: l.QEMU,
	}
	if l.GuestImageRelease != "" {
		hc.GuestRelease = host.GuestRelease{Tag: l.GuestImageRelease, Repository: l.GuestImageRepository}
	}
	return hc
}

// HostConfigFields are the configuration's names for the host.Config fields it sets.
var HostConfigFields = map[string]string{
	"StateDir": "stateDir", "TEE": "tee", "SigningKey": "launch.signingKey", "GuestImage": "launch.guestImage",
	"GuestImage,GuestRelease.Tag": "launch.guestImage and launch.guestImageRelease",
	"GuestRelease":                "launch.guestImageRelease/launch.guestImageRepository", "Toolchain": "launch.toolchain",
	"KDS.ProductLine": "launch.snpProduct", "Accel": "launch.accel",
}

// Duration is a time.Duration written as a Go duration string ("90s", "2h") in JSON.
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"90s\" or \"2h\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// maxConfigSize bounds the configuration file.
const maxConfigSize = 1 << 20

// LoadConfig reads a JSON configuration file strictly (unknown fields are errors).
func LoadConfig(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("agent configuration: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("agent configuration %s: %w", path, err)
	}
	if len(b) > maxConfigSize {
		return nil, fmt.Errorf("agent configuration %s is over %d bytes", path, maxConfigSize)
	}
	var c Config
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("agent configuration %s: %w", path, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("agent configuration %s: trailing data after the JSON object", path)
	}
	return &c, nil
}

// HostResources is what the host has, for the budget's defaults.
type HostResources struct {
	CPUs      int
	MemoryMiB int
}

// DetectHost reads the CPU count and /proc/meminfo.
func DetectHost() (HostResources, error) {
	h := HostResources{CPUs: runtime.NumCPU()}
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return h, fmt.Errorf("host memory: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kib, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				return h, fmt.Errorf("host memory: MemTotal %q: %w", fields[1], err)
			}
			h.MemoryMiB = int(kib / 1024)
			return h, nil
		}
	}
	if err := sc.Err(); err != nil {
		return h, fmt.Errorf("host memory: %w", err)
	}
	return h, errors.New("host memory: no MemTotal in /proc/meminfo")
}

// hostReserveMiB is memory the default budget leaves to the host itself.
const hostReserveMiB = 1024

// WithDefaults fills every zero field: paths from the agent's user, the budget from host.
func (c Config) WithDefaults(host HostResources) Config {
	if c.Socket == "" {
		c.Socket = DefaultSocket()
	}
	if c.SocketMode == "" {
		c.SocketMode = "0660"
	}
	if c.TEE == "" {
		c.TEE = "sim"
	}
	if c.DefaultVCPUs == 0 {
		c.DefaultVCPUs = build.DefaultVCPUs
	}
	if c.DefaultMemoryMiB == 0 {
		c.DefaultMemoryMiB = build.DefaultMemoryMiB
	}
	if c.Budget.VCPUs == 0 {
		c.Budget.VCPUs = max(host.CPUs, 1)
	}
	if c.Budget.MemoryMiB == 0 {
		c.Budget.MemoryMiB = max(host.MemoryMiB-hostReserveMiB, 512)
	}
	if c.Budget.VMs == 0 {
		// As many default-sized VMs as the CPUs hold, at least one.
		c.Budget.VMs = max(c.Budget.VCPUs/c.DefaultVCPUs, 1)
	}
	if c.Budget.MinFreeDiskBytes == 0 {
		c.Budget.MinFreeDiskBytes = 2 << 30
	}
	if c.QueueLimit == 0 {
		c.QueueLimit = 64
	}
	if c.UserQueueLimit == 0 {
		c.UserQueueLimit = min(16, c.QueueLimit)
	}
	if c.UserUploads == 0 {
		c.UserUploads = min(4, c.UserQueueLimit)
	}
	if c.UserConnections == 0 {
		c.UserConnections = 64
	}
	if c.UploadIdleTimeout == 0 {
		c.UploadIdleTimeout = Duration(30 * time.Second)
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = Duration(time.Minute)
	}
	if c.DefaultTimeout == 0 {
		c.DefaultTimeout = Duration(build.DefaultTimeout)
	}
	if c.WallClockSlack == 0 {
		c.WallClockSlack = Duration(5 * time.Minute)
	}
	if c.MaxWallClock == 0 {
		c.MaxWallClock = Duration(2 * time.Hour)
	}
	if c.MaxSourceBytes == 0 {
		c.MaxSourceBytes = 1 << 30
	}
	if c.UserQueueBytes == 0 {
		c.UserQueueBytes = 4 * c.MaxSourceBytes
	}
	if c.MaxOutputBytes == 0 {
		c.MaxOutputBytes = build.DefaultMaxOutputBytes
	}
	if c.MaxLogBytes == 0 {
		c.MaxLogBytes = 64 << 20
	}
	if c.KeepFinished == 0 {
		c.KeepFinished = 1000
	}
	if c.Launch.Accel == "" {
		c.Launch.Accel = "auto"
	}
	return c
}

// maxStateDirLen leaves room below the state directory for a job's work directory and the
// simulated-TEE socket inside it (jobs/<id>/w/.cloche-work-<n>/simtee.sock).
const maxStateDirLen = 107 - 64

// Validate checks a configuration after WithDefaults.
func (c *Config) Validate() error {
	switch {
	case c.StateDir == "":
		return errors.New("agent configuration: no state directory (stateDir)")
	case !filepath.IsAbs(c.StateDir):
		return fmt.Errorf("agent configuration: stateDir %q must be an absolute path", c.StateDir)
	case len(c.StateDir) > maxStateDirLen:
		return fmt.Errorf("agent configuration: stateDir %q is %d bytes, limit %d (the VM's socket path below it must fit in 107 bytes)", c.StateDir, len(c.StateDir), maxStateDirLen)
	case c.Socket == "" || len(c.Socket) > 107:
		return fmt.Errorf("agent configuration: socket %q must be a path of 1..107 bytes", c.Socket)
	case !attest.TEE(c.TEE).Valid():
		return fmt.Errorf("agent configuration: tee %q, expected sim, snp or tdx", c.TEE)
	case c.Budget.VCPUs < build.MinVCPUs || c.Budget.MemoryMiB < build.MinMemoryMiB || c.Budget.VMs < 1 || c.Budget.MinFreeDiskBytes < 0:
		return fmt.Errorf("agent configuration: budget %+v needs at least %d vCPU, %d MiB, 1 VM and a non-negative disk reserve", c.Budget, build.MinVCPUs, build.MinMemoryMiB)
	case c.QueueLimit < 1:
		return fmt.Errorf("agent configuration: queueLimit %d must be at least 1", c.QueueLimit)
	case c.UserQueueLimit < 1 || c.UserUploads < 1:
		return fmt.Errorf("agent configuration: userQueueLimit %d and userUploads %d must be at least 1", c.UserQueueLimit, c.UserUploads)
	case c.UserQueueBytes < c.MaxSourceBytes:
		return fmt.Errorf("agent configuration: userQueueBytes %d must be at least maxSourceBytes %d (one job of the largest source)", c.UserQueueBytes, c.MaxSourceBytes)
	case c.UserConnections < 2:
		return fmt.Errorf("agent configuration: userConnections %d must be at least 2 (a submission and a status request)", c.UserConnections)
	case c.UploadIdleTimeout < Duration(100*time.Millisecond) || c.IdleTimeout < Duration(100*time.Millisecond):
		return errors.New("agent configuration: uploadIdleTimeout and idleTimeout must be at least 100ms")
	case c.DefaultVCPUs < build.MinVCPUs || c.DefaultVCPUs > c.MaxJobVCPUs():
		return fmt.Errorf("agent configuration: defaultVcpus %d must be %d..%d (the budget and a VM's limit)", c.DefaultVCPUs, build.MinVCPUs, c.MaxJobVCPUs())
	case c.DefaultMemoryMiB < build.MinMemoryMiB || c.DefaultMemoryMiB > c.MaxJobMemoryMiB():
		return fmt.Errorf("agent configuration: defaultMemoryMiB %d must be %d..%d (the budget and a VM's limit)", c.DefaultMemoryMiB, build.MinMemoryMiB, c.MaxJobMemoryMiB())
	case c.DefaultTimeout < Duration(build.MinTimeout) || c.MaxWallClock < Duration(time.Second) || c.WallClockSlack < 0:
		return errors.New("agent configuration: defaultTimeout and maxWallClock must be at least 1s, wallClockSlack not negative")
	case c.MaxSourceBytes < 1 || c.MaxOutputBytes < 1 || c.MaxLogBytes < 1 || c.KeepFinished < 1:
		return errors.New("agent configuration: maxSourceBytes, maxOutputBytes, maxLogBytes and keepFinished must be positive")
	case c.Launch.SNPProduct != "" && c.Launch.SNPProduct != verifier.ProductMilan && c.Launch.SNPProduct != verifier.ProductGenoa:
		return fmt.Errorf("agent configuration: launch.snpProduct %q, expected Milan or Genoa", c.Launch.SNPProduct)
	}
	if _, err := c.socketMode(); err != nil {
		return err
	}
	for _, id := range append(append([]int{}, c.AllowedUIDs...), c.AllowedGIDs...) {
		if id < 0 {
			return fmt.Errorf("agent configuration: allowed id %d is negative", id)
		}
	}
	return nil
}

// MaxJobVCPUs is the most vCPUs one job may ask for: the budget, at most a VM's limit.
func (c *Config) MaxJobVCPUs() int { return min(c.Budget.VCPUs, build.MaxVCPUs) }

// MaxJobMemoryMiB is the most guest memory one job may ask for: the budget, at most a VM's
// limit.
func (c *Config) MaxJobMemoryMiB() int { return min(c.Budget.MemoryMiB, build.MaxMemoryMiB) }

func (c *Config) socketMode() (os.FileMode, error) {
	m, err := strconv.ParseUint(c.SocketMode, 8, 32)
	if err != nil || m > 0o777 {
		return 0, fmt.Errorf("agent configuration: socketMode %q, expected octal permission bits like \"0660\"", c.SocketMode)
	}
	return os.FileMode(m), nil
}

// DefaultSocket is where the agent listens and clients look by default: /run/cloche as
// root, else the user's runtime directory.
func DefaultSocket() string {
	if os.Geteuid() == 0 {
		return "/run/cloche/agent.sock"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "cloche", "agent.sock")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("cloche-%d", os.Geteuid()), "agent.sock")
}
