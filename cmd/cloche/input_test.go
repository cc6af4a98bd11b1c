package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRunBadInputFailsFast: each bad input to `cloche run` fails with exit code 2 within a
// second, naming the flag and what was expected, before anything expensive: the state
// directory gets no guest image, kernel or toolchain (the local path builds them on first
// use), and the agent path never dials the agent (its socket does not exist, which would
// be exit 3).
func TestRunBadInputFailsFast(t *testing.T) {
	src := t.TempDir()
	afile := filepath.Join(t.TempDir(), "afile")
	if err := os.WriteFile(afile, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"out is a file", []string{"--out", afile}, `--out "` + afile + `": is a file, expected a directory`},
		{"out below a file", []string{"--out", filepath.Join(afile, "sub")}, afile + " is a file, expected a directory"},
		{"out not writable", []string{"--out", "/sys/cloche-test-out"}, `--out "/sys/cloche-test-out": expected a writable directory: /sys`},
		{"source missing", []string{"--source", filepath.Join(src, "nope")}, "--source \"" + filepath.Join(src, "nope") + "\": expected an existing directory"},
		{"source is a file", []string{"--source", afile}, `--source "` + afile + `": is a file, expected a directory`},
		{"vcpus 0", []string{"--vcpus", "0"}, "--vcpus 0: expected 1..255 vCPUs"},
		{"vcpus too many", []string{"--vcpus", "256"}, "--vcpus 256: expected 1..255 vCPUs"},
		{"memory 1", []string{"--memory", "1"}, "--memory 1: expected 128..1048576 MiB"},
		{"memory too much", []string{"--memory", "2000000"}, "--memory 2000000: expected 128..1048576 MiB"},
		{"unknown tee", []string{"--tee", "sgx"}, `--tee "sgx": expected auto, snp, tdx or sim`},
		{"unknown snp product", []string{"--snp-product", "Rome"}, `--snp-product "Rome": expected Milan or Genoa`},
		{"timeout 0", []string{"--timeout", "0s"}, "--timeout 0s: expected a duration of at least 1s"},
		{"timeout negative", []string{"--timeout", "-5m"}, "--timeout -5m0s: expected a duration of at least 1s"},
		{"max-output 0", []string{"--max-output", "0"}, "--max-output 0: expected a positive number of bytes"},
		{"max-processes too many", []string{"--max-processes", "5000000"}, "--max-processes 5000000: expected at most 4194304"},
		{"max-open-files too few", []string{"--max-open-files", "3"}, "--max-open-files 3: expected at least 16"},
		{"workdir outside", []string{"--workdir", "../x"}, `--workdir "../x": expected a clean relative path`},
		{"artifact absolute", []string{"--artifact", "/etc/passwd"}, `--artifact "/etc/passwd": expected a clean relative path pattern`},
		{"env malformed", []string{"--env", "NOEQUALS"}, `--env "NOEQUALS": expected NAME=VALUE`},
		{"env bad name", []string{"--env", "1X=y"}, `--env "1X=y": expected NAME=VALUE with NAME of letters`},
		{"empty command", []string{"--", ""}, `COMMAND [""]: expected a command to run`},
		{"no command", []string{"--"}, "no build command: expected cloche run [flags] -- COMMAND [ARGS...]"},
		{"deps unknown", []string{"--deps", "cargo"}, `--deps "cargo": expected "go", "npm" or none`},
		{"deps npm without package.json", []string{"--deps", "npm"}, `--deps "npm": the source has no package.json`},
		{"accel", []string{"--accel", "hvf"}, `--accel "hvf": expected auto, kvm or tcg`},
		{"rekor-url", []string{"--rekor-url", "rekor.example"}, `--rekor-url: transparency log URL "rekor.example": expected an http(s) URL`},
		{"commit outside a checkout", []string{"--commit", "HEAD"}, "--commit HEAD: not a git checkout"},
		{"tag ref without a commit", []string{"--ref", "refs/tags/v1"}, "--ref refs/tags/v1 names a tag: give --commit too"},
		{"guest image release not a tag", []string{"--guest-image-release", "latest"}, `--guest-image-release/--guest-image-repository: release tag "latest": expected vX.Y.Z`},
		{"guest image release and dir", []string{"--guest-image-release", "v1.0.0", "--guest-image", src}, "--guest-image and --guest-image-release: give one"},
		{"toolchain image by tag", []string{"--toolchain-image", "registry.example/tools/cc:14"}, `--toolchain-image: sourceImage "registry.example/tools/cc:14" must end in @sha256:`},
		{"toolchain image and toolchain", []string{"--toolchain", afile, "--toolchain-image", "registry.example/tools/cc@sha256:" + strings.Repeat("a", 64)}, "--toolchain and --toolchain-image: give one"},
	} {
		for _, path := range []string{"local", "agent"} {
			if path == "agent" && (tc.name == "accel" || tc.name == "rekor-url" || strings.HasPrefix(tc.name, "guest image release") || strings.HasPrefix(tc.name, "toolchain image")) {
				continue // refused on the agent path for another reason: the agent decides
			}
			t.Run(tc.name+"/"+path, func(t *testing.T) {
				state := t.TempDir()
				args := []string{"run", "--state-dir", state, "--source", src, "--out", filepath.Join(t.TempDir(), "out"), "--tee", "sim"}
				if path == "agent" {
					args = append(args, "--agent", filepath.Join(state, "no-agent.sock"))
				}
				args = append(args, tc.args...)
				if !hasDashDash(tc.args) {
					args = append(args, "--", "make")
				}
				start := time.Now()
				code, stdout, stderr := cli(t, args...)
				took := time.Since(start)
				if code != exitUsage || !strings.Contains(stderr, tc.want) {
					t.Fatalf("exit %d, stderr %q; want exit %d and %q", code, stderr, exitUsage, tc.want)
				}
				if !strings.HasPrefix(stderr, "error: ") || strings.Count(stderr, "\n") != 1 || stdout != "" {
					t.Errorf("want one error line on stderr and nothing on stdout; got stdout %q stderr %q", stdout, stderr)
				}
				if took > time.Second {
					t.Errorf("took %s, want under a second", took)
				}
				if entries, _ := os.ReadDir(state); len(entries) != 0 {
					t.Errorf("the state directory got %v: something was prepared before the input was checked", names(entries))
				}
			})
		}
	}
}

