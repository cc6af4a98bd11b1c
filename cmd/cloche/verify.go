package main

import (
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/cloche-dev/cloche/attest/verifier"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/reference"
	"github.com/cloche-dev/cloche/source"
	"github.com/cloche-dev/cloche/verify"
)

type verifyFlags struct {
	bundle, key     string
	allowSimulated  bool
	simRoots        []string
	measurements    []string
	sourceTree      string
	sourceDir       string
	sourceCommit    string
	unsafeSource    bool
	unsafeToolchain bool
	printProvenance bool
	asJSON          bool
	skipMeasurement bool
	toolchainDigest string
	acpiTables      string
	rtmr0Events     []string
	allowAnyRTMR0   bool
	command         []string
	env             []string
	envExact        bool
	at              string
	policy          policyFlags
	github          githubVerifyFlags
	reference       referenceVerifyFlags
	vsa             vsaFlags
	checksums       []string
}

func newVerifyCmd(g *globals) *cobra.Command {
	f := &verifyFlags{}
	cmd := &cobra.Command{
		Use:   "verify --bundle FILE --key FILE [flags] ARTIFACT...",
		Short: "Verify artifacts against their cloche provenance, offline",
		Long:  verifyLong,
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVerify(cmd, g, f, args)
		},
	}
	f.register(cmd.Flags())
	return cmd
}

// verifyLong is verify's help: what it checks, in order, and the stable check names.
const verifyLong = `Verify checks, in order and stopping at the first failure: each artifact's digest is a
subject of the statement; the bundle's signature; the SLSA v1 statement; the hardware
evidence's certificate chain, signature, policy, firmware state and minimum TCB; HOST_DATA
equals SHA-256 of the manifest carried in the provenance; REPORT_DATA equals SHA-512 of the
result record; the launch measurement is listed by a trusted source; and the statement says
exactly what the manifest, the result record and the matching reference value say.

An expectation of the source and of the toolchain is required, since the runner host chose
both: the source by --source-commit, --source-tree, --source-dir or, keyless, --source-uri
(the signing certificate names the repository and commit; with --key, --source-tag alone is
not one: the host can write a tag object of any name); the toolchain by
--toolchain-digest. --unsafe-allow-any-source and --unsafe-allow-any-toolchain accept the
host's choice, with a WARNING.

A trusted source of launch measurements is required: --reference-values with
--reference-key, --guest-image (with --snp-firmware or --tdx-firmware on hardware), or --measurement
(TDX: MRTD||RTMR0||RTMR1||RTMR2, 384 hex digits). --insecure-skip-measurement accepts any
guest, with a WARNING and "measurement NOT checked" in the PASSED line.

TDX RTMR0 measures the TD HOB, the UEFI variables and the ACPI tables the host's VMM wrote
(which the guest kernel runs); no reference value predicts it. The evidence's event log
must replay to it, and it must be pinned: --tdx-rtmr0, a 384-digit --measurement, or the
digests of its events (--tdx-rtmr0-event, in order), recorded from a known-good launch of
the same shape (q35, vCPUs, memory, QEMU and TDVF builds). --unsafe-allow-any-rtmr0 accepts
any, with a WARNING.

It prints one line, PASSED: ... (exit 0) or FAILED: <check>: <reason> (exit 1), on stderr;
with --json, one JSON document on stdout instead (artifacts, TEE, measurement, every check
with its outcome, warnings, what was pinned and what was only reported).
Evidence from the simulated TEE is rejected unless both --allow-simulated and
--trusted-sim-root are given.

Check names (stable):
  options               missing or contradictory flags
  expect.source         no source expectation (and no --unsafe-allow-any-source)
  expect.toolchain      no --toolchain-digest (and no --unsafe-allow-any-toolchain)
  artifact              an artifact is missing, not a regular file, or given twice
  bundle                the bundle cannot be read or decoded
  bundle.material       the bundle carries material nothing checks (e.g. RFC 3161 timestamps)
  signature             the bundle is not signed by the given key (both key ids named)
  signer.identity       keyless: the certificate names another signer
  statement.parse       the signed statement is malformed
  subject               an artifact's digest is not a subject
  checksums             a file a --checksums file lists is missing or has another digest
  manifest.parse, result.parse   the byproducts are malformed
` + evidenceCheckHelp + `  reference-values      the reference values cannot be read or are not signed by --reference-key
  measurement.rtmr0     TDX: RTMR0 is not pinned (--tdx-rtmr0, --tdx-rtmr0-event, a 384-digit
                        --measurement; --unsafe-allow-any-rtmr0), or differs from the pin
  evidence.tee          the evidence is from another TEE than the manifest asks for
  result.manifest       the result record names another manifest
  result.status         the attested build failed
  statement.fields      the statement differs from the manifest, result record or evidence
  statement.time        finishedOn is before startedOn
  statement.guest-image the guest-image annotations differ from the matching reference value
  statement.guest-release  the statement names another guest image release than the one
                        whose reference values list the measurement
  source.tree, source.commit, source.tag   the attested tree, commit or annotated tag
                        differs from --source-tree/--source-commit/--source-tag, or the
                        statement names another commit or tag than the guest attested
  source.repository, source.ref   keyless: the repository or ref differs; with --key:
                        asked for (a key-signed bundle does not bind them)
  builder.id            --builder-id differs from the verified builder (a version needs
                        trusted reference values), or the statement's builder id names
                        another TEE or release than the evidence and reference values
  pin.toolchain, pin.command, pin.env   a pin on what the host chose differs
  vsa                   --vsa: the verification summary could not be made, signed or written
`

