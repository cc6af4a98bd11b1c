package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/agent"
	"github.com/cloche-dev/cloche/internal/agent/client"
	"github.com/cloche-dev/cloche/internal/host"
)

type agentFlags struct {
	config, socket, tee, metrics   string
	allowUIDs, allowGIDs           []int
	vms, vcpus, memory, queueLimit int
	minFreeDisk                    int64
	maxWallClock                   time.Duration
	guestImage, toolchain, key     string
	guestInit, accel, qemu         string
}

func newAgentCmd(g *globals) *cobra.Command {
	f := &agentFlags{}
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the cloche agent: the daemon that owns this TEE host and runs builds for local users",
		Long: `The agent owns the TEE host (KVM, the secure processor, firmware, guest and toolchain
images, the signing key) and runs every confidential build on it. Allowed local users submit
jobs over its unix socket (cloche run --agent SOCKET, or $` + agentSocketEnv + `); the agent
queues them fairly per user within its resource budget, persists every state change, and
never leaves a VM running after a restart.

Settings come from --config (JSON, see docs/agent.md) with flags on top; the budget
defaults to the host's CPUs and memory.`,
		Example: `  cloche agent --config /etc/cloche/agent.json
  cloche agent --allow-gid 990 --max-vms 4 --metrics-listen 127.0.0.1:9464`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return runAgent(cmd, g, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", "", "configuration file (JSON)")
	fl.StringVar(&f.socket, "socket", "", "API socket (default "+agent.DefaultSocket()+")")
	fl.StringVar(&f.tee, "tee", "", "TEE jobs run on: sim, snp or tdx (default sim)")
	fl.IntSliceVar(&f.allowUIDs, "allow-uid", nil, "uid allowed to submit jobs (repeatable; the agent's own uid always is)")
	fl.IntSliceVar(&f.allowGIDs, "allow-gid", nil, "primary gid allowed to submit jobs (repeatable)")
	fl.IntVar(&f.vms, "max-vms", 0, "concurrent VMs (default: CPUs / default vCPUs per job)")
	fl.IntVar(&f.vcpus, "vcpus", 0, "vCPUs the running jobs may hold together (default: the host's CPUs)")
	fl.IntVar(&f.memory, "memory", 0, "guest memory in MiB the running jobs may hold together (default: host memory minus 1 GiB)")
	fl.Int64Var(&f.minFreeDisk, "min-free-disk", 0, "bytes kept free in the state directory's file system (default 2 GiB)")
	fl.IntVar(&f.queueLimit, "queue-limit", 0, "jobs that may wait; one more is refused as busy (default 64)")
	fl.DurationVar(&f.maxWallClock, "max-wall-clock", 0, "longest any job may take from launch to end (default 2h)")
	fl.StringVar(&f.metrics, "metrics-listen", "", "TCP address for Prometheus metrics at /metrics (default: off)")
	fl.StringVar(&f.guestImage, "guest-image", "", "guest image directory (default: the state directory's, built on first use)")
	fl.StringVar(&f.toolchain, "toolchain", "", "toolchain image (default: gcc+make+libc6-dev from Debian, built on first use)")
	fl.StringVar(&f.key, "key", "", "signing key (default: the state directory's, created on first use)")
	fl.StringVar(&f.guestInit, "guest-init", "", "guest init binary for building the guest image (default: cloche-guest beside this executable)")
	fl.StringVar(&f.accel, "accel", "", "QEMU accelerator: auto, kvm or tcg (default auto)")
	fl.StringVar(&f.qemu, "qemu", "", "QEMU binary (default qemu-system-x86_64 from PATH)")
	cmd.AddCommand(newAgentStatusCmd(g), newAgentCancelCmd(g))
	return cmd
}

// agentConfig merges the configuration file, the flags and the state directory's
// defaults.
func agentConfig(cmd *cobra.Command, g *globals, f *agentFlags) (agent.Config, error) {
	var cfg agent.Config
	if f.config != "" {
		c, err := agent.LoadConfig(f.config)
		if err != nil {
			return cfg, usageError(fmt.Errorf("--config: %w", err))
		}
		cfg = *c
	}
	set := cmd.Flags().Changed
	setStr := func(flag string, dst *string, v string) {
		if set(flag) {
			*dst = v
		}
	}
	setInt := func(flag string, dst *int, v int) {
		if set(flag) {
			*dst = v
		}
	}
	setStr("socket", &cfg.Socket, f.socket)
	setStr("tee", &cfg.TEE, f.tee)
	setStr("metrics-listen", &cfg.MetricsListen, f.metrics)
	setStr("guest-image", &cfg.Launch.GuestImage, f.guestImage)
	setStr("toolchain", &cfg.Launch.Toolchain, f.toolchain)
	setStr("key", &cfg.Launch.SigningKey, f.key)
	setStr("accel", &cfg.Launch.Accel, f.accel)
	setStr("qemu", &cfg.Launch.QEMU, f.qemu)
	setInt("max-vms", &cfg.Budget.VMs, f.vms)
	setInt("vcpus", &cfg.Budget.VCPUs, f.vcpus)
	setInt("memory", &cfg.Budget.MemoryMiB, f.memory)
	setInt("queue-limit", &cfg.QueueLimit, f.queueLimit)
	if set("min-free-disk") {
		cfg.Budget.MinFreeDiskBytes = f.minFreeDisk
	}
	if set("max-wall-clock") {
		cfg.MaxWallClock = agent.Duration(f.maxWallClock)
	}
	if set("allow-uid") {
		cfg.AllowedUIDs = f.allowUIDs
	}
	if set("allow-gid") {
		cfg.AllowedGIDs = f.allowGIDs
	}
	if g.jsonLogs {
		cfg.LogJSON = true
	}
	if cfg.StateDir == "" || g.stateDir != "" {
		state, err := g.state()
		if err != nil {
			return cfg, err
		}
		cfg.StateDir = state
	}
	res, err := agent.DetectHost()
	if err != nil {
		return cfg, err
	}
	cfg = cfg.WithDefaults(res)
	if err := cfg.Validate(); err != nil {
		return cfg, usageError(err)
	}
	return cfg, nil
}

func runAgent(cmd *cobra.Command, g *globals, f *agentFlags) error {
	ctx := cmd.Context()
	cfg, err := agentConfig(cmd, g, f)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if g.verbose {
		level = slog.LevelDebug
	}
	var log *slog.Logger
	if cfg.LogJSON {
		log = slog.New(slog.NewJSONHandler(g.stderr, &slog.HandlerOptions{Level: level}))
	} else {
		log = slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: level}))
	}
	hc := cfg.HostConfig()
	hc.GuestInit, hc.Version, hc.Logger, hc.Progress = f.guestInit, version, log, g.progress()
	h, err := host.New(ctx, hc)
	if err != nil {
		return hostConfigError(err, configFields(agent.HostConfigFields))
	}
	if h.TEE() == attest.TEESim {
		log.Warn("SIMULATED TEE: the host plays the secure processor; the evidence of this agent's builds proves nothing about this host")
	}
	a, err := agent.New(agent.Options{
		Config:        cfg,
		Launcher:      agent.HostLauncher{Host: h},
		Logger:        log,
		Version:       version,
		PublicKeyPath: h.SigningKeyPath() + ".pub",
	})
	if err != nil {
		return err
	}
	return a.Serve(ctx)
}

