package verifytest_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/verifier"
	"github.com/cloche-dev/cloche/verify"
	"github.com/cloche-dev/cloche/verify/verifytest"
)

// A program that consumes cloche provenance tests its verification against a fixture from
// the kit: the untouched fixture passes, and a host that lies (here: signs a statement for
// other artifact bytes) is caught by a named check.
func Example() {
	dir, err := os.MkdirTemp("", "verifytest-example-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	kit, err := verifytest.NewKit(dir)
	if err != nil {
		panic(err)
	}
	trust := kit.Trust()
	options := func(f *verifytest.Fixture) verify.Options {
		return verify.Options{BundlePath: f.BundlePath, PublicKey: trust.HostKey, Artifacts: []string{f.Artifact},
			AllowSimulated: true, SimRoots: []*x509.Certificate{trust.SimRoot},
			Reference: verify.ReferenceOptions{BundlePath: f.ReferencePath, Key: trust.ReleaseKey},
			// The source and toolchain the build must have used: the host writes both.
			ExpectedSourceCommit: verifytest.SourceCommit,
			Pins:                 verify.Pins{ToolchainDigest: verifytest.ToolchainDigest}}
	}

	good, err := kit.Build(dir+"/good", verifytest.Hooks{})
	if err != nil {
		panic(err)
	}
	res, err := verify.Verify(context.Background(), options(good))
	fmt.Println("untouched fixture:", err == nil && res.Simulated)

	// The evidence alone, as attest/verifier sees it.
	ev, err := attest.ParseEvidence(good.Evidence)
	if err != nil {
		panic(err)
	}
	_, err = verifier.Verify(ev, verifier.Options{AllowSimulated: true, SimRoots: []*x509.Certificate{trust.SimRoot}})
	fmt.Println("its evidence:", err == nil)
	_, err = verifier.Verify(ev, verifier.Options{})
	fmt.Println("its evidence without the sim opt-in:", errors.Is(err, attest.ErrSimulatedNotAllowed))

	bad, err := kit.Build(dir+"/bad", verifytest.Hooks{})
	if err != nil {
		panic(err)
	}
	if err := os.WriteFile(bad.Artifact, []byte("something else\n"), 0o755); err != nil {
		panic(err)
	}
	_, err = verify.Verify(context.Background(), options(bad))
	var ce *verify.Error
	fmt.Println("changed artifact:", errors.As(err, &ce) && ce.Check == verify.CheckSubject)
	// Output:
	// untouched fixture: true
	// its evidence: true
	// its evidence without the sim opt-in: true
	// changed artifact: true
}
