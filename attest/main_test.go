package attest_test

import (
	"os"
	"testing"

	"github.com/cloche-dev/cloche/internal/attest/simtest"
)

// TestMain removes the shared simulated secure processors' state directories afterwards.
func TestMain(m *testing.M) { os.Exit(simtest.Main(m)) }
