package main

import (
	"bytes"
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// TestFlagValueNames walks every command's flags: the value name --help shows (cobra takes
// a `backquoted` word of the usage as it) is one word, so --help never reads
// "--reference-values cloche reference create".
func TestFlagValueNames(t *testing.T) {
	sane := regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]*$`)
	root := newRootCmd(&globals{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}})
	n := 0
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		check := func(f *pflag.Flag) {
			n++
			name, usage := pflag.UnquoteUsage(f)
			if name != "" && !sane.MatchString(name) {
				t.Errorf("%s --%s: value name %q (usage %q)", c.CommandPath(), f.Name, name, usage)
			}
		}
		c.LocalFlags().VisitAll(check)
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	if n < 50 {
		t.Fatalf("walked only %d flags", n)
	}
}

// TestExitCodes: one table for every command. Usage errors from cobra itself (unknown flag,
// wrong argument count, unknown subcommand) and bad values are 2; a host that cannot run
// the request is 3; a failed check is 1. The root command's --help shows the table.
func TestExitCodes(t *testing.T) {
	state := t.TempDir()
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"version", "--nope"}, exitUsage, "unknown flag: --nope"},
		{[]string{"version", "extra"}, exitUsage, `unknown command "extra"`},
		{[]string{"nonsense"}, exitUsage, `unknown command "nonsense" for "cloche"`},
		{[]string{"image", "nonsense"}, exitUsage, `unknown command "nonsense" for "cloche image"`},
		{[]string{"run", "--nope", "--", "make"}, exitUsage, "unknown flag: --nope"},
		{[]string{"run", "--vcpus", "many", "--", "make"}, exitUsage, `invalid argument "many" for "--vcpus"`},
		{[]string{"agent", "cancel"}, exitUsage, "accepts 1 arg(s), received 0"},
		{[]string{"evidence", "show"}, exitUsage, "accepts 1 arg(s), received 0"},
		{[]string{"measure", "--tee", "sim", "--vcpus", "0", "--kernel", "k", "--initrd", "i", "--cmdline", ""}, exitUsage, "--vcpus 0"},
		{[]string{"verify", "--bundle", "b"}, exitUsage, "--key is required"},
		{[]string{"verify", "--bundle", "b", "--key", "k.pub", "--source-uri", "github.com/a/b", "x"}, exitUsage, "--source-uri, --source-branch and --signer-workflow need keyless verification"},
		{[]string{"doctor", "--require", "sgx"}, exitUsage, "expected snp or tdx"},
		{[]string{"agent", "--state-dir", state, "--tee", "sgx"}, exitUsage, `tee "sgx"`},
		{[]string{"agent", "status", "--socket", state + "/none.sock"}, exitHost, "no cloche agent is listening at " + state + "/none.sock: start it with `systemctl start cloche-agent`"},
		{[]string{"evidence", "show", "/nonexistent-evidence"}, exitFailed, "/nonexistent-evidence"},
	} {
		code, _, stderr := cli(t, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("cloche %s: exit %d, stderr %q; want exit %d and %q", strings.Join(tc.args, " "), code, stderr, tc.code, tc.want)
		}
		if strings.HasSuffix(strings.TrimSpace(stderr), ":") {
			t.Errorf("cloche %s: the error ends in a dangling colon: %q", strings.Join(tc.args, " "), stderr)
		}
	}
	code, stdout, _ := cli(t, "--help")
	if code != 0 || !strings.Contains(stdout, exitCodesHelp) {
		t.Errorf("cloche --help (exit %d) lacks the exit code table:\n%s", code, stdout)
	}
}

// TestLogJSON: with --log-json every line on stderr is a JSON object, the error line
// included, and it carries the exit code.
func TestLogJSON(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"--log-json", "run", "--source", t.TempDir(), "--memory", "1", "--", "make"}, &stdout, &stderr)
	if code != exitUsage {
		t.Fatalf("exit %d, want %d", code, exitUsage)
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	for _, l := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("not JSON: %q", l)
		}
	}
	var rec struct {
		Level    string `json:"level"`
		Msg      string `json:"msg"`
		ExitCode int    `json:"exit_code"`
	}
	json.Unmarshal([]byte(lines[len(lines)-1]), &rec)
	if rec.Level != "ERROR" || rec.ExitCode != exitUsage || !strings.Contains(rec.Msg, "--memory 1: expected") {
		t.Errorf("error record %+v", rec)
	}

	stderr.Reset()
	r := newReporter(&stderr, true)
	r.Failed("signature", errString("bad"))
	r.Warning("careful")
	r.Passed("all good")
	for _, l := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("not JSON: %q", l)
		}
	}
	if !strings.Contains(stderr.String(), `"result":"FAILED","check":"signature"`) || !strings.Contains(stderr.String(), `"result":"PASSED"`) {
		t.Errorf("FAILED/PASSED records: %s", stderr.String())
	}
}

type errString string

func (e errString) Error() string { return string(e) }
