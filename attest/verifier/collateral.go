package verifier

import (
	"bytes"
	"crypto/x509"
	_ "embed"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/google/go-tdx-guest/pcs"

	"github.com/cloche-dev/cloche/internal/fileio"
	"github.com/cloche-dev/cloche/internal/strictjson"

	"github.com/cloche-dev/cloche/attest"
)

// Revocation material and Intel collateral, read from files so that verification needs no
// network. go-tdx-guest fetches collateral through a getter interface; cloche hands it a
// getter that answers from a TDXCollateral and refuses everything else.

// maxCollateralFileSize caps a collateral or CRL file.
const maxCollateralFileSize = 4 << 20

// intelSGXRootPEM is Intel's SGX root CA ("Intel SGX Root CA", valid 2018-05-21 to
// 2049-12-31), the root of every TDX quote's PCK chain, as published by Intel (it is also
// the certificate go-tdx-guest embeds). cloche passes it to go-tdx-guest explicitly: with no
// trusted roots the library logs a warning line on stdout, which would corrupt
// machine-readable output.
//
//go:embed intel_sgx_root_ca.pem
var intelSGXRootPEM []byte

// intelSGXRoot parses the embedded Intel root afresh, so no caller can alter a shared copy.
func intelSGXRoot() (*x509.Certificate, error) {
	blk, _ := pem.Decode(intelSGXRootPEM)
	if blk == nil {
		return nil, errors.New("embedded Intel SGX root CA is not PEM")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("embedded Intel SGX root CA: %w", err)
	}
	return c, nil
}

// TDXCollateral is Intel's collateral for one platform, as served by Intel's provisioning
// certification service (PCS) or a caching service: each item's body verbatim and the PEM
// issuer chain (signing certificate, then root) that PCS sends in a response header.
// Its JSON form is the file `--tdx-collateral` reads.
type TDXCollateral struct {
	TCBInfo    CollateralItem `json:"tcbInfo"`
	QEIdentity CollateralItem `json:"qeIdentity"`
	// PCKCRL and RootCACRL (DER) are optional; with both, revocation is checked too.
	PCKCRL    *CollateralItem `json:"pckCrl,omitempty"`
	RootCACRL []byte          `json:"rootCaCrl,omitempty"`
}

// CollateralItem is one PCS response.
type CollateralItem struct {
	IssuerChain string `json:"issuerChain"`
	Body        []byte `json:"body"`
}

// HasCRLs says whether the collateral carries both Intel CRLs.
func (c *TDXCollateral) HasCRLs() bool {
	return c != nil && c.PCKCRL != nil && len(c.PCKCRL.Body) > 0 && len(c.RootCACRL) > 0
}

// ParseTDXCollateral decodes a collateral file strictly.
func ParseTDXCollateral(b []byte) (*TDXCollateral, error) {
	if len(b) > maxCollateralFileSize {
		return nil, fmt.Errorf("%w: TDX collateral is %d bytes, limit %d", attest.ErrMalformed, len(b), maxCollateralFileSize)
	}
	var c TDXCollateral
	if err := strictjson.Decode(b, &c); err != nil {
		return nil, fmt.Errorf("%w: TDX collateral JSON: %w", attest.ErrMalformed, err)
	}
	for _, it := range []struct {
		name string
		item *CollateralItem
	}{{"tcbInfo", &c.TCBInfo}, {"qeIdentity", &c.QEIdentity}, {"pckCrl", c.PCKCRL}} {
		if it.item == nil {
			continue
		}
		if len(it.item.Body) == 0 || !strings.Contains(it.item.IssuerChain, "-----BEGIN CERTIFICATE-----") {
			return nil, fmt.Errorf("%w: TDX collateral %s needs a body and a PEM issuerChain", attest.ErrMalformed, it.name)
		}
	}
	if (c.PCKCRL == nil) != (len(c.RootCACRL) == 0) {
		return nil, fmt.Errorf("%w: TDX collateral has only one of pckCrl and rootCaCrl; revocation needs both", attest.ErrMalformed)
	}
	return &c, nil
}

