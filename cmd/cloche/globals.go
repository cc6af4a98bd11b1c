package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/cloche-dev/cloche/internal/host"
	"github.com/cloche-dev/cloche/internal/progress"
)

// globals are the root command's persistent settings, passed to each subcommand (no
// package-level state).
type globals struct {
	stdout, stderr io.Writer
	stateDir       string
	jsonLogs       bool
	verbose        bool
	// meter shows the phases of long work; made on first use, once the flags are parsed.
	meter *progress.Meter
}

// reporter writes the command's lines on stderr, as slog text or with --log-json as JSON.
func (g *globals) reporter() *reporter { return newReporter(g.errOut(), g.jsonLogs) }

// progress is the meter for long work (toolchain image, kernel download, guest image, VM
// run): a live line when stderr is a terminal, timestamped lines otherwise.
func (g *globals) progress() *progress.Meter {
	if g.meter == nil {
		live := !g.jsonLogs && isTerminal(g.stderr)
		g.meter = progress.New(progress.Options{Live: live, Terminal: g.stderr, Log: newReporter(g.stderr, g.jsonLogs).log})
	}
	return g.meter
}

// errOut is stderr, through the meter's live-line handling once there is one.
func (g *globals) errOut() io.Writer { return g.meter.Writer(g.stderr) }

// logger is what libraries log through: warnings, and with -v their progress.
func (g *globals) logger() *slog.Logger { return g.reporter().logger(g.verbose) }

// stateDirPath is the state directory's path without creating it ("" if there is none).
func (g *globals) stateDirPath() string {
	if g.stateDir != "" {
		return g.stateDir
	}
	return host.DefaultStateDir()
}

// state returns the state directory, creating it (0700: it holds the signing key and the
// simulated secure processor's keys).
func (g *globals) state() (string, error) {
	dir := g.stateDirPath()
	if dir == "" {
		return "", errors.New("no state directory: set --state-dir or CLOCHE_STATE_DIR (no home directory to default to)")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("state directory %s: %w", dir, err)
	}
	return dir, nil
}
