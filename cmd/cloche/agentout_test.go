package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// TestAgentRunChecksOutBeforeSubmitting: through the agent, an unusable --out fails as a
// usage error naming the flag before the agent is contacted (no build that cannot be
// written out).
func TestAgentRunChecksOutBeforeSubmitting(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "a.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var connections atomic.Int32
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			connections.Add(1)
			c.Close()
		}
	}()
	src := filepath.Join(dir, "src")
	afile := filepath.Join(dir, "afile")
	for _, err := range []error{os.Mkdir(src, 0o755), os.WriteFile(filepath.Join(src, "build.sh"), []byte("true\n"), 0o644), os.WriteFile(afile, nil, 0o644)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	code, stdout, stderr := cli(t, "run", "--agent", socket, "--source", src, "--out", filepath.Join(afile, "out"), "--", "sh", "build.sh")
	if code != exitUsage || !strings.Contains(stderr, "--out") || !strings.Contains(stderr, "is a file, expected a directory") {
		t.Errorf("cloche run --agent with --out below a file: exit %d, stdout %q, stderr %q; want exit %d naming --out", code, stdout, stderr, exitUsage)
	}
	if n := connections.Load(); n != 0 {
		t.Errorf("the agent was contacted %d times before --out was checked", n)
	}
}