// register defines verify's flags on fl.
func (f *verifyFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&f.bundle, "bundle", "", "provenance bundle (provenance.sigstore.json)")
	fl.StringVar(&f.key, "key", "", "public key (PEM) the bundle must be signed with")
	fl.BoolVar(&f.allowSimulated, "allow-simulated", false, "accept evidence from the simulated TEE (needs --trusted-sim-root)")
	fl.StringArrayVar(&f.simRoots, "trusted-sim-root", nil, "simulated TEE root certificate to trust (PEM or DER; repeatable)")
	fl.StringArrayVar(&f.measurements, "measurement", nil, "accepted launch measurement, hex: SNP/sim MEASUREMENT (96 digits), TDX MRTD||RTMR0||RTMR1||RTMR2 (384 digits) (repeatable)")
	fl.StringVar(&f.sourceTree, "source-tree", "", "expected git tree id of the source")
	fl.StringVar(&f.sourceDir, "source-dir", "", "expected source: the git tree id of this `DIR`, computed here (the top-level .git is skipped; SHA-1 object format)")
	fl.BoolVar(&f.unsafeSource, "unsafe-allow-any-source", false, "accept whatever source the runner host sent (no --source-* expectation): prints a WARNING")
	fl.BoolVar(&f.unsafeToolchain, "unsafe-allow-any-toolchain", false, "accept whatever toolchain the runner host chose (no --toolchain-digest): prints a WARNING")
	fl.StringVar(&f.sourceCommit, "source-commit", "", "expected source commit, as the guest attested it (computed from the commit object, its tree checked against the source)")
	fl.BoolVar(&f.printProvenance, "print-provenance", false, "print the verified statement JSON on stdout")
	fl.StringVar(&f.at, "at", "", "verify certificates at this time (RFC 3339) instead of now")
	fl.BoolVar(&f.asJSON, "json", false, "print the verification as one JSON document on stdout")
	fl.BoolVar(&f.skipMeasurement, "insecure-skip-measurement", false, "accept ANY launch measurement (the guest may be the host's own): prints a WARNING")
	fl.StringVar(&f.acpiTables, "acpi-tables", "", "pin the ACPI tables the host's VMM gave the guest: the digest the guest computed (64 hex digits; verify --json shows it as acpiTables); on SEV-SNP nothing else binds them")
	fl.StringArrayVar(&f.rtmr0Events, "tdx-rtmr0-event", nil, "TDX: pin RTMR0 as the digests of the event log's RTMR0 events (the TD HOB, UEFI variables, the host's ACPI tables), one per flag in log order, 96 hex digits each, as verify --json lists them (rtmr0Events) for a known-good launch of the same shape (repeatable)")
	fl.BoolVar(&f.allowAnyRTMR0, "unsafe-allow-any-rtmr0", false, "TDX: accept an RTMR0 nothing pins (--tdx-rtmr0, --tdx-rtmr0-event, a 384-digit --measurement): the host's ACPI tables run unchecked; prints a WARNING")
	fl.StringVar(&f.toolchainDigest, "toolchain-digest", "", "pin the toolchain: its dm-verity root hash (64 hex digits; cloche image toolchain prints it as verityRootHash)")
	fl.StringArrayVar(&f.command, "command", nil, "pin the command: one argv element per flag, in order (repeatable)")
	fl.StringArrayVar(&f.env, "env", nil, "pin an environment variable, NAME=VALUE (repeatable)")
	fl.BoolVar(&f.envExact, "env-exact", false, "with --env: refuse variables the --env flags do not name")
	f.policy.register(fl)
	f.github.register(fl)
	f.reference.register(fl)
	f.vsa.register(fl)
	fl.StringArrayVar(&f.checksums, "checksums", nil, "a checksums `FILE` (sha256sum's format, e.g. goreleaser's) that is a subject: every file it lists, beside it, is verified too (repeatable; ARTIFACTs may then be left out)")
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
	if err := f.vsa.prepare(opts.PublicKey); err != nil {
		rep.Failed(verify.CheckOptions, err)
		return &exitError{code: exitUsage}
	}
	res, err := verify.Verify(cmd.Context(), *opts)
	if err == nil {
		// Written before the JSON result, which then carries the policy it digested.
		if verr := f.vsa.write(cmd.Context(), opts, res); verr != nil {
			rep.Failed("vsa", verr)
			return &exitError{code: exitFailed}
		}
	}
	if f.asJSON {
		b, jerr := json.MarshalIndent(res, "", "  ")
		if jerr != nil {
			return jerr
		}
		fmt.Fprintln(g.stdout, string(b))
	}
	if err != nil {
		var ve *verify.Error
		if !errors.As(err, &ve) {
			ve = &verify.Error{Check: "verification", Err: err}
		}
		msg := flagWords(ve.Err.Error())
		if ve.Check == verify.CheckSimulated {
			msg += " (to accept it: --allow-simulated --trusted-sim-root FILE, the file `cloche sim-root` prints)"
		}
		rep.Failed(ve.Check, errors.New(msg))
		return &exitError{code: exitFailed}
	}
	if f.printProvenance && !f.asJSON {
		fmt.Fprintln(g.stdout, string(res.Statement))
	}
	for _, w := range res.Warnings {
		rep.Warning(flagWords(w))
	}
	rep.Passed(res.Summary())
	return nil
}

