package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/pflag"

	"github.com/cloche-dev/cloche/internal/atomicfile"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/verify"
)

// vsaFlags ask verify for a signed Verification Summary Attestation of a PASSED result.
type vsaFlags struct {
	out, key, resourceURI string
	signer                *provenance.KeySigner
}

func (f *vsaFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&f.out, "vsa", "", "on PASSED, write a signed SLSA Verification Summary Attestation (Sigstore bundle) to `FILE`")
	fl.StringVar(&f.key, "vsa-key", "", "with --vsa: the verifier's ECDSA P-256 private key (PEM) that signs it; never the build host's")
	fl.StringVar(&f.resourceURI, "vsa-resource-uri", "", "with --vsa: the URI of the resource the artifacts are (e.g. git+https://github.com/OWNER/REPO@refs/tags/v1)")
}

// prepare checks the flags and loads the key before anything is verified. hostKey is the
// key the provenance must be signed with: a summary signed by the same key would let the
// build host, which holds it, vouch for its own builds.
func (f *vsaFlags) prepare(hostKey crypto.PublicKey) error {
	if f.out == "" {
		if f.key != "" || f.resourceURI != "" {
			return errors.New("--vsa-key and --vsa-resource-uri need --vsa FILE")
		}
		return nil
	}
	if f.key == "" || f.resourceURI == "" {
		return errors.New("--vsa needs --vsa-key FILE (the verifier's signing key) and --vsa-resource-uri URI")
	}
	if err := checkVSAOutput(f.out); err != nil {
		return err
	}
	s, err := provenance.LoadKeySigner(f.key)
	if err != nil {
		return fmt.Errorf("--vsa-key: %w", err)
	}
	if hostKey != nil && samePublicKey(s.PublicKey(), hostKey) {
		return errors.New("--vsa-key is the key the provenance is signed with: the summary must be signed by the verifier, not by the build host")
	}
	f.signer = s
	return nil
}

func samePublicKey(a, b crypto.PublicKey) bool {
	da, err1 := x509.MarshalPKIXPublicKey(a)
	db, err2 := x509.MarshalPKIXPublicKey(b)
	return err1 == nil && err2 == nil && bytes.Equal(da, db)
}

// checkVSAOutput refuses an output path that cannot be written, before verifying: a
// temporary file is made beside it and removed.
func checkVSAOutput(path string) error {
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return fmt.Errorf("--vsa %s: is a directory, expected a file path", path)
	}
	t, err := atomicfile.Create(path)
	if err != nil {
		return fmt.Errorf("--vsa: %w", err)
	}
	t.Abort()
	return nil
}

// write signs and writes the summary of a passed verification.
func (f *vsaFlags) write(ctx context.Context, o *verify.Options, res *verify.Result) error {
	if f.signer == nil {
		return nil
	}
	st, err := verify.NewVSA(*o, res, verify.VSAOptions{VerifierID: verify.VerifierID(version), ResourceURI: f.resourceURI})
	if err != nil {
		return fmt.Errorf("--vsa: %w", err)
	}
	b, err := f.signer.SignStatement(ctx, st)
	if err != nil {
		return fmt.Errorf("--vsa: signing: %w", err)
	}
	if err := atomicfile.WriteFile(f.out, b, 0o644); err != nil {
		return fmt.Errorf("--vsa: %w", err)
	}
	return nil
}
