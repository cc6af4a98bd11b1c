package provenance

import (
	"crypto"
	"crypto/ecdsa"
	"fmt"
	"time"

	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/signature"
)

// BundleMediaType is the only bundle media type VerifyBundle accepts.
const BundleMediaType = "application/vnd.dev.sigstore.bundle.v0.3+json"

// VerifyOptions says what a bundle must be signed with.
type VerifyOptions struct {
	// PublicKey is the trusted key (ECDSA P-256) the bundle must be signed with.
	PublicKey crypto.PublicKey
}

// VerifyBundle verifies a key-signed Sigstore bundle with sigstore-go (DSSE signature over
// the payload with opts.PublicKey; key bundles carry no transparency-log entry or timestamp
// to require) and returns the signed statement bytes. It does not look at the statement's
// subjects: the caller checks them against the artifacts. Errors wrap ErrBundle (malformed
// or of the wrong kind) or ErrSignature (does not verify).
func VerifyBundle(bundleJSON []byte, opts VerifyOptions) ([]byte, error) {
	if opts.PublicKey == nil {
		return nil, fmt.Errorf("%w: no trusted public key given", ErrSignature)
	}
	if err := checkPublicKey(opts.PublicKey); err != nil {
		return nil, fmt.Errorf("%w: trusted %v", ErrSignature, err)
	}
	if len(bundleJSON) > MaxBundleSize {
		return nil, fmt.Errorf("%w: bundle is %d bytes, limit %d", ErrBundle, len(bundleJSON), MaxBundleSize)
	}
	var b bundle.Bundle
	if err := b.UnmarshalJSON(bundleJSON); err != nil {
		return nil, fmt.Errorf("%w: decoding Sigstore bundle: %v", ErrBundle, err)
	}
	if b.GetMediaType() != BundleMediaType {
		return nil, fmt.Errorf("%w: mediaType is %q, expected %q", ErrBundle, b.GetMediaType(), BundleMediaType)
	}
	env, ok := b.GetContent().(*protobundle.Bundle_DsseEnvelope)
	if !ok || env.DsseEnvelope == nil {
		return nil, fmt.Errorf("%w: bundle holds no DSSE envelope", ErrBundle)
	}
	if got := env.DsseEnvelope.GetPayloadType(); got != PayloadType {
		return nil, fmt.Errorf("%w: DSSE payloadType is %q, expected %q", ErrBundle, got, PayloadType)
	}
	if b.GetVerificationMaterial().GetPublicKey() == nil {
		return nil, fmt.Errorf("%w: bundle is not signed with a public key (keyless bundles need a trusted root)", ErrBundle)
	}
	if n := len(env.DsseEnvelope.GetSignatures()); n != 1 {
		return nil, fmt.Errorf("%w: DSSE envelope has %d signatures, expected 1", ErrBundle, n)
	}

	sv, err := signature.LoadECDSAVerifier(opts.PublicKey.(*ecdsa.PublicKey), crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("%w: loading trusted key: %v", ErrSignature, err)
	}
	// The bundle's key hint is unauthenticated: whatever it says, the trusted key is the
	// only one tried. The key has no validity window.
	trusted := root.NewTrustedPublicKeyMaterial(func(string) (root.TimeConstrainedVerifier, error) {
		return root.NewExpiringKey(sv, time.Time{}, time.Time{}), nil
	})
	v, err := verify.NewVerifier(trusted, verify.WithNoObserverTimestamps())
	if err != nil {
		return nil, fmt.Errorf("setting up bundle verifier: %w", err)
	}
	if _, err := v.Verify(&b, verify.NewPolicy(verify.WithoutArtifactUnsafe(), verify.WithKey())); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSignature, err)
	}

	// The protobuf envelope holds the payload already decoded from base64; these are the
	// bytes the signature was checked over.
	payload := append([]byte(nil), env.DsseEnvelope.GetPayload()...)
	return payload, nil
}
