package provenance

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore-go/pkg/verify"
	"google.golang.org/protobuf/encoding/protojson"
)

// Sigstore's public-good instance: the default endpoints for keyless signing. Private
// deployments (e.g. a company's own Fulcio and Rekor, or GitHub's Fulcio with a timestamp
// authority for private repositories) set their own in KeylessOptions.
const (
	PublicGoodFulcioURL = "https://fulcio.sigstore.dev"
	PublicGoodRekorURL  = "https://rekor.sigstore.dev"
)

// OIDCAudience is the audience Fulcio requires in the identity token.
const OIDCAudience = "sigstore"

// ErrKeyless wraps every failure of keyless signing (token, certificate, log, timestamp),
// so callers can tell "could not get a signature" from a bad statement.
var ErrKeyless = errors.New("keyless signing failed")

// GitHubActionsIssuer is the OIDC issuer of GitHub Actions tokens, which Fulcio
// certificates of workflows name.
const GitHubActionsIssuer = "https://token.actions.githubusercontent.com"

// IDTokenSource returns a fresh OIDC identity token for the given audience. It is called
// once per signature, right before the certificate request: workflow tokens are short-lived
// and a build can outlast one.
type IDTokenSource func(ctx context.Context, audience string) (string, error)

// KeylessOptions configure a KeylessSigner.
type KeylessOptions struct {
	// FulcioURL is the certificate authority (default PublicGoodFulcioURL).
	FulcioURL string
	// RekorURL is the transparency log; empty with NoTransparencyLog set means none (then
	// at least one TSA is needed to prove when the short-lived certificate was valid).
	RekorURL          string
	NoTransparencyLog bool
	// TSAURLs are RFC 3161 timestamp authorities (full URLs of their timestamp endpoint).
	TSAURLs []string
	// Token supplies the OIDC identity token (required).
	Token IDTokenSource
	// Transport carries the Fulcio and TSA requests (default: http.DefaultTransport).
	Transport http.RoundTripper
	// Timeout per request (default 30 s) and Retries on 5xx/429 (default 3).
	Timeout time.Duration
	Retries uint
	// TrustedMaterial, when set, makes the signer verify each bundle it produced against
	// it before returning it, so a misconfigured endpoint fails the build instead of
	// publishing a bundle no verifier accepts.
	TrustedMaterial root.TrustedMaterial
}

// KeylessSigner signs with an ephemeral key certified by Fulcio for the workflow's OIDC
// identity, logs the signature in Rekor and/or timestamps it with a TSA: the bundle is a
// standard Sigstore bundle v0.3 that any Sigstore verifier accepts given the same trusted
// root.
type KeylessSigner struct {
	opts KeylessOptions
}

var _ Signer = (*KeylessSigner)(nil)

// NewKeylessSigner checks the options and fills in defaults.
func NewKeylessSigner(opts KeylessOptions) (*KeylessSigner, error) {
	if opts.Token == nil {
		return nil, fmt.Errorf("%w: no OIDC token source configured", ErrKeyless)
	}
	if opts.FulcioURL == "" {
		opts.FulcioURL = PublicGoodFulcioURL
	}
	if opts.RekorURL == "" && !opts.NoTransparencyLog {
		opts.RekorURL = PublicGoodRekorURL
	}
	if opts.NoTransparencyLog {
		opts.RekorURL = ""
	}
	if opts.RekorURL == "" && len(opts.TSAURLs) == 0 {
		return nil, fmt.Errorf("%w: neither a transparency log nor a timestamp authority is configured: a verifier could not tell that the 10-minute signing certificate was valid when it signed", ErrKeyless)
	}
	for _, u := range append([]string{opts.FulcioURL, opts.RekorURL}, opts.TSAURLs...) {
		if u != "" && !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://") {
			return nil, fmt.Errorf("%w: endpoint %q is not an http(s) URL", ErrKeyless, u)
		}
	}
	if opts.Timeout == 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.Retries == 0 {
		opts.Retries = 3
	}
	opts.FulcioURL = strings.TrimSuffix(opts.FulcioURL, "/")
	opts.RekorURL = strings.TrimSuffix(opts.RekorURL, "/")
	return &KeylessSigner{opts: opts}, nil
}

