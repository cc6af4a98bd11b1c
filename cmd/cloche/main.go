// Command cloche runs confidential, attested builds and verifies their provenance.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// version and commit are set at build time with -ldflags "-X main.version=... -X
// main.commit=..." (the Makefile does).
var (
	version = "0.1.0-dev"
	commit  = ""
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes the CLI with explicit streams, so tests drive it in-process.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g := &globals{stdout: stdout, stderr: stderr}
	root := newRootCmd(g)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	code := exitCode(err)
	if err != nil && err.Error() != "" {
		g.reporter().Error(err, code)
	}
	return code
}

func newRootCmd(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:           "cloche",
		Short:         "Confidential, attested builds with hardware-rooted SLSA provenance",
		Long:          "Confidential, attested builds with hardware-rooted SLSA provenance.\n\n" + exitCodesHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(g.stdout)
	root.SetErr(g.stderr)
	root.PersistentFlags().StringVar(&g.stateDir, "state-dir", "", "state directory (keys, images, simulated TEE); default $CLOCHE_STATE_DIR, /var/lib/cloche as root, else ~/.local/state/cloche")
	root.PersistentFlags().BoolVar(&g.jsonLogs, "log-json", false, "write every line on stderr as a JSON object (slog), errors and check results included")
	root.PersistentFlags().BoolVarP(&g.verbose, "verbose", "v", false, "more log output")
	root.AddCommand(
		newVersionCmd(g),
		newRunCmd(g),
		newVerifyCmd(g),
		newRebuildCmd(g),
		newMeasureCmd(g),
		newReferenceCmd(g),
		newImageCmd(g),
		newSimRootCmd(g),
		newStateDirCmd(g),
		newEvidenceCmd(g),
		newDoctorCmd(g),
		newSelftestCmd(g),
		newActionCmd(g),
		newAgentCmd(g),
	)
	usageErrors(root)
	deprecationsToStderr(root, g.stderr)
	return root
}

// usageErrors makes cobra's own input errors (unknown flag, wrong argument count, unknown
// subcommand) exit with exitUsage, on every command.
func usageErrors(root *cobra.Command) {
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError(err) })
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		switch {
		case c.Args != nil:
			args := c.Args
			c.Args = func(cmd *cobra.Command, a []string) error {
				if err := args(cmd, a); err != nil {
					return usageError(err)
				}
				return nil
			}
		case c.HasSubCommands() && !c.Runnable():
			// A command group: no arguments but a known subcommand; alone, it shows its help.
			c.Args = func(cmd *cobra.Command, a []string) error {
				if len(a) > 0 {
					return usageError(fmt.Errorf("unknown command %q for %q (see %s --help)", a[0], cmd.CommandPath(), cmd.CommandPath()))
				}
				return nil
			}
			c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// deprecationsToStderr sends pflag's notices about deprecated flag names to stderr: stdout
// carries only a command's result.
func deprecationsToStderr(c *cobra.Command, w io.Writer) {
	c.Flags().SetOutput(w)
	for _, sub := range c.Commands() {
		deprecationsToStderr(sub, w)
	}
}
