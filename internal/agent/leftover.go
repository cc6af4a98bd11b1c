package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cloche-dev/cloche/internal/atomicfile"
	"github.com/cloche-dev/cloche/source"
)

// packDir writes dir as a deterministic archive (source.Pack's format) to dst,
// atomically, with the archive's data synced but not its directory: the job's terminal
// record, the one thing that names the archive, is written next in the same directory
// with a directory sync, which makes both renames durable.
func packDir(ctx context.Context, dir string, epoch int64, dst string) (string, int64, error) {
	f, err := atomicfile.Create(dst)
	if err != nil {
		return "", 0, err
	}
	defer f.Abort()
	sum, size, err := source.Pack(ctx, dir, epoch, f)
	if err != nil {
		return "", 0, err
	}
	if err := f.Sync(); err != nil {
		return "", 0, fmt.Errorf("syncing %s: %w", dst, err)
	}
	if err := f.CommitUnsynced(0o644); err != nil {
		return "", 0, err
	}
	return sum, size, nil
}

// KillLeftoverVMs kills QEMU processes whose command line names a file under jobsDir: VMs
// of a previous agent run. QEMU is started with PR_SET_PDEATHSIG, so a crashed agent's VMs
// normally die with it; this sweep is the second line, for a QEMU that outlived its parent
// anyway (e.g. the agent was restarted while a launch was between fork and exec). It waits
// until they are gone (at most a few seconds) and returns their pids.
func KillLeftoverVMs(jobsDir string) ([]int, error) {
	pids, err := FindVMs(jobsDir)
	if err != nil {
		return nil, err
	}
	for _, pid := range pids {
		// vmm starts QEMU as the leader of its own process group; killing the group also
		// kills what QEMU started (helpers, a swtpm). A QEMU in someone else's group is
		// killed alone: that group may be the agent's own.
		target := pid
		if processGroup(pid) == pid {
			target = -pid
		}
		if err := syscall.Kill(target, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return pids, fmt.Errorf("killing leftover QEMU %d: %w", pid, err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for alive(pid) {
			if time.Now().After(deadline) {
				return pids, fmt.Errorf("leftover QEMU %d did not die within 5s of SIGKILL", pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return pids, nil
}

// FindVMs lists running QEMU processes (argv[0] named qemu-system-*) whose arguments name
// a path under dir.
func FindVMs(dir string) ([]int, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	prefix := []byte(filepath.Clean(abs) + "/")
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(cmdline) == 0 {
			continue // gone, or a zombie / kernel thread
		}
		argv0, _, _ := bytes.Cut(cmdline, []byte{0})
		if !strings.HasPrefix(filepath.Base(string(argv0)), "qemu-system-") {
			continue
		}
		if bytes.Contains(cmdline, prefix) && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// processGroup is pid's process group (0 when it cannot be read).
func processGroup(pid int) int {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0
	}
	// After the parenthesised command name: state, ppid, pgrp.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 3 {
		return 0
	}
	pgrp, _ := strconv.Atoi(f[2])
	return pgrp
}

// alive says whether pid runs and is not a zombie waiting to be reaped.
func alive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may contain any
	// character: take the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] != 'Z' && b[i+2] != 'X'
}
