package guest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary double as the sandbox helper, as /init does in the guest.
func TestMain(m *testing.M) {
	if IsSandboxInvocation() {
		SandboxMain()
	}
	code := m.Run()
	if simSPDir != "" {
		os.RemoveAll(simSPDir)
	}
	if os.Getpid() == 1 {
		// /init of the VM in TestVerityInQEMU: returning would panic the kernel.
		powerOff()
	}
	os.Exit(code)
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (namespaces, chroot, mounts)")
	}
}

// runOnHost runs a shell script in the sandbox with the host's / as the build root.
func runOnHost(t *testing.T, script string, timeout time.Duration, logCap int64) (*CommandResult, string, string) {
	t.Helper()
	requireRoot(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var console bytes.Buffer
	logPath := filepath.Join(t.TempDir(), "log.txt")
	res, err := RunCommand(context.Background(), CommandSpec{
		Root: "/", Dir: "/", Argv: []string{"sh", "-c", script},
		Env: []string{"PATH=" + BuildPath, "HOME=/tmp"}, UID: BuildUID, GID: BuildGID,
		Timeout: timeout, Console: &console, LogPath: logPath, LogCap: logCap, SelfExe: exe,
	})
	if err != nil {
		t.Fatalf("RunCommand: %v", err)
	}
	logBytes, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(logBytes)
	if res.Log.SHA256 != hex.EncodeToString(sum[:]) || res.Log.Size != int64(len(logBytes)) {
		t.Fatalf("log digest %+v does not describe the %d-byte log file", res.Log, len(logBytes))
	}
	return res, string(logBytes), console.String()
}

func TestRunCommandExitCodeAndIdentity(t *testing.T) {
	res, log, console := runOnHost(t, `echo uid=$(id -u) gid=$(id -g) groups=$(id -G) init=$(tr '\0' ' ' </proc/1/cmdline); cat /proc/net/dev; exit 3`, 30*time.Second, 1<<20)
	if res.Err != nil || res.ExitCode != 3 {
		t.Fatalf("exit code %d, err %v; log:\n%s", res.ExitCode, res.Err, log)
	}
	// /proc is the new PID namespace's: its PID 1 is the sandbox helper, not the host's init.
	if !strings.Contains(log, "uid=1000 gid=1000 groups=1000 init=") || !strings.Contains(log, " "+SandboxArg) {
		t.Errorf("identity line missing or wrong; log:\n%s", log)
	}
	var ifaces []string
	for _, line := range strings.Split(log, "\n") {
		if name, _, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(name) != "" && !strings.Contains(name, "|") && !strings.Contains(line, "=") {
			ifaces = append(ifaces, strings.TrimSpace(name))
		}
	}
	if len(ifaces) != 1 || ifaces[0] != "lo" {
		t.Errorf("interfaces in /proc/net/dev: %v, expected only lo; log:\n%s", ifaces, log)
	}
	if console != log {
		t.Errorf("console saw %q, log has %q", console, log)
	}
}

// processRunning reports whether any host process has exactly argv.
func processRunning(t *testing.T, argv ...string) bool {
	t.Helper()
	want := strings.Join(argv, "\x00") + "\x00"
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err == nil && string(b) == want {
			return true
		}
	}
	return false
}

func TestRunCommandTimeoutKillsNamespace(t *testing.T) {
	start := time.Now()
	res, log, _ := runOnHost(t, `echo started; sleep 987651 & sleep 987652`, time.Second, 1<<20)
	if !errors.Is(res.Err, ErrCommandTimeout) || res.ExitCode != -1 {
		t.Fatalf("err %v, exit %d; expected a timeout and -1", res.Err, res.ExitCode)
	}
	if el := time.Since(start); el > 15*time.Second {
		t.Errorf("timeout took %s", el)
	}
	if !strings.HasPrefix(log, "started\n") || !strings.Contains(log, "cloche: command exceeded its time limit of 1s and was killed") {
		t.Errorf("log %q lacks the output or the timeout note", log)
	}
	for _, arg := range []string{"987651", "987652"} {
		if processRunning(t, "sleep", arg) {
			t.Errorf("sleep %s survived the timeout", arg)
		}
	}
}

