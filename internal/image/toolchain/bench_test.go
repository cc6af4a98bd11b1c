package toolchain_test

import (
	"os"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/internal/benchpair"
	"github.com/cloche-dev/cloche/internal/filestamp"
	"github.com/cloche-dev/cloche/internal/image/toolchain"
	"github.com/cloche-dev/cloche/internal/testfixture"
)

// BenchmarkLoad: what a run pays to load the default (gcc) toolchain image, with the stamp of an
// unchanged image (the candidate) against a full re-hash (the baseline: the stamp
// removed), paired in each iteration.
func BenchmarkLoad(b *testing.B) {
	testfixture.RequireQEMU(b) // root: the default toolchain image has root-owned files
	img := testfixture.GCCToolchain(b)
	var pairs benchpair.Pairs
	for i := 0; i < b.N; i++ {
		os.Remove(img + filestamp.Suffix)
		t0 := time.Now()
		if _, err := toolchain.Load(img); err != nil {
			b.Fatal(err)
		}
		full := time.Since(t0)
		t0 = time.Now()
		if _, err := toolchain.Load(img); err != nil {
			b.Fatal(err)
		}
		pairs.Add(full, time.Since(t0))
	}
	pairs.Report(b, "load")
}
