package provenance

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/sethvargo/go-githubactions"
	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/verify"

	"github.com/cloche-dev/cloche/internal/ghfake"
)

func releaseClaims() ghfake.Claims {
	return ghfake.Claims{
		Repository: "acme/widget", RepositoryID: "101", RepositoryOwner: "acme", RepositoryOwnerID: "7",
		Ref: "refs/tags/v1.2.3", SHA: strings.Repeat("ab", 20),
		WorkflowRef:    "acme/widget/.github/workflows/release.yml@refs/tags/v1.2.3",
		JobWorkflowRef: "acme/widget/.github/workflows/release.yml@refs/tags/v1.2.3",
		EventName:      "push", RunID: "4242", RunAttempt: "1", RunnerEnvironment: "self-hosted", Visibility: "public",
	}
}

// actionsToken gets the token the way the action does: go-githubactions against the job's
// ACTIONS_ID_TOKEN_REQUEST_URL.
func actionsToken(ss *ghfake.Sigstore) IDTokenSource {
	env := map[string]string{
		"ACTIONS_ID_TOKEN_REQUEST_URL":   ss.TokenURL(),
		"ACTIONS_ID_TOKEN_REQUEST_TOKEN": ss.RequestToken,
	}
	a := githubactions.New(githubactions.WithGetenv(func(k string) string { return env[k] }))
	return a.GetIDToken
}

