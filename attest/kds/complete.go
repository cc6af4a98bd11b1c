package kds

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-sev-guest/abi"
	sevkds "github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/verifier"
)

// Complete fills ev.Certs of SNP evidence with the certificate chain a verifier needs
// offline: the VCEK or VLEK that signed the report, its ASK (or ASVK) and the ARK. Each
// certificate comes from the first source that has it: ev.Certs as given, the report's
// certificate table, Options.ChainFile, then for a VCEK the cache or KDS (by CHIP_ID and
// REPORTED_TCB), for ASK/ARK the cache, KDS, or offline the embedded AMD bundle. A VLEK is
// never fetched (KDS hands it only to cloud providers).
//
// Before ev is changed the result is checked: the chain's signatures, the VCEK's chip id
// and TCB against the report, and the report's signature under the VCEK/VLEK.
func (c *Client) Complete(ctx context.Context, ev *attest.Evidence) error {
	if ev == nil {
		return fmt.Errorf("kds: nil evidence")
	}
	if ev.TEE != attest.TEESNP {
		return fmt.Errorf("%w: completing %q evidence (only snp evidence needs a VCEK chain)", ErrUnsupported, ev.TEE)
	}
	raw, report, key, err := parseSignedReport(ev)
	if err != nil {
		return err
	}
	line, err := c.productLine(report.GetCpuid1EaxFms())
	if err != nil {
		return err
	}
	if err := checkProductLine(line); err != nil {
		return err
	}
	certs, err := c.signingKeyCerts(ctx, ev, report, key, line)
	if err != nil {
		return err
	}
	intermediate, interName, err := c.intermediateCert(ctx, certs, line, key)
	if err != nil {
		return err
	}
	if err := checkCompletedChain(raw, report, key, certs, intermediate, interName); err != nil {
		return err
	}
	ev.Certs = certs
	return nil
}

// parseSignedReport parses the SNP report and its SIGNER_INFO; the signing key must be a
// VCEK or a VLEK.
func parseSignedReport(ev *attest.Evidence) ([]byte, *spb.Report, abi.ReportSigner, error) {
	raw := bytes.Clone(ev.Report)
	report, err := abi.ReportToProto(raw)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("%w: snp report: %w", attest.ErrMalformed, err)
	}
	info, err := abi.ParseSignerInfo(report.GetSignerInfo())
	if err != nil {
		return nil, nil, 0, fmt.Errorf("%w: snp report SIGNER_INFO: %w", attest.ErrMalformed, err)
	}
	key := info.SigningKey
	if key != abi.VcekReportSigner && key != abi.VlekReportSigner {
		return nil, nil, 0, fmt.Errorf("%w: report signed by key %v, expected VCEK or VLEK", ErrUnsupported, key)
	}
	return raw, report, key, nil
}

// signingKeyCerts gathers the certificates from ev.Certs, the certificate table and the
// chain file, then fetches a missing VCEK; a missing VLEK is an error.
func (c *Client) signingKeyCerts(ctx context.Context, ev *attest.Evidence, report *spb.Report, key abi.ReportSigner, line string) (*attest.CertChain, error) {
	certs := &attest.CertChain{}
	if ev.Certs != nil {
		*certs = *ev.Certs
	}
	// A table lacking the signing key's certificate fails here; that certificate is then
	// fetched below and the table merged again.
	certs, err := mergeCertTable(ev, certs)
	if errors.Is(err, attest.ErrMalformed) {
		return nil, err
	}
	if c.o.ChainFile != "" {
		file, err := loadChainFile(c.o.ChainFile)
		if err != nil {
			return nil, err
		}
		fill(&certs.VCEK, file.VCEK)
		fill(&certs.VLEK, file.VLEK)
		fill(&certs.ASK, file.ASK)
		fill(&certs.ARK, file.ARK)
	}
	switch key {
	case abi.VcekReportSigner:
		if len(certs.VCEK) == 0 {
			vcek, err := c.VCEK(ctx, line, report.GetChipId(), report.GetReportedTcb())
			if err != nil {
				return nil, err
			}
			certs.VCEK = vcek
		}
	case abi.VlekReportSigner:
		if len(certs.VLEK) == 0 {
			return nil, fmt.Errorf("%w: the report is signed by a VLEK, which neither the certificate table nor a chain file carries (the cloud provider supplies it; KDS does not hand it out)", ErrOffline)
		}
	}
	if certs, err = mergeCertTable(ev, certs); err != nil {
		return nil, fmt.Errorf("merging the certificate table: %w", err)
	}
	return certs, nil
}