func TestRunCommandOrphansDieWithTheCommand(t *testing.T) {
	res, log, _ := runOnHost(t, `(sleep 987653 &); exit 0`, 30*time.Second, 1<<20)
	if res.Err != nil || res.ExitCode != 0 {
		t.Fatalf("err %v, exit %d; log %q", res.Err, res.ExitCode, log)
	}
	if processRunning(t, "sleep", "987653") {
		t.Error("a background process outlived the command")
	}
}

func TestRunCommandSignal(t *testing.T) {
	res, _, _ := runOnHost(t, `kill -KILL $$`, 30*time.Second, 1<<20)
	if res.Err == nil || !strings.Contains(res.Err.Error(), "killed by signal 9 (SIGKILL)") || res.ExitCode != -1 {
		t.Fatalf("err %v, exit %d; expected killed by SIGKILL and -1", res.Err, res.ExitCode)
	}
}

func TestRunCommandLogCap(t *testing.T) {
	res, log, console := runOnHost(t, `i=0; while [ $i -lt 100 ]; do echo 0123456789012345678901234567890123456789; i=$((i+1)); done`, 30*time.Second, 100)
	if res.Err != nil || res.ExitCode != 0 {
		t.Fatalf("err %v, exit %d", res.Err, res.ExitCode)
	}
	if len(log) != 100 || res.Log.Size != 100 || !res.LogTruncated || res.LogTotal != 4100 {
		t.Errorf("log %d bytes (digest size %d), truncated %v, total %d; expected 100, true, 4100", len(log), res.Log.Size, res.LogTruncated, res.LogTotal)
	}
	if !strings.HasPrefix(console, log) || !strings.Contains(console, "build log reached the 100-byte cap") {
		t.Errorf("console %q lacks the kept log or the cap note", console)
	}
}

func TestRunCommandNotFound(t *testing.T) {
	requireRoot(t)
	exe, _ := os.Executable()
	logPath := filepath.Join(t.TempDir(), "log.txt")
	res, err := RunCommand(context.Background(), CommandSpec{
		Root: "/", Dir: "/", Argv: []string{"cloche-no-such-command"}, UID: BuildUID, GID: BuildGID,
		Timeout: time.Minute, Console: &bytes.Buffer{}, LogPath: logPath, LogCap: 1 << 20, SelfExe: exe,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(res.Err, ErrCommandNotFound) || res.ExitCode != -1 ||
		res.Err.Error() != "command not found: cloche-no-such-command (searched PATH inside the toolchain: "+BuildPath+")" {
		t.Fatalf("err %v, exit %d", res.Err, res.ExitCode)
	}
	b, _ := os.ReadFile(logPath)
	if !strings.Contains(string(b), "command not found: cloche-no-such-command") {
		t.Errorf("log %q does not say the command was not found", b)
	}
}

func TestRunCommandWorkdirAndEnv(t *testing.T) {
	requireRoot(t)
	exe, _ := os.Executable()
	// Not under /tmp: the sandbox mounts a fresh tmpfs there.
	work, err := os.MkdirTemp("/var/tmp", "cloche-guest-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	if err := os.Chmod(work, 0o755); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "log.txt")
	res, err := RunCommand(context.Background(), CommandSpec{
		Root: "/", Dir: work, Argv: []string{"sh", "-c", `echo "$PWD $HOME $FOO"; touch /tmp/x && ls /tmp; ls -l /dev/null`},
		Env: []string{"PATH=" + BuildPath, "HOME=/tmp", "FOO=bar baz"}, UID: BuildUID, GID: BuildGID,
		Timeout: time.Minute, Console: &bytes.Buffer{}, LogPath: logPath, LogCap: 1 << 20, SelfExe: exe,
	})
	if err != nil || res.Err != nil || res.ExitCode != 0 {
		b, _ := os.ReadFile(logPath)
		t.Fatalf("err %v / %v, exit %d; log %s", err, res.Err, res.ExitCode, b)
	}
	b, _ := os.ReadFile(logPath)
	lines := strings.Split(string(b), "\n")
	if lines[0] != work+" /tmp bar baz" || lines[1] != "x" || !strings.HasPrefix(lines[2], "crw-rw-rw-") {
		t.Errorf("log %q: expected workdir, HOME, env, a fresh private /tmp and a usable /dev/null", b)
	}
}
