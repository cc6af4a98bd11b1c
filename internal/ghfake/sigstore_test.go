package ghfake

import (
	"bytes"
	"context"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/certificate-transparency-go/x509util"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore-go/pkg/verify"
)

// signWithFake signs a DSSE payload through the fake's Fulcio and Rekor with sigstore-go's
// own signing client, as the keyless signer does.
func signWithFake(t *testing.T, s *Sigstore) *bundle.Bundle {
	t.Helper()
	tok, err := s.mintToken("sigstore")
	if err != nil {
		t.Fatal(err)
	}
	kp, err := sign.NewEphemeralKeypair(nil)
	if err != nil {
		t.Fatal(err)
	}
	pb, err := sign.Bundle(&sign.DSSEData{Data: []byte(`{"_type":"https://in-toto.io/Statement/v1"}`), PayloadType: "application/vnd.in-toto+json"}, kp, sign.BundleOptions{
		Context:                    context.Background(),
		CertificateProvider:        sign.NewFulcio(&sign.FulcioOptions{BaseURL: s.Fulcio.URL}),
		CertificateProviderOptions: &sign.CertificateProviderOptions{IDToken: tok},
		TransparencyLogs:           []sign.Transparency{sign.NewRekor(&sign.RekorOptions{BaseURL: s.Rekor.URL})},
	})
	if err != nil {
		t.Fatalf("signing against the fake: %v", err)
	}
	b, err := bundle.NewBundle(pb)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func verifyDefault(tm root.TrustedMaterial, b *bundle.Bundle) error {
	v, err := verify.NewVerifier(tm, verify.WithSignedCertificateTimestamps(1), verify.WithTransparencyLog(1), verify.WithObserverTimestamps(1))
	if err != nil {
		return err
	}
	_, err = v.Verify(b, verify.NewPolicy(verify.WithoutArtifactUnsafe(), verify.WithoutIdentitiesUnsafe()))
	return err
}

// The fake Fulcio's certificates carry one SCT, from the CT log the trusted root lists, that
// sigstore-go verifies the way cosign and gh do by default; a root without that log cannot
// verify it.
func TestFulcioEmbedsSCTFromTrustedCTLog(t *testing.T) {
	s := NewSigstore(t, Claims{Repository: "acme/widget", RepositoryOwner: "acme", Ref: "refs/heads/main",
		JobWorkflowRef: "acme/widget/.github/workflows/ci.yml@refs/heads/main"})
	b := signWithFake(t, s)
	vc, err := b.VerificationContent()
	if err != nil {
		t.Fatal(err)
	}
	leaf := vc.Certificate()
	scts, err := x509util.ParseSCTsFromCertificate(leaf.Raw)
	if err != nil || len(scts) != 1 {
		t.Fatalf("certificate carries %d SCTs (%v), want 1", len(scts), err)
	}
	if got, want := hex.EncodeToString(scts[0].LogID.KeyID[:]), hex.EncodeToString(s.ct.id[:]); got != want {
		t.Errorf("SCT log ID %s, want the fake CT log's %s", got, want)
	}
	tr := s.TrustedRoot()
	if len(tr.CTLogs()) != 1 {
		t.Fatalf("trusted root lists %d CT logs, want 1", len(tr.CTLogs()))
	}
	if err := verifyDefault(tr, b); err != nil {
		t.Fatalf("sigstore-go rejects the fake's bundle: %v", err)
	}

	noCT, err := root.NewTrustedRoot(root.TrustedRootMediaType01, tr.FulcioCertificateAuthorities(), nil, nil, tr.RekorLogs())
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyDefault(noCT, b); err == nil || !strings.Contains(err.Error(), "SCT") {
		t.Errorf("without the CT log in the root: %v, want an SCT failure", err)
	}
}

// The checkpoint is named and signed as Rekor v1 does: "<host> - <tree ID>", signer <host>,
// the host being that of the log's URL (sigstore-js finds the log by that name).
func TestRekorCheckpointOriginIsItsHost(t *testing.T) {
	s := NewSigstore(t, Claims{Repository: "acme/widget", RepositoryOwner: "acme"})
	b := signWithFake(t, s)
	entries := b.GetVerificationMaterial().GetTlogEntries()
	if len(entries) != 1 {
		t.Fatalf("%d tlog entries", len(entries))
	}
	cp := entries[0].GetInclusionProof().GetCheckpoint().GetEnvelope()
	u, err := url.Parse(s.Rekor.URL)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(cp, "\n")
	if want := u.Hostname() + " - "; !strings.HasPrefix(lines[0], want) || len(lines[0]) <= len(want) {
		t.Errorf("checkpoint origin %q, want %q followed by the tree ID", lines[0], want)
	}
	if !strings.Contains(cp, "\n\u2014 "+u.Hostname()+" ") {
		t.Errorf("checkpoint is not signed as %s:\n%s", u.Hostname(), cp)
	}
}

// The trusted root file is one JSON line ending in a newline, which gh's JSON-lines reader
// needs, and reads back as the same root.
func TestWriteTrustedRootIsOneLine(t *testing.T) {
	s := NewSigstore(t, Claims{})
	path := filepath.Join(t.TempDir(), "trusted_root.json")
	s.WriteTrustedRoot(path)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(b, []byte("\n")) || bytes.Count(b, []byte("\n")) != 1 {
		t.Fatalf("trusted root file has %d newlines, ends in newline %v; want exactly one, at the end", bytes.Count(b, []byte("\n")), bytes.HasSuffix(b, []byte("\n")))
	}
	tr, err := root.NewTrustedRootFromJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.CTLogs()) != 1 || len(tr.RekorLogs()) != 1 || len(tr.FulcioCertificateAuthorities()) != 1 {
		t.Errorf("root read back lists %d CT logs, %d Rekor logs, %d CAs", len(tr.CTLogs()), len(tr.RekorLogs()), len(tr.FulcioCertificateAuthorities()))
	}
}
