package verify

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"fmt"

	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// bundleFacts are what the verifier reads from a bundle before sigstore-go does, to refuse
// material nothing checks and to name a wrong key as such.
type bundleFacts struct {
	keySigned bool
	keyHint   string
	// dsseSignedByKey: for a key-signed bundle, whether its DSSE signature verifies under
	// the given key (then a sigstore-go failure is about the payload, not the signature).
	dsseSignedByKey bool
}

// inspectBundle decodes the bundle strictly (protojson rejects unknown and duplicate
// fields) and refuses verification material that would be silently ignored: RFC 3161
// timestamps without a trusted timestamp authority, transparency-log entries on a
// key-signed bundle without a trusted Rekor log to check them against.
func inspectBundle(bundleJSON []byte, o *Options) (*bundleFacts, error) {
	var b protobundle.Bundle
	if err := protojson.Unmarshal(bundleJSON, &b); err != nil {
		return nil, fail(CheckBundle, fmt.Errorf("decoding Sigstore bundle: %w", err))
	}
	vm := b.GetVerificationMaterial()
	f := &bundleFacts{keySigned: vm.GetPublicKey() != nil}
	if f.keySigned {
		f.keyHint = vm.GetPublicKey().GetHint()
	}
	if n := len(vm.GetTimestampVerificationData().GetRfc3161Timestamps()); n > 0 {
		if f.keySigned || o.TrustedMaterial == nil || len(o.TrustedMaterial.TimestampingAuthorities()) == 0 {
			return nil, fail(CheckBundleMaterial, fmt.Errorf("the bundle carries %d RFC 3161 timestamp(s) but no trusted timestamp authority is configured to check them", n))
		}
	}
	if n := len(vm.GetTlogEntries()); n > 0 && f.keySigned && (o.TrustedMaterial == nil || len(o.TrustedMaterial.RekorLogs()) == 0) {
		return nil, fail(CheckBundleMaterial, fmt.Errorf("the key-signed bundle carries %d transparency-log entr(ies), which key verification checks only against the Rekor logs of a given trusted root (Options.TrustedMaterial)", n))
	}
	if f.keySigned && o.PublicKey != nil {
		env := b.GetDsseEnvelope()
		if env != nil && len(env.GetSignatures()) == 1 {
			if pub, ok := o.PublicKey.(*ecdsa.PublicKey); ok {
				digest := sha256.Sum256(dssePAE(env.GetPayloadType(), env.GetPayload()))
				f.dsseSignedByKey = ecdsa.VerifyASN1(pub, digest[:], env.GetSignatures()[0].GetSig())
			}
		}
	}
	return f, nil
}

// dssePAE is DSSE's pre-authentication encoding, what the signature covers.
func dssePAE(payloadType string, payload []byte) []byte {
	return fmt.Appendf(nil, "DSSEv1 %d %s %d %s", len(payloadType), payloadType, len(payload), payload)
}

// keyID names a public key as a bundle's key hint does: base64 of the SHA-256 of its PKIX
// encoding.
func keyID(pub any) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "(unencodable key)"
	}
	sum := sha256.Sum256(der)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// wrongKeyError says which key was given and which the bundle names, instead of
// sigstore-go's "threshold not met" wording.
func wrongKeyError(o *Options, f *bundleFacts, cause error) error {
	hint := f.keyHint
	if hint == "" {
		hint = "no key"
	}
	return fail(CheckSignature, fmt.Errorf("the bundle is not signed with the given key: the given key is %s, the bundle says it was signed with %s (%v)", keyID(o.PublicKey), hint, cause))
}
