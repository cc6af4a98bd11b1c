package toolchain

import (
	"context"
	"strings"
	"testing"
)

func TestAddGoRefusesInexactRelease(t *testing.T) {
	for _, v := range []string{"go1.26", "1.26.8", "go1.26.8rc1", "latest", "go1.26.8; rm -rf /"} {
		if err := AddGo(context.Background(), t.TempDir(), v); err == nil || !strings.Contains(err.Error(), "exact release") {
			t.Errorf("AddGo(%q) = %v, want a refusal asking for an exact release", v, err)
		}
	}
}

// The module cache extracts a Go release without modes; only its programs are made
// executable.
func TestGoExecutable(t *testing.T) {
	for rel, want := range map[string]bool{
		"bin/go": true, "bin/gofmt": true, "pkg/tool/linux_amd64/compile": true, "pkg/tool/linux_amd64/link": true,
		"src/cmd/go/main.go": false, "VERSION": false, "lib/time/zoneinfo.zip": false, "misc/bin/x": false,
	} {
		if got := goExecutable(rel); got != want {
			t.Errorf("goExecutable(%q) = %v, want %v", rel, got, want)
		}
	}
}