func verifyOptions(f *verifyFlags, artifacts []string) (*verify.Options, error) {
	if err := f.checkRequired(artifacts); err != nil {
		return nil, err
	}
	pub, err := f.publicKey()
	if err != nil {
		return nil, err
	}
	o := &verify.Options{BundlePath: f.bundle, PublicKey: pub, Artifacts: artifacts, Checksums: f.checksums, AllowSimulated: f.allowSimulated,
		ExpectedSourceCommit: f.sourceCommit, UnsafeAllowAnySource: f.unsafeSource, UnsafeAllowAnyToolchain: f.unsafeToolchain}
	if o.ExpectedSourceTree, err = f.expectedTree(); err != nil {
		return nil, err
	}
	if o.SimRoots, err = f.trustedSimRoots(); err != nil {
		return nil, err
	}
	if err := f.measurementOptions(o); err != nil {
		return nil, err
	}
	if o.Pins, err = f.pins(); err != nil {
		return nil, err
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

// expectedTree is --source-tree, or the tree id of --source-dir.
func (f *verifyFlags) expectedTree() (string, error) {
	switch {
	case f.sourceDir == "":
		return f.sourceTree, nil
	case f.sourceTree != "":
		return "", errors.New("--source-tree and --source-dir both name the expected tree: give one")
	}
	id, err := source.TreeID(f.sourceDir)
	if err != nil {
		return "", fmt.Errorf("--source-dir %s: %w", f.sourceDir, err)
	}
	return id, nil
}

// checkRequired refuses a verify without a bundle, a key (unless keyless) or anything to
// verify.
func (f *verifyFlags) checkRequired(artifacts []string) error {
	if f.bundle == "" {
		return errors.New("--bundle is required")
	}
	if f.key == "" && !f.github.keyless() {
		return errors.New("--key is required, unless the bundle is verified keyless: --source-uri github.com/OWNER/REPO (or --repo), with --trusted-root FILE or Sigstore's public-good root")
	}
	if len(artifacts) == 0 && len(f.checksums) == 0 {
		return errors.New("name at least one artifact to verify (or --checksums FILE)")
	}
	return nil
}

// publicKey loads --key, if given; nil means keyless.
func (f *verifyFlags) publicKey() (crypto.PublicKey, error) {
	if f.key == "" {
		return nil, nil
	}
	if err := f.github.checkKeyFlags(); err != nil {
		return nil, err
	}
	pub, err := provenance.LoadPublicKey(f.key)
	if err != nil {
		return nil, fmt.Errorf("--key: %w", err)
	}
	return pub, nil
}

// trustedSimRoots loads --trusted-sim-root; it and --allow-simulated need each other.
func (f *verifyFlags) trustedSimRoots() ([]*x509.Certificate, error) {
	if len(f.simRoots) > 0 && !f.allowSimulated {
		return nil, errors.New("--trusted-sim-root given without --allow-simulated: both are needed to accept simulated evidence")
	}
	var roots []*x509.Certificate
	for _, p := range f.simRoots {
		certs, err := verifier.LoadCertificatePEM(p)
		if err != nil {
			return nil, fmt.Errorf("--trusted-sim-root %s: %w", p, err)
		}
		roots = append(roots, certs...)
	}
	if f.allowSimulated && len(roots) == 0 {
		return nil, errors.New("--allow-simulated needs --trusted-sim-root FILE: the opt-in alone trusts nothing")
	}
	return roots, nil
}

// measurementOptions sets the pinned measurements, --insecure-skip-measurement and,
// unless it is given, the embedded reference values.
func (f *verifyFlags) measurementOptions(o *verify.Options) error {
	for _, m := range f.measurements {
		b, err := hex.DecodeString(strings.TrimSpace(m))
		if err != nil || (len(b) != 48 && len(b) != 192) {
			return fmt.Errorf("--measurement %q: expected 96 hex digits (SNP, sim) or 384 (TDX MRTD||RTMR0||RTMR1||RTMR2)", m)
		}
		o.ExpectedMeasurements = append(o.ExpectedMeasurements, b)
	}
	o.InsecureSkipMeasurement = f.skipMeasurement
	o.UnsafeAllowAnyRTMR0 = f.allowAnyRTMR0
	if !f.skipMeasurement {
		// The guest images this cloche's release published: a build made with one verifies
		// with no measurement flag.
		refs, err := reference.EmbeddedValues()
		if err != nil {
			return err
		}
		o.EmbeddedReferences = refs
	}
	return nil
}

// pins are the pins on what the host chose: toolchain, ACPI tables, command, env.
func (f *verifyFlags) pins() (verify.Pins, error) {
	p := verify.Pins{ToolchainDigest: strings.ToLower(f.toolchainDigest), ACPITables: strings.ToLower(f.acpiTables), EnvExact: f.envExact}
	for _, d := range f.rtmr0Events {
		p.RTMR0Events = append(p.RTMR0Events, strings.ToLower(strings.TrimSpace(d)))
	}
	if len(f.command) > 0 {
		p.Command = f.command
	}
	if len(f.env) > 0 || f.envExact {
		p.Env = map[string]string{}
		for _, kv := range f.env {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return p, fmt.Errorf("--env %q: expected NAME=VALUE", kv)
			}
			if _, dup := p.Env[k]; dup {
				return p, fmt.Errorf("--env %s given twice", k)
			}
			p.Env[k] = v
		}
	}
	return p, nil
}

// optionFlags maps the library's option names in error texts to the flags that set them.
var optionFlags = strings.NewReplacer(
	"Reference.BundlePath", "--reference-values FILE --reference-key FILE",
	"Reference.GuestImageDir", "--guest-image DIR",
	"Reference.Key", "--reference-key FILE",
	"Reference.Firmware, VCPUType and GuestFeatures", "--snp-firmware, --tdx-firmware, --vcpu-type and --guest-features",
	"Reference.Firmware", "--snp-firmware or --tdx-firmware",
	"ExpectedMeasurements", "--measurement HEX",
	"InsecureSkipMeasurement", "--insecure-skip-measurement",
	"UnsafeAllowAnyRTMR0", "--unsafe-allow-any-rtmr0",
	"EvidencePolicy.TDX.RTMR[0]", "--tdx-rtmr0 HEX",
	"Pins.RTMR0Events", "--tdx-rtmr0-event HEX",
	"AllowSimulated", "--allow-simulated",
	"SimRoots", "--trusted-sim-root",
	"Pins.ToolchainDigest (its dm-verity root hash)", "--toolchain-digest (its dm-verity root hash; cloche image toolchain prints it as verityRootHash)",
	"Pins.ToolchainDigest", "--toolchain-digest",
	"Pins.ACPITables", "--acpi-tables",
	"Pins.Command", "--command",
	"Pins.EnvExact", "--env-exact",
	"Pins.Env", "--env",
	"Options.BundlePath", "--bundle",
	"Options.TrustedMaterial with an Options.Identity for keyless verification", "--source-uri github.com/OWNER/REPO for keyless verification",
	"Options.Identity with SourceURI", "--source-uri",
	"Identity.SourceURI", "--source-uri",
	"Identity.SourceTag", "--source-tag",
	"Identity.SourceBranch", "--source-branch",
	"Options.ExpectedSourceCommit, ExpectedSourceTree or a keyless Identity (ExpectedSourceTag alone", "--source-commit, --source-tree, --source-dir or keyless --source-uri (--source-tag alone",
	"UnsafeAllowAnySource", "--unsafe-allow-any-source",
	"UnsafeAllowAnyToolchain", "--unsafe-allow-any-toolchain",
	"Options.ExpectedSourceCommit", "--source-commit",
	"ExpectedSourceTag", "--source-tag",
	"Options.TrustedMaterial", "--trusted-root FILE",
	"Options.PublicKey", "--key FILE",
	"VerifyOptions.PublicKey", "--key FILE",
	"TDX collateral not given", "TDX collateral not given (--tdx-collateral FILE)",
	"no AMD CRL was given", "no AMD CRL was given (--amd-crl FILE)",
	"give a trusted root file instead", "give --trusted-root FILE",
)

// flagWords rewrites a library error in terms of this command's flags.
func flagWords(msg string) string { return optionFlags.Replace(msg) }
