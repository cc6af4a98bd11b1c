package provenance

import (
	"crypto"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"time"

	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/signature"
)

// BundleMediaType is the only bundle media type VerifyBundle accepts.
const BundleMediaType = "application/vnd.dev.sigstore.bundle.v0.3+json"

// VerifyOptions says what a bundle must be signed with: a key, or (keyless) a certificate
// from a trusted Fulcio for one of the given identities.
type VerifyOptions struct {
	// PublicKey is the trusted key (ECDSA P-256) a key-signed bundle must be signed with.
	PublicKey crypto.PublicKey
	// TrustedMaterial verifies certificate (keyless) bundles: the Fulcio CAs, and the
	// transparency logs, timestamp authorities and CT logs whose evidence is required
	// (see keylessVerifierOptions); for a key-signed bundle that carries a transparency-log
	// entry, the Rekor logs it is checked against (see keyLogOptions).
	TrustedMaterial root.TrustedMaterial
	// Identities: a keyless bundle's certificate must match one of them. Required with
	// TrustedMaterial: a certificate from a public Fulcio says nothing until its identity is
	// pinned.
	Identities []verify.CertificateIdentity
}

// ErrIdentity: a keyless bundle verifies, but its certificate names another signer than
// the one expected.
var ErrIdentity = errors.New("provenance signer identity does not match")

// ErrTransparencyLog: a key-signed bundle's signature verifies, but the transparency-log
// entry it carries does not verify against the trusted root's Rekor logs.
var ErrTransparencyLog = errors.New("provenance transparency-log entry does not verify")

// VerifiedBundle is what a verified bundle vouches for.
type VerifiedBundle struct {
	// Statement is the signed payload (the in-toto statement bytes).
	Statement []byte
	// Certificate summarises the signing certificate of a keyless bundle (nil for a
	// key-signed one): issuer, SAN and the Fulcio extensions (repository, ref, workflow...).
	Certificate *certificate.Summary
}

// VerifyBundle verifies a Sigstore bundle with sigstore-go and returns the signed statement
// bytes; see VerifyBundleSigner.
func VerifyBundle(bundleJSON []byte, opts VerifyOptions) ([]byte, error) {
	vb, err := VerifyBundleSigner(bundleJSON, opts)
	if err != nil {
		return nil, err
	}
	return vb.Statement, nil
}

// VerifyBundleSigner verifies a Sigstore bundle with sigstore-go: a key-signed bundle with
// opts.PublicKey (DSSE signature over the payload; a transparency-log entry, if the bundle
// carries one, against opts.TrustedMaterial's Rekor logs), a certificate (keyless) bundle against
// opts.TrustedMaterial and opts.Identities. It does not look at the statement's subjects:
// the caller checks them against the artifacts. Errors wrap ErrBundle (malformed or of the
// wrong kind), ErrSignature (does not verify) or ErrIdentity (verifies, wrong signer).
func VerifyBundleSigner(bundleJSON []byte, opts VerifyOptions) (*VerifiedBundle, error) {
	if opts.PublicKey == nil && opts.TrustedMaterial == nil {
		return nil, fmt.Errorf("%w: no trusted public key or trusted root given", ErrSignature)
	}
	if opts.PublicKey != nil {
		if err := checkPublicKey(opts.PublicKey); err != nil {
			return nil, fmt.Errorf("%w: trusted %w", ErrSignature, err)
		}
	}
	b, payload, err := decodeBundle(bundleJSON)
	if err != nil {
		return nil, err
	}

	vm := b.GetVerificationMaterial()
	switch {
	case vm.GetCertificate() != nil || vm.GetX509CertificateChain() != nil:
		if opts.TrustedMaterial == nil {
			return nil, fmt.Errorf("%w: bundle is signed keyless (with a certificate); verifying it needs a trusted root, not a key", ErrBundle)
		}
		summary, err := verifyKeyless(b, opts)
		if err != nil {
			return nil, err
		}
		return &VerifiedBundle{Statement: payload, Certificate: summary}, nil
	case vm.GetPublicKey() == nil:
		return nil, fmt.Errorf("%w: bundle carries neither a certificate nor a public key hint", ErrBundle)
	case opts.PublicKey == nil:
		return nil, fmt.Errorf("%w: bundle is signed with a key; verifying it needs the public key (VerifyOptions.PublicKey)", ErrBundle)
	}

	sv, err := signature.LoadECDSAVerifier(opts.PublicKey.(*ecdsa.PublicKey), crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("%w: loading trusted key: %w", ErrSignature, err)
	}
	// The bundle's key hint is unauthenticated: whatever it says, the trusted key is the
	// only one tried. The key has no validity window.
	keys := root.NewTrustedPublicKeyMaterial(func(string) (root.TimeConstrainedVerifier, error) {
		return root.NewExpiringKey(sv, time.Time{}, time.Time{}), nil
	})
	// The signature first, alone, so that a failure here is the signature's (or the
	// payload's), and one of the log entry is told apart.
	if err := verifyKeySigned(b, keys, verify.WithNoObserverTimestamps()); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSignature, err)
	}
	if vo, err := keyLogOptions(b, opts.TrustedMaterial); err != nil {
		return nil, err
	} else if vo != nil {
		if err := verifyKeySigned(b, root.TrustedMaterialCollection{opts.TrustedMaterial, keys}, vo...); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrTransparencyLog, err)
		}
	}
	return &VerifiedBundle{Statement: payload}, nil
}

