package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
)

// globals are the root command's persistent settings, passed to each subcommand (no
// package-level state).
type globals struct {
	stdout, stderr io.Writer
	stateDir       string
	jsonLogs       bool
	verbose        bool
}

func (g *globals) logger() *slog.Logger {
	level := slog.LevelWarn
	if g.verbose {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if g.jsonLogs {
		return slog.New(slog.NewJSONHandler(g.stderr, opts))
	}
	return slog.New(slog.NewTextHandler(g.stderr, opts))
}

// state returns the state directory, creating it (0700: it holds the signing key and the
// simulated secure processor's keys).
func (g *globals) state() (string, error) {
	dir := g.stateDir
	if dir == "" {
		dir = os.Getenv("CLOCHE_STATE_DIR")
	}
	if dir == "" {
		if os.Geteuid() == 0 {
			dir = "/var/lib/cloche"
		} else {
			home, err := os.UserHomeDir()
			if err != nil {
				return "", fmt.Errorf("no state directory: set --state-dir or CLOCHE_STATE_DIR: %w", err)
			}
			dir = filepath.Join(home, ".local", "state", "cloche")
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("state directory %s: %w", dir, err)
	}
	return dir, nil
}

// Layout of the state directory.
func guestImageDir(state string) string  { return filepath.Join(state, "guest-image") }
func simTEEDir(state string) string      { return filepath.Join(state, "sim-tee") }
func signingKeyPath(state string) string { return filepath.Join(state, "signing-key.pem") }
func kernelCacheDir(state string) string { return filepath.Join(state, "cache", "kernel") }

// guestAgentPath finds the static guest agent binary: next to this executable, as the
// Makefile and release archives place it.
func guestAgentPath() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	p := filepath.Join(filepath.Dir(exe), "cloche-guest")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("guest agent not found at %s (build it with `make build`, or pass --guest-agent): %w", p, err)
	}
	return p, nil
}
