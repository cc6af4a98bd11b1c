package main

import (
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/verifier"
	"github.com/cloche-dev/cloche/internal/fileio"
	"github.com/cloche-dev/cloche/verify"
)

// `cloche evidence` looks at and checks raw hardware evidence on its own, without a
// provenance: an SNP report, a TDX quote or an evidence.json.

func newEvidenceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "evidence",
		Short: "Show or verify a raw SEV-SNP report, TDX quote or evidence.json",
	}
	cmd.AddCommand(newEvidenceShowCmd(g), newEvidenceVerifyCmd(g))
	return cmd
}

// readEvidenceArg reads FILE with the evidence size limit.
func readEvidenceArg(path string, tee attest.TEE) (*attest.Evidence, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, attest.MaxEvidenceSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	ev, err := attest.ParseEvidenceFile(b, tee)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ev, nil
}

func parseTEEFlag(s string, required bool) (attest.TEE, error) {
	switch attest.TEE(s) {
	case attest.TEESNP, attest.TEETDX:
		return attest.TEE(s), nil
	case "":
		if !required {
			return "", nil
		}
	}
	return "", fmt.Errorf("--tee %q: expected snp or tdx", s)
}

func newEvidenceShowCmd(g *globals) *cobra.Command {
	var asJSON bool
	var tee string
	cmd := &cobra.Command{
		Use:   "show [--json] [--tee snp|tdx] FILE",
		Short: "Print a report or quote field by field (no signature is checked)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := parseTEEFlag(tee, false)
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			ev, err := readEvidenceArg(args[0], t)
			if err != nil {
				return &exitError{code: exitFailed, err: err}
			}
			fields, err := verifier.Describe(ev)
			if err != nil {
				return &exitError{code: exitFailed, err: fmt.Errorf("%s: %w", args[0], err)}
			}
			if asJSON {
				out, err := json.MarshalIndent(struct {
					TEE       attest.TEE       `json:"tee"`
					Simulated bool             `json:"simulated"`
					Fields    []verifier.Field `json:"fields"`
				}{ev.TEE, ev.TEE == attest.TEESim, fields}, "", "  ")
				if err != nil {
					return err
				}
				fmt.Fprintln(g.stdout, string(out))
				return nil
			}
			fmt.Fprint(g.stdout, verifier.FormatFields(fields))
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the fields as JSON")
	cmd.Flags().StringVar(&tee, "tee", "", "read raw bytes as this kind (default: recognised by layout)")
	return cmd
}

// policyFlags are the evidence policy flags shared by `cloche verify` and
// `cloche evidence verify`.
type policyFlags struct {
	minTCB, amdCRL, tdxCollateral, minTeeTcbSvn string
	tdxRTMR0                                    string
	noDefaultMinTCB                             bool
	platforms                                   []string
}

// evidenceCheckHelp documents the evidence check names, for both verify commands.
const evidenceCheckHelp = `  evidence.parse        the evidence or report is malformed (size, layout, VERSION)
  evidence.simulated    simulated evidence without --allow-simulated and --trusted-sim-root
  evidence.chain        the certificate chain does not lead to the vendor's (or sim) root
  evidence.signature    the report or quote signature does not verify
  evidence.chip-id      the VCEK is another chip's (its HWID is not the report's CHIP_ID)
  evidence.policy       guest policy: debug, migration agent, VMPL, REPORTED_TCB vs VCEK, TDX module
  evidence.firmware     firmware state: committed above current, or a provisional firmware
                        (CURRENT_TCB above COMMITTED_TCB) not reporting its committed TCB
  evidence.tcb          REPORTED_TCB or LAUNCH_TCB below the minimum (default: embedded per
                        product line, see --min-tcb), or TDX TEE_TCB_SVN below --min-tee-tcb-svn
  evidence.revocation   revoked by the given CRL
  evidence.collateral   the TDX quote fails the given Intel collateral
  evidence.qe-identity  the TDX quote was not signed by Intel's TD quoting enclave
  evidence.unsupported  evidence this build cannot check (e.g. AMD Turin)
  evidence.platform     the platform (SNP CHIP_ID, TDX PPID) is not in --allow-platform
  evidence.event-log    the TDX event log is missing, malformed, or does not replay to RTMR0
  measurement           the launch measurement is not one expected
  binding.host-data     HOST_DATA / MRCONFIGID differs from the expected value
  binding.report-data   REPORT_DATA differs from the expected value
`

func (p *policyFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&p.minTCB, "min-tcb", "", "SNP minimum REPORTED_TCB per component: bootloader=N,tee=N,snp=N,microcode=N")
	fl.StringVar(&p.amdCRL, "amd-crl", "", "AMD CRL for the product line (DER or PEM); checks that the ASK is not revoked")
	fl.StringVar(&p.tdxCollateral, "tdx-collateral", "", "Intel collateral file (JSON: tcbInfo, qeIdentity, optional pckCrl and rootCaCrl) to check TDX TCB status and revocation")
	fl.StringVar(&p.minTeeTcbSvn, "min-tee-tcb-svn", "", "TDX minimum TEE_TCB_SVN, 32 hex digits, compared byte by byte")
	fl.StringVar(&p.tdxRTMR0, "tdx-rtmr0", "", "TDX: the expected RTMR0 (TD HOB and the host's ACPI tables), 96 hex digits, recorded from a known-good launch of the same machine, vCPU count and memory (docs/design.md, host-supplied ACPI)")
	fl.BoolVar(&p.noDefaultMinTCB, "no-default-min-tcb", false, "do not apply the embedded SNP minimum TCB per product line when --min-tcb is not given")
	fl.StringArrayVar(&p.platforms, "allow-platform", nil, "accepted platform, hex: SNP CHIP_ID (128 digits) or TDX PPID (32 digits) (repeatable; default any)")
}

