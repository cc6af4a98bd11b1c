package verifier

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	tdxabi "github.com/google/go-tdx-guest/abi"
	tdxtestdata "github.com/google/go-tdx-guest/testing/testdata"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/attest/simtest"
)

// Offsets in the QE report (an SGX REPORT body, 384 bytes) and in the TDX signed data.
const (
	qeReportOffset      = 134 // after the quote signature (64), attestation key (64), cert type (2), size (4)
	qeReportSize        = 384
	qeReportOffAttr     = 48
	qeReportOffMrSigner = 128
	qeReportOffProdID   = 256
	qeReportOffData     = 320
)

// qeForgery is a host that runs an enclave of its own, has the platform's PCK certify it,
// and signs a TDX quote of its choosing with it. The PCK chain is a test chain under a test
// root (Intel's PCK key is not ours), passed as Options.fakeIntelRoot.
type qeForgery struct {
	mrSigner []byte
	prodID   uint16
	attr0    byte // first ATTRIBUTES byte (0x01 INIT, 0x02 DEBUG, 0x10 PROVISIONKEY)
	// body, when set, edits the TD quote body (e.g. its RTMR0) before the quote is signed.
	body func(body []byte)
}

var sgxExtensionOID = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1}

func testCert(t *testing.T, tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func rawECDSA(t *testing.T, k *ecdsa.PrivateKey, msg []byte) []byte {
	h := sha256.Sum256(msg)
	r, s, err := ecdsa.Sign(rand.Reader, k, h[:])
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out
}

// forge returns the forged quote (the sample's body with the QE, attestation key and PCK
// chain replaced) and the test root that certifies its PCK.
func (f qeForgery) forge(t *testing.T) ([]byte, *x509.Certificate) {
	t.Helper()
	q := bytes.Clone(tdxtestdata.RawQuote)
	pq, err := attest.ParseTDXQuote(q)
	if err != nil {
		t.Fatal(err)
	}
	q = q[:pq.Len]
	end := tdxHeaderSize + tdxBodySizeV10
	if f.body != nil {
		f.body(q[tdxHeaderSize:end])
	}
	sd := q[end+4:]
	auth := int(binary.LittleEndian.Uint16(sd[tdxSDQEAuthSize:]))
	// The sample's PCK chain gives the subjects and the SGX extension to copy.
	var sample []*x509.Certificate
	rest := sd[tdxSDQEAuthData+auth+6:]
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		sample = append(sample, c)
	}
	var sgxExt pkix.Extension
	for _, e := range sample[0].Extensions {
		if e.Id.Equal(sgxExtensionOID) {
			sgxExt = e
		}
	}
	nb, na := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC)
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	rk, ik, pk, ak := key(), key(), key(), key()
	ca := func(serial int64, subject pkix.Name) *x509.Certificate {
		return &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: subject, NotBefore: nb, NotAfter: na, IsCA: true,
			BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, SignatureAlgorithm: x509.ECDSAWithSHA256}
	}
	root := testCert(t, ca(1, sample[2].Subject), nil, &rk.PublicKey, rk)
	inter := testCert(t, ca(2, sample[1].Subject), root, &ik.PublicKey, rk)
	leaf := testCert(t, &x509.Certificate{SerialNumber: big.NewInt(3), Subject: sample[0].Subject, NotBefore: nb, NotAfter: na,
		KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, SubjectKeyId: []byte{1, 2, 3, 4},
		CRLDistributionPoints: sample[0].CRLDistributionPoints, ExtraExtensions: []pkix.Extension{sgxExt},
		SignatureAlgorithm: x509.ECDSAWithSHA256}, inter, &pk.PublicKey, ik)
	var chain []byte
	for _, c := range []*x509.Certificate{leaf, inter, root} {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}

	attKey := make([]byte, 64)
	ak.PublicKey.X.FillBytes(attKey[:32])
	ak.PublicKey.Y.FillBytes(attKey[32:])
	qeReport := bytes.Clone(sd[qeReportOffset : qeReportOffset+qeReportSize])
	copy(qeReport[qeReportOffMrSigner:], f.mrSigner)
	binary.LittleEndian.PutUint16(qeReport[qeReportOffProdID:], f.prodID)
	qeReport[qeReportOffAttr] = f.attr0
	authData := bytes.Clone(sd[tdxSDQEAuthData : tdxSDQEAuthData+auth])
	h := sha256.Sum256(append(bytes.Clone(attKey), authData...))
	copy(qeReport[qeReportOffData:], append(h[:], make([]byte, 32)...))

	var certData []byte
	certData = append(certData, qeReport...)
	certData = append(certData, rawECDSA(t, pk, qeReport)...)
	certData = binary.LittleEndian.AppendUint16(certData, uint16(auth))
	certData = append(certData, authData...)
	certData = binary.LittleEndian.AppendUint16(certData, tdxCertTypePCK)
	certData = binary.LittleEndian.AppendUint32(certData, uint32(len(chain)))
	certData = append(certData, chain...)
	var nsd []byte
	nsd = append(nsd, rawECDSA(t, ak, q[:end])...)
	nsd = append(nsd, attKey...)
	nsd = binary.LittleEndian.AppendUint16(nsd, tdxCertTypeQE)
	nsd = binary.LittleEndian.AppendUint32(nsd, uint32(len(certData)))
	nsd = append(nsd, certData...)
	forged := append(bytes.Clone(q[:end]), binary.LittleEndian.AppendUint32(nil, uint32(len(nsd)))...)
	return append(forged, nsd...), root
}