// clientSocket is the agent a client command talks to.
func clientSocket(flag string) string {
	if flag != "" {
		return flag
	}
	if s := os.Getenv(agentSocketEnv); s != "" {
		return s
	}
	return agent.DefaultSocket()
}

func newAgentStatusCmd(g *globals) *cobra.Command {
	var socket string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the agent's queue, running jobs and budget",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			sock := clientSocket(socket)
			c := client.New(sock)
			defer c.Close()
			s, err := c.Status(cmd.Context())
			if err != nil {
				return agentUnreachable(sock, err)
			}
			if asJSON {
				enc := json.NewEncoder(g.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(s)
			}
			printAgentStatus(g.stdout, s, time.Now())
			return nil
		},
	}
	cmd.Flags().StringVar(&socket, "socket", "", "agent socket (default $"+agentSocketEnv+", else "+agent.DefaultSocket()+")")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	return cmd
}

func printAgentStatus(w io.Writer, s *agent.AgentStatus, now time.Time) {
	fmt.Fprintf(w, "cloche agent %s (API %s), TEE %s\n", s.Version, s.APIVersion, s.TEE)
	b, u := s.Budget, s.InUse
	fmt.Fprintf(w, "budget:  %d/%d VMs, %d/%d vCPUs, %d/%d MiB in use; %.1f GiB free disk (keeps %.1f GiB)\n",
		u.VMs, b.VMs, u.VCPUs, b.VCPUs, u.MemoryMiB, b.MemoryMiB, float64(s.FreeDiskBytes)/(1<<30), float64(b.MinFreeDiskBytes)/(1<<30))
	fmt.Fprintf(w, "queue:   %d waiting (limit %d)\n", len(s.Queued), s.QueueLimit)
	line := func(j agent.JobStatus, since time.Time) {
		fmt.Fprintf(w, "  %s  uid %-6d %-10s %8s  %s\n", j.ID, j.Submitter.UID, j.State, now.Sub(since).Round(time.Second), strings.Join(j.Spec.Command, " "))
		if j.Unsaved != "" {
			fmt.Fprintf(w, "      not saved: %s\n", j.Unsaved)
		}
	}
	for _, j := range s.Queued {
		line(j, j.SubmittedAt)
	}
	fmt.Fprintf(w, "running: %d\n", len(s.Running))
	for _, j := range s.Running {
		since := j.SubmittedAt
		if j.LaunchedAt != nil {
			since = *j.LaunchedAt
		}
		line(j, since)
	}
	var counts []string
	for _, st := range agent.States {
		counts = append(counts, fmt.Sprintf("%s %d", st, s.Counts[st]))
	}
	fmt.Fprintf(w, "jobs:    %s\n", strings.Join(counts, ", "))
}

func newAgentCancelCmd(g *globals) *cobra.Command {
	var socket string
	cmd := &cobra.Command{
		Use:   "cancel JOB-ID",
		Short: "Cancel a job on the agent (its VM is stopped)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sock := clientSocket(socket)
			c := client.New(sock)
			defer c.Close()
			st, err := c.Cancel(cmd.Context(), args[0])
			if err != nil {
				return agentUnreachable(sock, err)
			}
			fmt.Fprintf(g.stdout, "job %s: cancel requested (state %s)\n", st.ID, st.State)
			return nil
		},
	}
	cmd.Flags().StringVar(&socket, "socket", "", "agent socket (default $"+agentSocketEnv+", else "+agent.DefaultSocket()+")")
	return cmd
}

// configFields names each field as the agent's configuration file does ("config
// launch.guestImage").
func configFields(names map[string]string) map[string]string {
	out := make(map[string]string, len(names))
	for field, name := range names {
		out[field] = "config " + name
	}
	return out
}
