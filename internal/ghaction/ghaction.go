// Package ghaction is the Go side of cloche's two GitHub Actions: the build action
// (action.yml: one confidential build on a self-hosted TEE runner, keyless signing, release
// publishing) and the verify action (verify/action.yml: download a release and verify it).
//
// Both run as the runner runs them: inputs from INPUT_* variables, the workflow context
// from GITHUB_*, outputs and the step summary through the GITHUB_OUTPUT and
// GITHUB_STEP_SUMMARY files, the OIDC token from ACTIONS_ID_TOKEN_REQUEST_URL, all through
// go-githubactions. Errors are reported as annotations and returned; the caller exits
// non-zero.
package ghaction

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/sethvargo/go-githubactions"

	"github.com/cloche-dev/cloche/internal/release"
)

// ErrInput: an action input or the workflow context is missing or malformed.
var ErrInput = errors.New("invalid action input")

// Runner is how the action meets the runner: its environment, its log (stdout) and an HTTP
// client for the token service and the GitHub API.
type Runner struct {
	Getenv     func(string) string
	Stdout     io.Writer
	HTTPClient *http.Client
	Logger     *slog.Logger
	// Release tunes the release client (retries); zero values take its defaults.
	Release release.Options
}

func (r *Runner) action() *githubactions.Action {
	opts := []githubactions.Option{githubactions.WithGetenv(r.Getenv), githubactions.WithWriter(r.Stdout)}
	if r.HTTPClient != nil {
		opts = append(opts, githubactions.WithHTTPClient(r.HTTPClient))
	}
	return githubactions.New(opts...)
}

func (r *Runner) logger() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// requireFileCommands fails early when the runner's file-command variables are missing:
// go-githubactions panics on a file command without its file.
func requireFileCommands(a *githubactions.Action) error {
	for _, v := range []string{"GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY"} {
		if a.Getenv(v) == "" {
			return fmt.Errorf("%w: %s is not set: the action must run inside a GitHub Actions job", ErrInput, v)
		}
	}
	return nil
}

// input reads an action input. The runner passes inputs of JavaScript and Docker actions
// as INPUT_<NAME> with dashes kept (INPUT_GITHUB-TOKEN); a composite action sets its own
// environment, where names with dashes are awkward, so INPUT_GITHUB_TOKEN is read too.
func input(a *githubactions.Action, name string) string {
	if v := a.GetInput(name); v != "" {
		return v
	}
	return a.GetInput(strings.ReplaceAll(name, "-", "_"))
}

// boolInput parses a boolean input ("" is false).
func boolInput(a *githubactions.Action, name string) (bool, error) {
	v := input(a, name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%w: input %s is %q, expected true or false", ErrInput, name, v)
	}
	return b, nil
}

// boolInputDefault parses a boolean input whose absence means def.
func boolInputDefault(a *githubactions.Action, name string, def bool) (bool, error) {
	if input(a, name) == "" {
		return def, nil
	}
	return boolInput(a, name)
}

// listInput splits a multi-line or comma-separated input, dropping blanks.
func listInput(a *githubactions.Action, name string) []string {
	var out []string
	for _, line := range strings.FieldsFunc(input(a, name), func(r rune) bool { return r == '\n' || r == ',' }) {
		if s := strings.TrimSpace(line); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// pushedTag is the tag a push event ran for, or "".
func pushedTag(ref string) string {
	if t, ok := strings.CutPrefix(ref, "refs/tags/"); ok {
		return t
	}
	return ""
}

// stopCommands keeps a build's log from issuing workflow commands: the build script is the
// user's, but its output passes through the untrusted host and could otherwise set
// outputs or masks. It returns the line that resumes command processing.
func stopCommands(w io.Writer) (resume string) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	token := hex.EncodeToString(b[:])
	fmt.Fprintf(w, "::stop-commands::%s\n", token)
	return "::" + token + "::\n"
}

// mdEscape keeps a value from breaking a markdown table cell.
func mdEscape(s string) string {
	r := strings.NewReplacer("|", `\|`, "\n", " ", "\r", " ", "<", "&lt;", ">", "&gt;")
	return r.Replace(s)
}
