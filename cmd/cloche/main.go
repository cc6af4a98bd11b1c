// Command cloche runs confidential, attested builds and verifies their provenance.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// version is set at release time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

// exitError carries a specific exit code through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes the CLI with explicit streams, so tests drive it in-process.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil && ee.err.Error() != "" {
			fmt.Fprintln(stderr, ee.err)
		}
		return ee.code
	}
	fmt.Fprintln(stderr, "error:", err)
	return 1
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "cloche",
		Short:         "Confidential, attested builds with hardware-rooted SLSA provenance",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&g.stateDir, "state-dir", "", "state directory (keys, images, simulated TEE); default $CLOCHE_STATE_DIR, /var/lib/cloche as root, else ~/.local/state/cloche")
	root.PersistentFlags().BoolVar(&g.jsonLogs, "log-json", false, "write logs as JSON")
	root.PersistentFlags().BoolVarP(&g.verbose, "verbose", "v", false, "more log output")
	root.AddCommand(
		newVersionCmd(g),
		newRunCmd(g),
		newVerifyCmd(g),
		newMeasureCmd(g),
		newReferenceCmd(g),
		newImageCmd(g),
		newSimRootCmd(g),
		newEvidenceCmd(g),
		newDoctorCmd(g),
		newActionCmd(g),
		newAgentCmd(g),
	)
	return root
}

func newVersionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the cloche version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Fprintf(g.stdout, "cloche %s\n", version)
			return nil
		},
	}
}