func (p *policyFlags) policy() (verifier.Policy, error) {
	pol := verifier.Policy{NoDefaultMinimumTCB: p.noDefaultMinTCB}
	for _, id := range p.platforms {
		id = strings.ToLower(strings.TrimSpace(id))
		if b, err := hex.DecodeString(id); err != nil || (len(b) != 64 && len(b) != 16) {
			return pol, fmt.Errorf("--allow-platform %q: expected an SNP CHIP_ID (128 hex digits) or a TDX PPID (32 hex digits)", id)
		}
		pol.AllowedPlatforms = append(pol.AllowedPlatforms, id)
	}
	if p.minTCB != "" {
		t, err := verifier.ParseSNPTCB(p.minTCB)
		if err != nil {
			return pol, fmt.Errorf("--min-tcb: %w", err)
		}
		pol.MinimumTCB = &t
	}
	if p.amdCRL != "" {
		crl, err := verifier.LoadCRL(p.amdCRL)
		if err != nil {
			return pol, fmt.Errorf("--amd-crl: %w", err)
		}
		pol.AMDCRL = crl
	}
	if p.tdxCollateral != "" {
		c, err := verifier.LoadTDXCollateral(p.tdxCollateral)
		if err != nil {
			return pol, fmt.Errorf("--tdx-collateral: %w", err)
		}
		pol.TDXCollateral = c
	}
	if p.minTeeTcbSvn != "" {
		b, err := hexFlag("--min-tee-tcb-svn", p.minTeeTcbSvn, 16)
		if err != nil {
			return pol, err
		}
		pol.TDX.MinimumTeeTcbSvn = b
	}
	if p.tdxRTMR0 != "" {
		b, err := hexFlag("--tdx-rtmr0", p.tdxRTMR0, 48)
		if err != nil {
			return pol, err
		}
		pol.TDX.RTMR[0] = b
	}
	return pol, nil
}

// hexFlag decodes an exact-length hex value.
func hexFlag(name, s string, n int) ([]byte, error) {
	b, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != n {
		return nil, fmt.Errorf("%s %q: expected %d hex digits (%d bytes)", name, s, 2*n, n)
	}
	return b, nil
}

