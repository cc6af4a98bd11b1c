package simsp

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
)

// Validity periods of AMD's KDS certificates: 25 years for the ARK and ASK, 7 for a VCEK.
const (
	rootValidity = 25 * 365 * 24 * time.Hour
	vcekValidity = 7 * 365 * 24 * time.Hour
)

// simChain is the simulated ARK, ASK and VCEK certificates.
type simChain struct {
	ark, ask, vcek *x509.Certificate
}

// simChainParams is what the simulated chain certifies.
type simChainParams struct {
	productName string // "Milan-B0"; the certificates name its product line ("Milan")
	created     time.Time
	ark, ask    *rsa.PrivateKey
	vcek        *ecdsa.PrivateKey
	hwid        [abi.ChipIDSize]byte
	tcb         kds.TCBParts
}

// amdName is a subject or issuer as AMD's KDS writes them: the verifier checks the
// organisation and location, and the common name for each role.
func amdName(commonName string, serial *big.Int) pkix.Name {
	return pkix.Name{
		Country:            []string{"US"},
		Province:           []string{"CA"},
		Locality:           []string{"Santa Clara"},
		Organization:       []string{"Advanced Micro Devices"},
		OrganizationalUnit: []string{"Engineering"},
		CommonName:         commonName,
		SerialNumber:       fmt.Sprintf("%x", serial),
	}
}

// newSimChain certifies the keys in p with the KDS certificate profile that go-sev-guest's
// verifier checks: RSA-PSS SHA-384 signatures throughout, a self-signed ARK-<line>, an
// SEV-<line> ASK it signs, and an SEV-VCEK certificate carrying the chip id and TCB as AMD's
// extensions. Its own code, so that the production binary links no go-sev-guest test package
// (whose init parses test keys on every start).
func newSimChain(p simChainParams) (*simChain, error) {
	line := kds.ProductLineOfProductName(p.productName)
	crl := kds.CrlLinkByKey(line, abi.VcekReportSigner)
	arkSerial, askSerial, err := twoSerials()
	if err != nil {
		return nil, err
	}
	arkName := amdName("ARK-"+line, arkSerial)
	askName := amdName("SEV-"+line, askSerial)
	var c simChain
	if c.ark, err = certify(caTemplate(arkSerial, arkName, arkName, crl, p.created, x509.KeyUsageCertSign|x509.KeyUsageCRLSign), nil, p.ark.Public(), p.ark); err != nil {
		return nil, fmt.Errorf("ARK certificate: %w", err)
	}
	if c.ask, err = certify(caTemplate(askSerial, arkName, askName, crl, p.created, x509.KeyUsageCertSign), c.ark, p.ask.Public(), p.ark); err != nil {
		return nil, fmt.Errorf("ASK certificate: %w", err)
	}
	exts, err := vcekExtensions(p)
	if err != nil {
		return nil, err
	}
	vcek := &x509.Certificate{
		Version:            3,
		SerialNumber:       big.NewInt(0),
		SignatureAlgorithm: x509.SHA384WithRSAPSS,
		Issuer:             askName,
		Subject:            amdName("SEV-VCEK", big.NewInt(0)),
		NotBefore:          p.created,
		NotAfter:           p.created.Add(vcekValidity),
		ExtraExtensions:    exts,
	}
	if c.vcek, err = certify(vcek, c.ask, p.vcek.Public(), p.ask); err != nil {
		return nil, fmt.Errorf("VCEK certificate: %w", err)
	}
	return &c, nil
}

// caTemplate is an ARK or ASK certificate before signing.
func caTemplate(serial *big.Int, issuer, subject pkix.Name, crl string, created time.Time, usage x509.KeyUsage) *x509.Certificate {
	return &x509.Certificate{
		Version:               3,
		SerialNumber:          serial,
		SignatureAlgorithm:    x509.SHA384WithRSAPSS,
		Issuer:                issuer,
		Subject:               subject,
		NotBefore:             created,
		NotAfter:              created.Add(rootValidity),
		KeyUsage:              usage,
		IsCA:                  true,
		BasicConstraintsValid: true,
		CRLDistributionPoints: []string{crl},
	}
}

// certify signs tmpl with signer; a nil parent makes it self-signed.
func certify(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, error) {
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// twoSerials returns random positive 128-bit serial numbers for the ARK and ASK.
func twoSerials() (*big.Int, *big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	var s [2]*big.Int
	for i := range s {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, nil, fmt.Errorf("generating a certificate serial number: %w", err)
		}
		s[i] = n.Add(n, big.NewInt(1))
	}
	return s[0], s[1], nil
}

// vcekExtensions are the VCEK's AMD extensions: structure version 0, the product name, each
// TCB component's security patch level and the chip id (HWID).
func vcekExtensions(p simChainParams) ([]pkix.Extension, error) {
	type field struct {
		id  asn1.ObjectIdentifier
		val any
		tag string
	}
	fields := []field{
		{kds.OidStructVersion, 0, ""},
		{kds.OidProductName1, p.productName, "ia5"},
		{kds.OidBlSpl, int(p.tcb.BlSpl), ""},
		{kds.OidTeeSpl, int(p.tcb.TeeSpl), ""},
		{kds.OidSnpSpl, int(p.tcb.SnpSpl), ""},
		{kds.OidSpl4, int(p.tcb.Spl4), ""},
		{kds.OidSpl5, int(p.tcb.Spl5), ""},
		{kds.OidSpl6, int(p.tcb.Spl6), ""},
		{kds.OidSpl7, int(p.tcb.Spl7), ""},
		{kds.OidUcodeSpl, int(p.tcb.UcodeSpl), ""},
		{kds.OidHwid, p.hwid[:], ""},
	}
	exts := make([]pkix.Extension, 0, len(fields))
	for _, f := range fields {
		v, err := asn1.MarshalWithParams(f.val, f.tag)
		if err != nil {
			return nil, fmt.Errorf("encoding VCEK extension %v: %w", f.id, err)
		}
		exts = append(exts, pkix.Extension{Id: f.id, Value: v})
	}
	return exts, nil
}
