// Command sevverify is the baseline of BenchmarkVerifyProcess: the least a program can do to
// verify an SEV-SNP report with go-sev-guest (signature and VCEK chain to AMD's embedded
// roots, then the report's policy and VMPL), as a whole process. It reads the report and the
// VCEK from files, so neither it nor cloche pays for go-sev-guest's test data.
//
//	sevverify REPORT VCEK UNIX-SECONDS
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
	"github.com/google/go-sev-guest/verify"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "sevverify:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("usage: sevverify REPORT VCEK UNIX-SECONDS")
	}
	raw, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	vcek, err := os.ReadFile(args[1])
	if err != nil {
		return err
	}
	secs, err := strconv.ParseInt(args[2], 10, 64)
	if err != nil {
		return err
	}
	report, err := abi.ReportToProto(raw)
	if err != nil {
		return err
	}
	att := &spb.Attestation{Report: report, CertificateChain: &spb.CertificateChain{VcekCert: vcek}}
	if err := verify.SnpAttestation(att, &verify.Options{DisableCertFetching: true, Now: time.Unix(secs, 0)}); err != nil {
		return err
	}
	zero := 0
	return validate.SnpAttestation(att, &validate.Options{GuestPolicy: abi.SnpPolicy{SMT: true, Debug: true}, VMPL: &zero})
}