type evidenceVerifyFlags struct {
	tee, at              string
	certs, measurements  []string
	hostData, reportData string
	allowDebug           bool
	eventLog             string
	skipEventLog         bool
	policy               policyFlags
}

func newEvidenceVerifyCmd(g *globals) *cobra.Command {
	f := &evidenceVerifyFlags{}
	cmd := &cobra.Command{
		Use:   "verify --tee snp|tdx [flags] FILE",
		Short: "Verify a raw report or quote offline against the vendor roots",
		Long: `Verify checks raw SEV-SNP or TDX evidence on its own, offline: the vendor certificate
chain to AMD's or Intel's root (embedded), the signature, the policy (no debug guest unless
--allow-debug, no migration agent, VMPL 0, production TDX module), the minimum TCB, and each
expected value given, compared exactly.

FILE is a raw report (1184 bytes, optionally followed by its certificate table), a raw TDX
quote, or an evidence.json. --measurement for TDX is MRTD (96 hex digits; RTMR0-2 are then
left unchecked, with a warning) or MRTD||RTMR0||RTMR1||RTMR2 (384 hex digits); --host-data
for TDX is compared with MRCONFIGID[0:32], whose last 16 bytes must be zero.

It prints WARNING lines for checks it skipped, then PASSED: ... (exit 0) or
FAILED: <check>: <reason> (exit 1), on stderr. The check names:
` + evidenceCheckHelp,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runEvidenceVerify(g, f, args[0])
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.tee, "tee", "", "kind of evidence: snp or tdx (required)")
	fl.StringArrayVar(&f.certs, "certs", nil, "SNP vendor certificate(s): VCEK or VLEK, optionally ASK and ARK (PEM or DER; repeatable)")
	fl.StringVar(&f.at, "at", "", "verify certificates at this time (RFC 3339) instead of now, for old samples")
	fl.StringArrayVar(&f.measurements, "measurement", nil, "accepted launch measurement, hex (repeatable)")
	fl.StringVar(&f.hostData, "host-data", "", "expected HOST_DATA (SNP) or MRCONFIGID[0:32] (TDX), 64 hex digits")
	fl.StringVar(&f.reportData, "report-data", "", "expected REPORT_DATA, 128 hex digits")
	fl.BoolVar(&f.allowDebug, "allow-debug", false, "accept a debug-enabled guest (test samples only; cloche verify never does)")
	fl.StringVar(&f.eventLog, "event-log", "", "TDX: the event log `FILE` (the guest's /sys/firmware/acpi/tables/data/CCEL) to replay to a raw quote's RTMR0; evidence.json carries its own")
	fl.BoolVar(&f.skipEventLog, "insecure-skip-event-log", false, "TDX: do not replay an event log to RTMR0 (raw quotes come without one): what RTMR0 measured stays unknown; prints a WARNING (cloche verify never skips it)")
	f.policy.register(fl)
	return cmd
}

func runEvidenceVerify(g *globals, f *evidenceVerifyFlags, path string) error {
	rep := g.reporter()
	opts, err := evidenceVerifyOptions(f)
	if err != nil {
		rep.Failed(verify.CheckOptions, err)
		return &exitError{code: exitUsage}
	}
	certs, err := loadCertFlags(f.certs)
	if err != nil {
		rep.Failed(verify.CheckOptions, err)
		return &exitError{code: exitUsage}
	}
	ev, err := readEvidenceArg(path, attest.TEE(f.tee))
	if err == nil {
		err = attest.AttachCertificates(ev, certs)
	}
	if err == nil && f.eventLog != "" {
		err = attachEventLog(ev, f.eventLog)
	}
	if err != nil {
		rep.Failed(verify.CheckEvidenceParse, err)
		return &exitError{code: exitFailed}
	}
	claims, err := verifier.Verify(ev, *opts)
	if err != nil {
		rep.Failed(verify.EvidenceCheck(err), err)
		return &exitError{code: exitFailed}
	}
	for _, w := range claims.Warnings {
		rep.Warning(w)
	}
	for _, w := range uncheckedBindings(f) {
		rep.Warning(w)
	}
	debug := ""
	if f.allowDebug {
		debug = "; debug guests were allowed (--allow-debug): test samples only"
	}
	rep.Passed(fmt.Sprintf("%s evidence verified offline; measurement %x%s", ev.TEE, claims.Measurement, debug))
	return nil
}

