package build

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/internal/testfixture"
)

// ExpectSourceSHA256 and ExpectToolchainRoot hold a build to the inputs a caller checked
// earlier: another source or toolchain is refused as ErrInput, naming the field and both
// values, before the disks are launched.
func TestExpectedInputsAreEnforcedBeforeLaunch(t *testing.T) {
	e := newEnv(t)
	src := testfixture.WriteTree(t, map[string]string{"a": "a\n"})
	other := strings.Repeat("0", 64)
	for _, tc := range []struct {
		name, field string
		set         func(o *Options)
	}{
		{"source", "source.archiveSha256", func(o *Options) { o.ExpectSourceSHA256 = other }},
		{"toolchain", "toolchain.verityRootHash", func(o *Options) { o.ExpectToolchainRoot = other }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := e.options(t, src, "true")
			tc.set(&o)
			o.beforeLaunch = func(string) error {
				t.Error("the VM was about to start")
				return errors.New("stop")
			}
			_, err := Run(context.Background(), o)
			if !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), tc.field) || !strings.Contains(err.Error(), "expected "+other) {
				t.Fatalf("Run: %v, want ErrInput naming %s and the expected %s", err, tc.field, other)
			}
			if entries, _ := os.ReadDir(filepath.Dir(o.OutDir)); len(entries) > 1 {
				t.Errorf("work directory left behind: %v", entries)
			}
		})
	}
}