// LoadTDXCollateral reads a collateral file.
func LoadTDXCollateral(path string) (*TDXCollateral, error) {
	b, err := fileio.ReadCapped(path, maxCollateralFileSize)
	if err != nil {
		return nil, fmt.Errorf("reading TDX collateral: %w", err)
	}
	c, err := ParseTDXCollateral(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// errNoNetwork is what the offline getters answer for anything they do not hold.
var errNoNetwork = errors.New("offline verification: no network access")

// offlineTDXGetter answers go-tdx-guest's collateral requests from a TDXCollateral.
type offlineTDXGetter struct{ c *TDXCollateral }

func issuerHeader(name, chain string) map[string][]string {
	// go-tdx-guest URL-unescapes the header as PCS sends it escaped.
	return map[string][]string{name: {url.QueryEscape(chain)}}
}

func (g offlineTDXGetter) Get(u string) (map[string][]string, []byte, error) {
	c := g.c
	switch {
	case c == nil:
	case strings.HasPrefix(u, pcs.TdxBaseURL+"/tcb?"):
		return issuerHeader(pcs.TcbInfoIssuerChainPhrase, c.TCBInfo.IssuerChain), bytes.Clone(c.TCBInfo.Body), nil
	case u == pcs.QeIdentityURL():
		return issuerHeader(pcs.SgxQeIdentityIssuerChainPhrase, c.QEIdentity.IssuerChain), bytes.Clone(c.QEIdentity.Body), nil
	case strings.HasPrefix(u, pcs.SgxBaseURL+"/pckcrl?") && c.PCKCRL != nil:
		return issuerHeader(pcs.SgxPckCrlIssuerChainPhrase, c.PCKCRL.IssuerChain), bytes.Clone(c.PCKCRL.Body), nil
	case len(c.RootCACRL) > 0 && strings.HasSuffix(u, ".der"):
		// The root CA CRL, at the distribution point named by the collateral's root.
		return nil, bytes.Clone(c.RootCACRL), nil
	}
	return nil, nil, fmt.Errorf("%w: %s is not in the given TDX collateral", errNoNetwork, u)
}

// offlineSEVGetter refuses every request: go-sev-guest must use the CRL it was given.
type offlineSEVGetter struct{}

func (offlineSEVGetter) Get(u string) ([]byte, error) {
	return nil, fmt.Errorf("%w: not fetching %s", errNoNetwork, u)
}

// ParseCRL reads a CRL in DER or PEM ("X509 CRL") form.
func ParseCRL(b []byte) (*x509.RevocationList, error) {
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "X509 CRL" {
			return nil, fmt.Errorf("PEM block %q, expected \"X509 CRL\"", blk.Type)
		}
		b = blk.Bytes
	}
	crl, err := x509.ParseRevocationList(b)
	if err != nil {
		return nil, fmt.Errorf("parsing CRL: %w", err)
	}
	return crl, nil
}

// LoadCRL reads a CRL file (DER or PEM), e.g. AMD's product CRL for --amd-crl.
func LoadCRL(path string) (*x509.RevocationList, error) {
	b, err := fileio.ReadCapped(path, maxCollateralFileSize)
	if err != nil {
		return nil, fmt.Errorf("reading CRL: %w", err)
	}
	crl, err := ParseCRL(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return crl, nil
}

// crlCurrent fails unless now lies within the CRL's validity: a stale CRL would hide
// revocations made since.
func crlCurrent(name string, crl *x509.RevocationList, now time.Time) error {
	if now.Before(crl.ThisUpdate) {
		return fmt.Errorf("%w: %s was issued at %s, after the verification time %s", attest.ErrRevoked, name, crl.ThisUpdate.Format(time.RFC3339), now.Format(time.RFC3339))
	}
	if !crl.NextUpdate.IsZero() && now.After(crl.NextUpdate) {
		return fmt.Errorf("%w: %s expired at %s (next update), before the verification time %s; get a current one", attest.ErrRevoked, name, crl.NextUpdate.Format(time.RFC3339), now.Format(time.RFC3339))
	}
	return nil
}
