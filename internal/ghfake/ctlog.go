package ghfake

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"time"

	ct "github.com/google/certificate-transparency-go"
	cttls "github.com/google/certificate-transparency-go/tls"
	ctx509 "github.com/google/certificate-transparency-go/x509"
	"github.com/google/certificate-transparency-go/x509util"
)

// ctLog is the certificate-transparency log the fake Fulcio submits its precertificates to,
// as the real one submits to CTFE before issuing: it signs an RFC 6962 SCT over each
// precertificate, which Fulcio embeds in the final certificate. Stock verifiers (sigstore-go,
// cosign, sigstore-js, gh) require one SCT from a log in the trusted root by default.
type ctLog struct {
	key *ecdsa.PrivateKey
	id  [sha256.Size]byte // RFC 6962 log ID: SHA-256 of the key's PKIX encoding
}

func newCTLog(key *ecdsa.PrivateKey) (*ctLog, error) {
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	return &ctLog{key: key, id: sha256.Sum256(der)}, nil
}

// issueWithSCT issues the certificate tmpl describes the way Fulcio does: first a
// precertificate (tmpl plus the critical CT poison extension), logged for an SCT, then the
// final certificate whose last extension is the SCT list in the poison's place, so that
// removing it gives back exactly the TBS the log signed.
func (l *ctLog) issueWithSCT(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey, now time.Time) (*x509.Certificate, error) {
	base := tmpl.ExtraExtensions
	poison := pkix.Extension{Id: asn1.ObjectIdentifier(ctx509.OIDExtensionCTPoison), Critical: true, Value: asn1.NullBytes}
	tmpl.ExtraExtensions = append(append([]pkix.Extension(nil), base...), poison)
	pre, err := createCert(tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("precertificate: %w", err)
	}
	sctExt, err := l.sctListExtension(pre, parent, now)
	if err != nil {
		return nil, err
	}
	tmpl.ExtraExtensions = append(append([]pkix.Extension(nil), base...), sctExt)
	return createCert(tmpl, parent, pub, signer)
}

// sctListExtension logs the precertificate and returns the X.509v3 extension carrying the
// SCT (RFC 6962 §3.3: an OCTET STRING holding the TLS-encoded SignedCertificateTimestampList).
func (l *ctLog) sctListExtension(pre, issuer *x509.Certificate, now time.Time) (pkix.Extension, error) {
	chain, err := ctx509.ParseCertificates(append(append([]byte(nil), pre.Raw...), issuer.Raw...))
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("parsing precertificate chain: %w", err)
	}
	sct, err := l.sign(chain, uint64(now.UnixMilli()))
	if err != nil {
		return pkix.Extension{}, err
	}
	list, err := x509util.MarshalSCTsIntoSCTList([]*ct.SignedCertificateTimestamp{sct})
	if err != nil {
		return pkix.Extension{}, err
	}
	tlsList, err := cttls.Marshal(*list)
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("encoding SCT list: %w", err)
	}
	value, err := asn1.Marshal(tlsList)
	if err != nil {
		return pkix.Extension{}, err
	}
	return pkix.Extension{Id: asn1.ObjectIdentifier(ctx509.OIDExtensionCTSCT), Value: value}, nil
}

// sign is the log's add-pre-chain: an SCT over the precertificate entry (the TBS without
// the poison, and the issuer's key hash) at the given time.
func (l *ctLog) sign(chain []*ctx509.Certificate, timestamp uint64) (*ct.SignedCertificateTimestamp, error) {
	leaf, err := ct.MerkleTreeLeafFromChain(chain, ct.PrecertLogEntryType, timestamp)
	if err != nil {
		return nil, fmt.Errorf("building the precertificate log entry: %w", err)
	}
	sct := ct.SignedCertificateTimestamp{SCTVersion: ct.V1, LogID: ct.LogID{KeyID: l.id}, Timestamp: timestamp}
	input, err := ct.SerializeSCTSignatureInput(sct, ct.LogEntry{Leaf: *leaf})
	if err != nil {
		return nil, fmt.Errorf("serializing the SCT signature input: %w", err)
	}
	sig, err := cttls.CreateSignature(*l.key, cttls.SHA256, input)
	if err != nil {
		return nil, fmt.Errorf("signing the SCT: %w", err)
	}
	sct.Signature = ct.DigitallySigned(sig)
	return &sct, nil
}
