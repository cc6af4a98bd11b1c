package agent_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/internal/agent"
)

// TestLeftoverSweepKillsProcessGroup: the sweep kills a leftover QEMU's whole process
// group (vmm makes QEMU a group leader), so what it started dies with it.
func TestLeftoverSweepKillsProcessGroup(t *testing.T) {
	jobs := shortDir(t)
	dir := filepath.Join(jobs, "j1")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A stand-in QEMU: a shell whose argv[0] is qemu-system-* under the jobs directory,
	// with a child of its own in its process group.
	fake := filepath.Join(dir, "qemu-system-fake")
	if err := os.Symlink("/bin/sh", fake); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(fake, "-c", "sleep 300 & echo $!; wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	child, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(child, syscall.SIGKILL) })
	go cmd.Wait()
	// Until the child has exec'd sleep, it is a fork of the stand-in with the same argv and
	// would (rightly) be swept as a QEMU too.
	waitFor(t, 5*time.Second, "the child to exec sleep", func() bool {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(child), "cmdline"))
		return err == nil && strings.HasPrefix(string(b), "sleep")
	})
	killed, err := agent.KillLeftoverVMs(jobs)
	if err != nil || len(killed) != 1 || killed[0] != cmd.Process.Pid {
		t.Fatalf("sweep: killed %v, %v; want the stand-in QEMU %d", killed, err, cmd.Process.Pid)
	}
	waitFor(t, 5*time.Second, "QEMU's child to die with its group", func() bool { return !running(child) })
}

// running says whether pid exists and is not a zombie.
func running(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z'
}