// SignStatement signs statement as a DSSE envelope with a fresh ephemeral key and returns
// the bundle's JSON on one line.
func (s *KeylessSigner) SignStatement(ctx context.Context, statement []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkSignable(statement); err != nil {
		return nil, err
	}
	token, err := s.opts.Token(ctx, OIDCAudience)
	if err != nil {
		return nil, fmt.Errorf("%w: getting the OIDC identity token: %w", ErrKeyless, err)
	}
	if token == "" {
		return nil, fmt.Errorf("%w: the OIDC identity token is empty", ErrKeyless)
	}
	// One key per signature, never stored: the certificate is what binds it to the
	// workflow identity, for ten minutes.
	kp, err := sign.NewEphemeralKeypair(nil)
	if err != nil {
		return nil, fmt.Errorf("%w: generating the ephemeral key: %w", ErrKeyless, err)
	}
	o := sign.BundleOptions{
		Context: ctx,
		CertificateProvider: sign.NewFulcio(&sign.FulcioOptions{
			BaseURL:   s.opts.FulcioURL,
			Timeout:   s.opts.Timeout,
			Retries:   s.opts.Retries,
			Transport: s.opts.Transport,
		}),
		CertificateProviderOptions: &sign.CertificateProviderOptions{IDToken: token},
		TrustedRoot:                s.opts.TrustedMaterial,
	}
	for _, u := range s.opts.TSAURLs {
		o.TimestampAuthorities = append(o.TimestampAuthorities, sign.NewTimestampAuthority(&sign.TimestampAuthorityOptions{
			URL: u, Timeout: s.opts.Timeout, Retries: s.opts.Retries, Transport: s.opts.Transport,
		}))
	}
	if s.opts.RekorURL != "" {
		o.TransparencyLogs = append(o.TransparencyLogs, sign.NewRekor(&sign.RekorOptions{
			BaseURL: s.opts.RekorURL, Timeout: s.opts.Timeout, Retries: s.opts.Retries,
		}))
	}
	pb, err := sign.Bundle(&sign.DSSEData{Data: statement, PayloadType: PayloadType}, kp, o)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyless, err)
	}
	out, err := protojson.Marshal(pb)
	if err != nil {
		return nil, fmt.Errorf("encoding bundle: %w", err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, out); err != nil {
		return nil, fmt.Errorf("compacting bundle: %w", err)
	}
	return compact.Bytes(), nil
}

// keylessVerifierOptions says which evidence a keyless bundle must carry, from what the
// trusted root lists (as `gh attestation verify` does for custom roots): an SCT when it lists
// CT logs; a transparency-log entry, whose integrated time proves when the short-lived
// certificate signed, when it lists Rekor logs; otherwise an RFC 3161 timestamp from one of
// its timestamp authorities. A root with neither logs nor authorities can prove no signing
// time, so it is refused.
func keylessVerifierOptions(tm root.TrustedMaterial) ([]verify.VerifierOption, error) {
	var vo []verify.VerifierOption
	if len(tm.CTLogs()) > 0 {
		vo = append(vo, verify.WithSignedCertificateTimestamps(1))
	}
	switch {
	case len(tm.RekorLogs()) > 0:
		vo = append(vo, verify.WithTransparencyLog(1), verify.WithObserverTimestamps(1))
	case len(tm.TimestampingAuthorities()) > 0:
		vo = append(vo, verify.WithSignedTimestamps(1))
	default:
		return nil, fmt.Errorf("%w: the trusted root lists neither transparency logs nor timestamp authorities, so no signing time can be verified", ErrSignature)
	}
	if len(tm.FulcioCertificateAuthorities()) == 0 {
		return nil, fmt.Errorf("%w: the trusted root lists no certificate authority", ErrSignature)
	}
	return vo, nil
}

// verifyKeyless verifies a certificate bundle in two steps so that a caller can tell a bad
// signature (ErrSignature) from a good signature by someone else (ErrIdentity): sigstore-go
// checks the chain to the trusted Fulcio, the log entry or timestamp and the DSSE signature;
// then the authenticated certificate must match one of the expected identities. The
// identity list is required, so the first step's lack of an identity policy never stands
// alone. The artifacts are not given to sigstore-go: the caller matches them against the
// statement's subjects.
func verifyKeyless(b *bundle.Bundle, opts VerifyOptions) (*certificate.Summary, error) {
	if len(opts.Identities) == 0 {
		return nil, fmt.Errorf("%w: no expected signer identity given for a keyless bundle", ErrIdentity)
	}
	vo, err := keylessVerifierOptions(opts.TrustedMaterial)
	if err != nil {
		return nil, err
	}
	v, err := verify.NewVerifier(opts.TrustedMaterial, vo...)
	if err != nil {
		return nil, fmt.Errorf("setting up bundle verifier: %w", err)
	}
	res, err := v.Verify(b, verify.NewPolicy(verify.WithoutArtifactUnsafe(), verify.WithoutIdentitiesUnsafe()))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSignature, err)
	}
	if res.Signature == nil || res.Signature.Certificate == nil {
		return nil, fmt.Errorf("%w: the verified bundle has no signing certificate", ErrSignature)
	}
	if _, err := verify.CertificateIdentities(opts.Identities).Verify(*res.Signature.Certificate); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrIdentity, err)
	}
	return res.Signature.Certificate, nil
}
