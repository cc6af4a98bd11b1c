package verify

import (
	"crypto"
	"fmt"

	"github.com/cloche-dev/cloche/internal/fileio"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
)

// Expectation is a provenance bundle read as an expectation: what a build claims to have
// produced from which inputs, consistent with itself but not vouched for (its evidence is
// not checked). A caller that re-runs the build compares against it (cloche rebuild).
type Expectation struct {
	// Statement is the bundle's payload; Parsed its typed view.
	Statement []byte
	Parsed    *provenance.Parsed
	// Manifest and Result are the statement's byproducts, parsed.
	Manifest *job.Manifest
	Result   *job.Result
	// SignatureChecked says whether the bundle's signature was verified (a key was given).
	SignatureChecked bool
}

// ReadExpectation reads the bundle at path as Verify does up to the evidence: the bundle's
// shape (its signature too when pub is not nil), the statement, the manifest and result
// record it carries, that the result record names that manifest and a successful build,
// and that the statement says exactly what the two documents say
// (provenance.Parsed.CheckAgainstManifest). The evidence, the measurement and everything
// after are not checked: the caller trusts nothing read here beyond its being well formed.
// Errors are *Error with Verify's check names.
func ReadExpectation(path string, pub crypto.PublicKey) (*Expectation, error) {
	if path == "" {
		return nil, fail(CheckOptions, fmt.Errorf("no bundle given (expected its path)"))
	}
	bundleJSON, err := fileio.ReadCapped(path, MaxBundleSize)
	if err != nil {
		return nil, fail(CheckBundle, err)
	}
	var stmt []byte
	if pub != nil {
		if stmt, _, err = verifySignature(bundleJSON, &Options{PublicKey: pub}); err != nil {
			return nil, err
		}
	} else if stmt, err = provenance.BundleStatement(bundleJSON); err != nil {
		return nil, fail(CheckBundle, err)
	}
	p, err := provenance.ParseStatement(stmt)
	if err != nil {
		return nil, fail(CheckStatement, err)
	}
	m, err := job.ParseManifest(p.Manifest)
	if err != nil {
		return nil, fail(CheckManifest, err)
	}
	r, err := job.ParseResult(p.Result)
	if err != nil {
		return nil, fail(CheckResult, err)
	}
	if err := checkResultRecord(p.Manifest, r); err != nil {
		return nil, err
	}
	if err := p.CheckAgainstManifest(m, r); err != nil {
		return nil, fail(CheckConsistency, err)
	}
	return &Expectation{Statement: stmt, Parsed: p, Manifest: m, Result: r, SignatureChecked: pub != nil}, nil
}