// mergeCertTable adds the report's own certificate table to certs, through attest's
// bounded parser. On failure certs is returned as it was.
func mergeCertTable(ev *attest.Evidence, certs *attest.CertChain) (*attest.CertChain, error) {
	tmp := &attest.Evidence{TEE: ev.TEE, Report: ev.Report, CertTable: ev.CertTable, Certs: certs}
	if err := attest.CompleteSNPFromCertTable(tmp); err != nil {
		return certs, err
	}
	return tmp.Certs, nil
}

// intermediateCert returns the signing key's intermediate and its name, filling a missing
// ASK or ARK from the product chain. The VCEK's intermediate is the ASK; a VLEK's is the
// ASVK, which certificate tables do not carry (go-sev-guest gives it no GUID), so it
// always comes from the product chain.
func (c *Client) intermediateCert(ctx context.Context, certs *attest.CertChain, line string, key abi.ReportSigner) ([]byte, string, error) {
	intermediate, interName := certs.ASK, "ASK"
	if len(certs.ASK) == 0 || len(certs.ARK) == 0 || key == abi.VlekReportSigner {
		ask, ark, err := c.ProductChain(ctx, line, key)
		if err != nil {
			return nil, "", err
		}
		fill(&certs.ASK, ask)
		fill(&certs.ARK, ark)
		intermediate = certs.ASK
		if key == abi.VlekReportSigner {
			intermediate, interName = ask, "ASVK"
		}
	}
	return intermediate, interName, nil
}

// checkCompletedChain checks the gathered chain before ev is changed: the signing key
// under its intermediate under the ARK, a VCEK's chip id and TCB against the report, and
// the report's signature.
func checkCompletedChain(raw []byte, report *spb.Report, key abi.ReportSigner, certs *attest.CertChain, intermediate []byte, interName string) error {
	keyCert, keyName := certs.VCEK, "VCEK"
	if key == abi.VlekReportSigner {
		keyCert, keyName = certs.VLEK, "VLEK"
	}
	if err := checkSignedBy(keyCert, intermediate, keyName, interName); err != nil {
		return err
	}
	if err := checkSignedBy(intermediate, certs.ARK, interName, "ARK"); err != nil {
		return err
	}
	if key == abi.VcekReportSigner && !bytes.Equal(report.GetChipId(), make([]byte, chipIDSize)) {
		if err := checkVCEK(keyCert, report.GetChipId(), report.GetReportedTcb()); err != nil {
			return err
		}
	}
	return checkReportSignature(raw, keyCert)
}

func fill(dst *[]byte, v []byte) {
	if len(*dst) == 0 && len(v) > 0 {
		*dst = bytes.Clone(v)
	}
}

// loadChainFile reads a user-supplied chain (PEM blocks or one DER certificate) and sorts
// the certificates by role: self-signed = ARK, CN SEV-VCEK / SEV-VLEK = endorsement keys,
// other CN SEV-* (SEV-Milan, SEV-VLEK-Genoa, ...) = ASK/ASVK.
func loadChainFile(path string) (*attest.CertChain, error) {
	certs, err := verifier.LoadCertificatePEM(path)
	if err != nil {
		return nil, fmt.Errorf("chain file: %w", err)
	}
	out := &attest.CertChain{}
	put := func(dst *[]byte, c *x509.Certificate, role string) error {
		if len(*dst) != 0 {
			return fmt.Errorf("chain file %s holds two %s certificates", path, role)
		}
		*dst = c.Raw
		return nil
	}
	for _, c := range certs {
		cn := c.Subject.CommonName
		switch {
		case bytes.Equal(c.RawSubject, c.RawIssuer):
			err = put(&out.ARK, c, "ARK")
		case cn == "SEV-VCEK":
			err = put(&out.VCEK, c, "VCEK")
		case cn == "SEV-VLEK":
			err = put(&out.VLEK, c, "VLEK")
		case strings.HasPrefix(cn, "SEV-"):
			err = put(&out.ASK, c, "ASK")
		default:
			err = fmt.Errorf("chain file %s: certificate %q is not an AMD ARK, ASK, VCEK or VLEK", path, cn)
		}
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// productLine is the report's product line: from its CPUID fields (VERSION 3 and later),
// else Options.ProductLine, else this host's CPU.
func (c *Client) productLine(fms uint32) (string, error) {
	if fms != 0 {
		family, model, _ := abi.FmsFromCpuid1Eax(fms)
		if line := verifier.SNPProductLineOf(uint64(family), uint64(model)); line != "" {
			return line, nil
		}
		return sevkds.ProductLineFromFms(fms), nil
	}
	if c.o.ProductLine != "" {
		return c.o.ProductLine, nil
	}
	return hostProductLine(c.o.CPUInfo)
}
