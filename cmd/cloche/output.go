package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"

	"github.com/cloche-dev/cloche/internal/build"
	"github.com/cloche-dev/cloche/internal/vmm"
)

// Exit codes, the same for every command (README, "Exit codes"; the root command's --help).
const (
	exitOK     = 0
	exitFailed = 1 // a check failed, or the build failed
	exitUsage  = 2 // usage error or bad input: nothing was started
	exitHost   = 3 // this host cannot run it (TEE unavailable, QEMU missing)
)

// exitCodesHelp is the exit code table as the root command's --help shows it.
const exitCodesHelp = `Exit codes (every command):
  0  success
  1  a check failed, or the build failed
  2  usage error or bad input (unknown flag, wrong arguments, a value out of range)
  3  this host cannot run it (TEE unavailable, QEMU missing)`

// exitError carries a specific exit code through cobra. A nil or empty err means the
// message was reported already.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return ""
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

// usageError is bad input: exit code 2.
func usageError(err error) error { return &exitError{code: exitUsage, err: err} }

// hostError is a host that cannot run the request: exit code 3.
func hostError(err error) error { return &exitError{code: exitHost, err: err} }

// exitCode classifies an error returned by a command.
func exitCode(err error) int {
	var ee *exitError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ee):
		return ee.code
	case errors.Is(err, build.ErrInput):
		return exitUsage
	case errors.Is(err, vmm.ErrTEEUnavailable), errors.Is(err, exec.ErrNotFound):
		return exitHost
	}
	return exitFailed
}

// reporter writes what a command tells the user on stderr: log lines as slog text, or
// with --log-json every line, the error:, FAILED:, WARNING: and PASSED: lines included, as
// one JSON object each.
type reporter struct {
	w    io.Writer
	json bool
	// log carries the notices (Info), always shown; libraries get logger(verbose).
	log *slog.Logger
}

func newReporter(w io.Writer, asJSON bool) *reporter {
	return &reporter{w: w, json: asJSON, log: slog.New(handler(w, asJSON, slog.LevelInfo))}
}

func handler(w io.Writer, asJSON bool, level slog.Level) slog.Handler {
	opts := &slog.HandlerOptions{Level: level}
	if asJSON {
		return slog.NewJSONHandler(w, opts)
	}
	return slog.NewTextHandler(w, opts)
}

// logger is the logger handed to libraries: warnings, and with -v their progress.
func (r *reporter) logger(verbose bool) *slog.Logger {
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelInfo
	}
	return slog.New(handler(r.w, r.json, level))
}

// Info is a notice: what the command is doing, or did.
func (r *reporter) Info(msg string, args ...any) { r.log.Info(msg, args...) }

// Warning is something the user must know that does not stop the command.
func (r *reporter) Warning(msg string) {
	if r.json {
		r.log.Warn(msg)
		return
	}
	fmt.Fprintln(r.w, "WARNING: "+msg)
}

// Error reports the error that ends the command, with the exit code it causes.
func (r *reporter) Error(err error, code int) {
	if r.json {
		r.log.Error(err.Error(), "exit_code", code)
		return
	}
	fmt.Fprintln(r.w, "error:", err)
}

// Failed reports a failed check: FAILED: <check>: <reason>.
func (r *reporter) Failed(check string, reason error) {
	if r.json {
		r.log.Error(reason.Error(), "result", "FAILED", "check", check)
		return
	}
	fmt.Fprintf(r.w, "FAILED: %s: %v\n", check, reason)
}

// Passed reports that every check passed: PASSED: <summary>.
func (r *reporter) Passed(summary string) {
	if r.json {
		r.log.Info(summary, "result", "PASSED")
		return
	}
	fmt.Fprintf(r.w, "PASSED: %s\n", summary)
}