// A quote signed by an enclave that is not Intel's TD quoting enclave is refused, with no
// collateral given (the default): the PCK certifies any enclave on the platform, so without
// this check a host that runs its own enclave could sign any MRTD, RTMRs, MRCONFIGID and
// REPORT_DATA. The same forgery with Intel's QE identity passes the chain and signature,
// which shows that the identity is what refuses the others.
func TestTDXQuoteFromAForeignQuotingEnclave(t *testing.T) {
	intel := qeForgery{mrSigner: tdQEMrSigner, prodID: tdQEIsvProdID, attr0: 0x11}
	for _, tc := range []struct {
		name string
		f    qeForgery
		want string
	}{
		{"another MRSIGNER", qeForgery{mrSigner: bytes.Repeat([]byte{0x41}, 32), prodID: 2, attr0: 0x11}, "QE MRSIGNER"},
		{"another product", qeForgery{mrSigner: tdQEMrSigner, prodID: 0x1234, attr0: 0x11}, "ISVPRODID"},
		{"a debug QE", qeForgery{mrSigner: tdQEMrSigner, prodID: 2, attr0: 0x13}, "ATTRIBUTES"},
		{"no provisioning key", qeForgery{mrSigner: tdQEMrSigner, prodID: 2, attr0: 0x01}, "ATTRIBUTES"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, root := tc.f.forge(t)
			_, err := Verify(&attest.Evidence{TEE: attest.TEETDX, Report: q}, Options{Now: tdxNow, fakeIntelRoot: root})
			simtest.WantErr(t, err, attest.ErrQEIdentity, tc.want)
		})
	}
	log, rtmr0 := testEventLog(t, testRTMR0Events()...)
	intel.body = func(b []byte) { copy(b[tdxBodyOffRtmr0:], rtmr0) }
	q, root := intel.forge(t)
	if _, err := Verify(&attest.Evidence{TEE: attest.TEETDX, Report: q, EventLog: log}, Options{Now: tdxNow, fakeIntelRoot: root}); err != nil {
		t.Fatalf("the forgery with Intel's QE identity under the test root: %v (the test's quote construction is broken)", err)
	}
	// Intel's real quote passes the identity check.
	if err := checkQEIdentity(mustTDXProto(t, tdxtestdata.RawQuote)); err != nil {
		t.Fatal(err)
	}
}

func mustTDXProto(t *testing.T, raw []byte) any {
	t.Helper()
	q, err := tdxabi.QuoteToProto(raw)
	if err != nil {
		t.Fatal(err)
	}
	return q
}
