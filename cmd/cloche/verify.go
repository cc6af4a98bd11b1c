package main

import (
	"crypto"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/verify"
)

type verifyFlags struct {
	bundle, key     string
	allowSimulated  bool
	simRoots        []string
	measurements    []string
	sourceTree      string
	sourceCommit    string
	printProvenance bool
	at              string
	policy          policyFlags
	github          githubVerifyFlags
	reference       referenceVerifyFlags
}

func newVerifyCmd(g *globals) *cobra.Command {
	f := &verifyFlags{}
	cmd := &cobra.Command{
		Use:   "verify --bundle FILE --key FILE [flags] ARTIFACT...",
		Short: "Verify artifacts against their cloche provenance, offline",
		Long: `Verify checks, in order and stopping at the first failure: each artifact's digest is a
subject of the statement; the bundle's signature; the SLSA v1 statement; the hardware
evidence's certificate chain, signature and policy; the launch measurement; HOST_DATA equals
SHA-256 of the manifest carried in the provenance; REPORT_DATA equals SHA-512 of the result
record; and the statement says exactly what the manifest and the result record say.

It prints one line, PASSED: ... (exit 0) or FAILED: <check>: <reason> (exit 1), on stderr.
Evidence from the simulated TEE is rejected unless both --allow-simulated and
--trusted-sim-root are given.`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVerify(cmd, g, f, args)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.bundle, "bundle", "", "provenance bundle (provenance.sigstore.json)")
	fl.StringVar(&f.key, "key", "", "public key (PEM) the bundle must be signed with")
	fl.BoolVar(&f.allowSimulated, "allow-simulated", false, "accept evidence from the simulated TEE (needs --trusted-sim-root)")
	fl.StringArrayVar(&f.simRoots, "trusted-sim-root", nil, "simulated TEE root certificate to trust (PEM or DER; repeatable)")
	fl.StringArrayVar(&f.measurements, "measurement", nil, "accepted guest launch measurement, hex (repeatable; default: any, reported)")
	fl.StringVar(&f.sourceTree, "source-tree", "", "expected git tree id of the source")
	fl.StringVar(&f.sourceCommit, "source-commit", "", "expected source commit named in the manifest")
	fl.BoolVar(&f.printProvenance, "print-provenance", false, "print the verified statement JSON on stdout")
	fl.StringVar(&f.at, "at", "", "verify certificates at this time (RFC 3339) instead of now")
	f.policy.register(fl)
	f.github.register(fl)
	f.reference.register(fl)
	return cmd
}

func runVerify(cmd *cobra.Command, g *globals, f *verifyFlags, artifacts []string) error {
	rep := g.reporter()
	artifacts, cleanup, err := f.github.fetchRelease(cmd.Context(), g, &f.bundle, artifacts)
	if err != nil {
		rep.Failed("release", err)
		return &exitError{code: exitFailed}
	}
	defer cleanup()
	opts, err := verifyOptions(f, artifacts)
	if err != nil {
		rep.Failed(verify.CheckOptions, err)
		return &exitError{code: exitUsage}
	}
	res, err := verify.Verify(cmd.Context(), *opts)
	if err != nil {
		var ve *verify.Error
		if !errors.As(err, &ve) {
			ve = &verify.Error{Check: "verification", Err: err}
		}
		rep.Failed(ve.Check, ve.Err)
		return &exitError{code: exitFailed}
	}
	if f.printProvenance {
		fmt.Fprintln(g.stdout, string(res.Statement))
	}
	for _, w := range res.Warnings {
		rep.Warning(w)
	}
	rep.Passed(res.Summary())
	return nil
}

func verifyOptions(f *verifyFlags, artifacts []string) (*verify.Options, error) {
	if f.bundle == "" {
		return nil, errors.New("--bundle is required")
	}
	if f.key == "" && !f.github.keyless() {
		return nil, errors.New("--key is required, unless the bundle is verified keyless: --source-uri github.com/OWNER/REPO (or --repo), with --trusted-root FILE or Sigstore's public-good root")
	}
	if len(artifacts) == 0 {
		return nil, errors.New("name at least one artifact to verify")
	}
	var pub crypto.PublicKey
	var err error
	if f.key != "" {
		if pub, err = provenance.LoadPublicKey(f.key); err != nil {
			return nil, fmt.Errorf("--key: %w", err)
		}
	}
	o := &verify.Options{BundlePath: f.bundle, PublicKey: pub, Artifacts: artifacts, AllowSimulated: f.allowSimulated,
		ExpectedSourceTree: f.sourceTree, ExpectedSourceCommit: f.sourceCommit}
	if len(f.simRoots) > 0 && !f.allowSimulated {
		return nil, errors.New("--trusted-sim-root given without --allow-simulated: both are needed to accept simulated evidence")
	}
	for _, p := range f.simRoots {
		certs, err := attest.LoadCertificatePEM(p)
		if err != nil {
			return nil, fmt.Errorf("--trusted-sim-root %s: %w", p, err)
		}
		o.SimRoots = append(o.SimRoots, certs...)
	}
	if f.allowSimulated && len(o.SimRoots) == 0 {
		return nil, errors.New("--allow-simulated needs --trusted-sim-root FILE: the opt-in alone trusts nothing")
	}
	for _, m := range f.measurements {
		b, err := hex.DecodeString(strings.TrimSpace(m))
		if err != nil || len(b) != 48 {
			return nil, fmt.Errorf("--measurement %q: expected 96 hex digits (48 bytes)", m)
		}
		o.ExpectedMeasurements = append(o.ExpectedMeasurements, b)
	}
	if f.at != "" {
		t, err := time.Parse(time.RFC3339, f.at)
		if err != nil {
			return nil, fmt.Errorf("--at %q: expected an RFC 3339 time: %w", f.at, err)
		}
		o.Now = t
	}
	if o.EvidencePolicy, err = f.policy.policy(); err != nil {
		return nil, err
	}
	if err := f.github.apply(o, f.key != ""); err != nil {
		return nil, err
	}
	if err := f.reference.apply(o); err != nil {
		return nil, err
	}
	return o, nil
}