func hasDashDash(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return true
		}
	}
	return false
}

func names(entries []os.DirEntry) []string {
	var n []string
	for _, e := range entries {
		n = append(n, e.Name())
	}
	return n
}

// The agent signs with its own key and no log: --rekor-url cannot be chosen per job, and is
// refused rather than ignored.
func TestRunRekorURLRefusedOnAgent(t *testing.T) {
	state := t.TempDir()
	code, _, stderr := cli(t, "run", "--state-dir", state, "--agent", filepath.Join(state, "no-agent.sock"), "--source", t.TempDir(),
		"--rekor-url", "https://rekor.example", "--", "true")
	if code != exitUsage || !strings.Contains(stderr, "--rekor-url is set by the agent's configuration") {
		t.Errorf("exit %d, stderr %q; want exit %d refusing --rekor-url", code, stderr, exitUsage)
	}
}

// TestRunCommitChecked: --commit reads the commit from --source's checkout and refuses a
// checkout that is not its commit, or a --ref of another tag, before anything is prepared.
func TestRunCommitChecked(t *testing.T) {
	src, sha := gitCheckout(t, map[string]string{"README": "x\n"})
	if err := os.WriteFile(filepath.Join(src, "untracked"), []byte("y"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--commit", "HEAD"}, "differs from commit " + sha},
		{[]string{"--commit", "nope"}, `--commit nope: not a git checkout: commit "nope" is not in the checkout`},
		{[]string{"--commit", "HEAD", "--ref", "refs/tags/v9"}, "--commit HEAD: tag not in the checkout: refs/tags/v9"},
	} {
		state := t.TempDir()
		args := append([]string{"run", "--state-dir", state, "--source", src, "--out", filepath.Join(t.TempDir(), "out"), "--tee", "sim"}, tc.args...)
		code, _, stderr := cli(t, append(args, "--", "make")...)
		if code != exitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", tc.args, code, stderr, exitUsage, tc.want)
		}
		if entries, _ := os.ReadDir(state); len(entries) != 0 {
			t.Errorf("%v: the state directory got %v", tc.args, names(entries))
		}
	}
}
