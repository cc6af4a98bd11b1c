package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"github.com/cloche-dev/cloche/internal/agent"
	"github.com/cloche-dev/cloche/internal/agent/client"
	"github.com/cloche-dev/cloche/internal/host"
)

// The test binary doubles as the child processes some tests need: an agent that a test
// can kill -9, and clients running as another user.
const childEnv = "CLOCHE_RUNNER_TEST_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "":
		os.Exit(m.Run())
	case "agent":
		os.Exit(childAgent())
	case "status":
		os.Exit(childStatus())
	case "hog":
		os.Exit(childHog())
	case "submitter":
		os.Exit(childSubmitter())
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", childEnv, os.Getenv(childEnv))
		os.Exit(2)
	}
}

// childAgent runs a real agent (build.Run launcher) from the JSON configuration in
// CLOCHE_RUNNER_TEST_CONFIG until SIGTERM.
func childAgent() int {
	var cfg agent.Config
	if err := json.Unmarshal([]byte(os.Getenv("CLOCHE_RUNNER_TEST_CONFIG")), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "child agent config:", err)
		return 2
	}
	res, _ := agent.DetectHost()
	cfg = cfg.WithDefaults(res)
	hc := cfg.HostConfig()
	hc.SimDir, hc.Version = os.Getenv("CLOCHE_RUNNER_TEST_SIMDIR"), "0.1.0-test"
	h, err := host.New(context.Background(), hc)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	a, err := agent.New(agent.Options{
		Config:        cfg,
		Launcher:      agent.HostLauncher{Host: h},
		Logger:        slog.New(slog.NewTextHandler(os.Stderr, nil)),
		Version:       "0.1.0-test",
		PublicKeyPath: cfg.Launch.SigningKey + ".pub",
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := a.Serve(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// childStatus asks the agent at CLOCHE_RUNNER_TEST_SOCKET for its status and for the job
// in CLOCHE_RUNNER_TEST_JOB, printing each error on its own line.
func childStatus() int {
	c := client.New(os.Getenv("CLOCHE_RUNNER_TEST_SOCKET"))
	defer c.Close()
	ok := true
	if s, err := c.Status(context.Background()); err != nil {
		fmt.Println("status:", err)
		ok = false
	} else {
		for _, j := range s.Running {
			if len(j.Spec.Env) > 0 {
				fmt.Println("status: another user's environment is visible")
			}
			if len(j.Spec.Command) > 0 {
				fmt.Println("status: another user's command line is visible:", j.Spec.Command)
			}
		}
	}
	if id := os.Getenv("CLOCHE_RUNNER_TEST_JOB"); id != "" {
		if _, err := c.Job(context.Background(), id); err != nil {
			fmt.Println("job:", err)
			ok = false
		}
		if _, err := c.Cancel(context.Background(), id); err != nil {
			fmt.Println("cancel:", err)
			ok = false
		}
	}
	if !ok {
		return 3
	}
	return 0
}