func verifyKeySigned(b *bundle.Bundle, tm root.TrustedMaterial, vo ...verify.VerifierOption) error {
	v, err := verify.NewVerifier(tm, vo...)
	if err != nil {
		return fmt.Errorf("setting up bundle verifier: %w", err)
	}
	_, err = v.Verify(b, verify.NewPolicy(verify.WithoutArtifactUnsafe(), verify.WithKey()))
	return err
}

// keyLogOptions says what a key-signed bundle must prove beyond the signature (nil: nothing).
// Without a transparency-log entry (cloche run without --rekor-url), nothing: the key is trusted
// whenever it signed. With one (KeySigner.LogTo), the entry is verified against the Rekor
// logs of the trusted root, and a bundle whose entry no trusted log can check is refused
// rather than accepted with the entry unread.
func keyLogOptions(b *bundle.Bundle, tm root.TrustedMaterial) ([]verify.VerifierOption, error) {
	n := len(b.GetVerificationMaterial().GetTlogEntries())
	if n == 0 {
		return nil, nil
	}
	if tm == nil || len(tm.RekorLogs()) == 0 {
		return nil, fmt.Errorf("%w: the key-signed bundle carries %d transparency-log entr(ies) but no trusted root listing a Rekor log was given to check them", ErrBundle, n)
	}
	return []verify.VerifierOption{verify.WithTransparencyLog(1), verify.WithIntegratedTimestamps(1)}, nil
}

// BundleStatement decodes a bundle as VerifyBundleSigner does (size, media type, one DSSE
// envelope of PayloadType with one signature) and returns its payload, the statement,
// WITHOUT verifying the signature: for a reader that trusts nothing in the statement and
// only compares against it (cloche rebuild). Errors wrap ErrBundle.
func BundleStatement(bundleJSON []byte) ([]byte, error) {
	_, payload, err := decodeBundle(bundleJSON)
	return payload, err
}

// decodeBundle decodes a bundle and checks its shape; it returns the bundle and the DSSE
// payload. Nothing is verified.
func decodeBundle(bundleJSON []byte) (*bundle.Bundle, []byte, error) {
	if len(bundleJSON) > MaxBundleSize {
		return nil, nil, fmt.Errorf("%w: bundle is %d bytes, limit %d", ErrBundle, len(bundleJSON), MaxBundleSize)
	}
	b := &bundle.Bundle{}
	if err := b.UnmarshalJSON(bundleJSON); err != nil {
		return nil, nil, fmt.Errorf("%w: decoding Sigstore bundle: %w", ErrBundle, err)
	}
	if b.GetMediaType() != BundleMediaType {
		return nil, nil, fmt.Errorf("%w: mediaType is %q, expected %q", ErrBundle, b.GetMediaType(), BundleMediaType)
	}
	env, ok := b.GetContent().(*protobundle.Bundle_DsseEnvelope)
	if !ok || env.DsseEnvelope == nil {
		return nil, nil, fmt.Errorf("%w: bundle holds no DSSE envelope", ErrBundle)
	}
	if got := env.DsseEnvelope.GetPayloadType(); got != PayloadType {
		return nil, nil, fmt.Errorf("%w: DSSE payloadType is %q, expected %q", ErrBundle, got, PayloadType)
	}
	if n := len(env.DsseEnvelope.GetSignatures()); n != 1 {
		return nil, nil, fmt.Errorf("%w: DSSE envelope has %d signatures, expected 1", ErrBundle, n)
	}
	// The protobuf envelope holds the payload already decoded from base64; these are the
	// bytes the signature is checked over.
	payload := append([]byte(nil), env.DsseEnvelope.GetPayload()...)
	return b, payload, nil
}