func widgetIdentity(t testing.TB, ext certificate.Extensions) verify.CertificateIdentity {
	t.Helper()
	id, err := verify.NewCertificateIdentity(
		mustSAN(t, `^https://github\.com/acme/widget/\.github/workflows/release\.yml@`),
		verify.IssuerMatcher{Issuer: ghfake.GitHubIssuer}, ext)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func mustSAN(t testing.TB, re string) verify.SubjectAlternativeNameMatcher {
	t.Helper()
	m, err := verify.NewSANMatcher("", re)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func keylessSign(t *testing.T, ss *ghfake.Sigstore, stmt []byte) []byte {
	t.Helper()
	s, err := NewKeylessSigner(KeylessOptions{FulcioURL: ss.Fulcio.URL, RekorURL: ss.Rekor.URL, Token: actionsToken(ss), TrustedMaterial: ss.TrustedRoot()})
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.SignStatement(context.Background(), stmt)
	if err != nil {
		t.Fatalf("SignStatement: %v", err)
	}
	return b
}

func TestKeylessSignVerify(t *testing.T) {
	ss := ghfake.NewSigstore(t, releaseClaims())
	stmt := newFixture(t).statement(t)
	bundleJSON := keylessSign(t, ss, stmt)
	if bytes.Contains(bundleJSON, []byte("\n")) {
		t.Error("bundle is not one line")
	}
	if certs, entries := ss.Counts(); certs != 1 || entries != 1 {
		t.Errorf("Fulcio issued %d certificates and Rekor logged %d entries, want 1 and 1", certs, entries)
	}

	// The verifier reads the trusted root from its JSON form, as --trusted-root does.
	rootJSON, err := ss.TrustedRoot().MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	tr, err := root.NewTrustedRootFromJSON(rootJSON)
	if err != nil {
		t.Fatal(err)
	}
	want := certificate.Extensions{SourceRepositoryURI: "https://github.com/acme/widget", SourceRepositoryRef: "refs/tags/v1.2.3"}
	vb, err := VerifyBundleSigner(bundleJSON, VerifyOptions{TrustedMaterial: tr, Identities: []verify.CertificateIdentity{widgetIdentity(t, want)}})
	if err != nil {
		t.Fatalf("VerifyBundleSigner: %v", err)
	}
	if !bytes.Equal(vb.Statement, stmt) {
		t.Error("verified statement differs from the signed one")
	}
	c := vb.Certificate
	if c == nil || c.SourceRepositoryDigest != strings.Repeat("ab", 20) || c.RunnerEnvironment != "self-hosted" ||
		c.RunInvocationURI != "https://github.com/acme/widget/actions/runs/4242/attempts/1" || c.Issuer != ghfake.GitHubIssuer {
		t.Errorf("certificate summary = %+v", c)
	}
	// VerifyBundle (statement only) takes the same path.
	if got, err := VerifyBundle(bundleJSON, VerifyOptions{TrustedMaterial: tr, Identities: []verify.CertificateIdentity{widgetIdentity(t, want)}}); err != nil || !bytes.Equal(got, stmt) {
		t.Errorf("VerifyBundle: %v", err)
	}
}

func TestKeylessVerifyRejects(t *testing.T) {
	ss := ghfake.NewSigstore(t, releaseClaims())
	stmt := newFixture(t).statement(t)
	bundleJSON := keylessSign(t, ss, stmt)
	tr := ss.TrustedRoot()
	ok := []verify.CertificateIdentity{widgetIdentity(t, certificate.Extensions{SourceRepositoryURI: "https://github.com/acme/widget"})}

	cases := []struct {
		name   string
		bundle []byte
		opts   VerifyOptions
		want   error
	}{
		{"other repository expected", bundleJSON, VerifyOptions{TrustedMaterial: tr, Identities: []verify.CertificateIdentity{
			widgetIdentity(t, certificate.Extensions{SourceRepositoryURI: "https://github.com/acme/gadget"})}}, ErrIdentity},
		{"other tag expected", bundleJSON, VerifyOptions{TrustedMaterial: tr, Identities: []verify.CertificateIdentity{
			widgetIdentity(t, certificate.Extensions{SourceRepositoryRef: "refs/tags/v9.9.9"})}}, ErrIdentity},
		{"other workflow expected", bundleJSON, VerifyOptions{TrustedMaterial: tr, Identities: []verify.CertificateIdentity{func() verify.CertificateIdentity {
			id, err := verify.NewCertificateIdentity(mustSAN(t, `^https://github\.com/acme/widget/\.github/workflows/other\.yml@`), verify.IssuerMatcher{Issuer: ghfake.GitHubIssuer}, certificate.Extensions{})
			if err != nil {
				t.Fatal(err)
			}
			return id
		}()}}, ErrIdentity},
		{"other issuer expected", bundleJSON, VerifyOptions{TrustedMaterial: tr, Identities: []verify.CertificateIdentity{func() verify.CertificateIdentity {
			id, err := verify.NewCertificateIdentity(mustSAN(t, `^https://github\.com/acme/widget/`), verify.IssuerMatcher{Issuer: "https://accounts.example.com"}, certificate.Extensions{})
			if err != nil {
				t.Fatal(err)
			}
			return id
		}()}}, ErrIdentity},
		{"no identity given", bundleJSON, VerifyOptions{TrustedMaterial: tr}, ErrIdentity},
		{"another Sigstore's root", bundleJSON, VerifyOptions{TrustedMaterial: ghfake.NewSigstore(t, releaseClaims()).TrustedRoot(), Identities: ok}, ErrSignature},
		{"payload changed", editBundle(t, bundleJSON, func(b map[string]any) {
			b["dsseEnvelope"].(map[string]any)["payload"] = base64.StdEncoding.EncodeToString(bytes.Replace(stmt, []byte(`"make"`), []byte(`"evil"`), 1))
		}), VerifyOptions{TrustedMaterial: tr, Identities: ok}, ErrSignature},
		{"transparency log entry removed", editBundle(t, bundleJSON, func(b map[string]any) {
			delete(b["verificationMaterial"].(map[string]any), "tlogEntries")
		}), VerifyOptions{TrustedMaterial: tr, Identities: ok}, ErrSignature},
		{"keyless bundle with only a key", bundleJSON, func() VerifyOptions { _, o := newKey(t); return o }(), ErrBundle},
		{"root without logs or authorities", bundleJSON, VerifyOptions{TrustedMaterial: func() root.TrustedMaterial {
			r, err := root.NewTrustedRoot(root.TrustedRootMediaType01, tr.FulcioCertificateAuthorities(), nil, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			return r
		}(), Identities: ok}, ErrSignature},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := VerifyBundleSigner(c.bundle, c.opts)
			if !errors.Is(err, c.want) {
				t.Fatalf("error = %v, want %v", err, c.want)
			}
		})
	}

	t.Run("key bundle with only a trusted root", func(t *testing.T) {
		_, keyBundle, _ := signFixture(t)
		if _, err := VerifyBundleSigner(keyBundle, VerifyOptions{TrustedMaterial: tr, Identities: ok}); !errors.Is(err, ErrBundle) {
			t.Fatalf("error = %v, want ErrBundle", err)
		}
	})
}

func TestKeylessSignerFails(t *testing.T) {
	ss := ghfake.NewSigstore(t, releaseClaims())
	stmt := newFixture(t).statement(t)
	ctx := context.Background()

	t.Run("no token source", func(t *testing.T) {
		if _, err := NewKeylessSigner(KeylessOptions{}); !errors.Is(err, ErrKeyless) {
			t.Fatalf("error = %v", err)
		}
	})
	t.Run("no log and no timestamp authority", func(t *testing.T) {
		if _, err := NewKeylessSigner(KeylessOptions{Token: actionsToken(ss), NoTransparencyLog: true}); !errors.Is(err, ErrKeyless) {
			t.Fatalf("error = %v", err)
		}
	})
	t.Run("token endpoint refuses", func(t *testing.T) {
		env := map[string]string{"ACTIONS_ID_TOKEN_REQUEST_URL": ss.TokenURL(), "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "wrong"}
		a := githubactions.New(githubactions.WithGetenv(func(k string) string { return env[k] }))
		s, err := NewKeylessSigner(KeylessOptions{FulcioURL: ss.Fulcio.URL, RekorURL: ss.Rekor.URL, Token: a.GetIDToken})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.SignStatement(ctx, stmt); !errors.Is(err, ErrKeyless) {
			t.Fatalf("error = %v", err)
		}
	})
	t.Run("token for another issuer is refused by Fulcio", func(t *testing.T) {
		other := ghfake.NewSigstore(t, releaseClaims())
		s, err := NewKeylessSigner(KeylessOptions{FulcioURL: ss.Fulcio.URL, RekorURL: ss.Rekor.URL, Token: actionsToken(other), Retries: 1})
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.SignStatement(ctx, stmt)
		if !errors.Is(err, ErrKeyless) || !strings.Contains(err.Error(), "401") {
			t.Fatalf("error = %v", err)
		}
	})
	t.Run("self-check against a root that does not trust this Fulcio", func(t *testing.T) {
		s, err := NewKeylessSigner(KeylessOptions{FulcioURL: ss.Fulcio.URL, RekorURL: ss.Rekor.URL, Token: actionsToken(ss),
			TrustedMaterial: ghfake.NewSigstore(t, releaseClaims()).TrustedRoot()})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.SignStatement(ctx, stmt); !errors.Is(err, ErrKeyless) {
			t.Fatalf("error = %v", err)
		}
	})
	t.Run("refuses to sign what is not a statement", func(t *testing.T) {
		s, err := NewKeylessSigner(KeylessOptions{FulcioURL: ss.Fulcio.URL, RekorURL: ss.Rekor.URL, Token: actionsToken(ss)})
		if err != nil {
			t.Fatal(err)
		}
		before, _ := ss.Counts()
		if _, err := s.SignStatement(ctx, []byte(`{"hello":"world"}`)); !errors.Is(err, ErrStatement) {
			t.Fatalf("error = %v", err)
		}
		if certs, _ := ss.Counts(); certs != before {
			t.Errorf("Fulcio was asked for %d certificates for a refused statement", certs)
		}
	})
}