// attachEventLog puts the --event-log file into TDX evidence that carries none.
func attachEventLog(ev *attest.Evidence, path string) error {
	switch {
	case ev.TEE != attest.TEETDX:
		return fmt.Errorf("--event-log: %s evidence has no event log; only tdx evidence does", ev.TEE)
	case ev.EventLog != nil:
		return errors.New("--event-log: the evidence.json carries its own event log")
	}
	b, err := fileio.ReadCapped(path, attest.MaxEventLogSize)
	if err != nil {
		return fmt.Errorf("--event-log: %w", err)
	}
	ev.EventLog = b
	return ev.CheckShape()
}

// uncheckedBindings names the bindings evidence verify was not asked to check: the
// evidence is genuine, but says nothing about which guest or which job without them.
func uncheckedBindings(f *evidenceVerifyFlags) []string {
	var w []string
	if len(f.measurements) == 0 {
		w = append(w, "measurement not checked (--measurement): any guest image would pass")
	}
	if f.hostData == "" {
		w = append(w, "HOST_DATA / MRCONFIGID not checked (--host-data): the launch is bound to no manifest")
	}
	if f.reportData == "" {
		w = append(w, "REPORT_DATA not checked (--report-data): the report is bound to no result")
	}
	return w
}

// loadCertFlags reads every --certs file.
func loadCertFlags(paths []string) ([]*x509.Certificate, error) {
	var all []*x509.Certificate
	for _, p := range paths {
		certs, err := verifier.LoadCertificatePEM(p)
		if err != nil {
			return nil, fmt.Errorf("--certs %s: %w", p, err)
		}
		all = append(all, certs...)
	}
	return all, nil
}

func evidenceVerifyOptions(f *evidenceVerifyFlags) (*verifier.Options, error) {
	tee, err := parseTEEFlag(f.tee, true)
	if err != nil {
		return nil, err
	}
	pol, err := f.policy.policy()
	if err != nil {
		return nil, err
	}
	pol.AllowDebug = f.allowDebug
	opts := &verifier.Options{Policy: pol, InsecureSkipEventLog: f.skipEventLog}
	if f.skipEventLog && f.eventLog != "" {
		return nil, errors.New("--insecure-skip-event-log contradicts --event-log")
	}
	if f.at != "" {
		t, err := time.Parse(time.RFC3339, f.at)
		if err != nil {
			return nil, fmt.Errorf("--at %q: expected an RFC 3339 time: %w", f.at, err)
		}
		opts.Now = t
	}
	for _, m := range f.measurements {
		b, err := hex.DecodeString(strings.TrimSpace(m))
		if err != nil || !(len(b) == 48 || (tee == attest.TEETDX && len(b) == 192)) {
			return nil, fmt.Errorf("--measurement %q: expected 96 hex digits (48 bytes), or for tdx 384 (MRTD||RTMR0||RTMR1||RTMR2)", m)
		}
		opts.ExpectedMeasurements = append(opts.ExpectedMeasurements, b)
	}
	if f.hostData != "" {
		if opts.ExpectedHostData, err = hexFlag("--host-data", f.hostData, 32); err != nil {
			return nil, err
		}
	}
	if f.reportData != "" {
		if opts.ExpectedReportData, err = hexFlag("--report-data", f.reportData, 64); err != nil {
			return nil, err
		}
	}
	return opts, nil
}
