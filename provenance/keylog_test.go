package provenance

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/cloche-dev/cloche/internal/ghfake"
)

// A key-signed bundle entered in Rekor carries the entry, which a verifier that trusts the
// key and the log's root checks the way stock tools do by default (a log entry required);
// cloche's own key verification still accepts it.
func TestKeySignerLogTo(t *testing.T) {
	ss := ghfake.NewSigstore(t, releaseClaims())
	stmt := newFixture(t).statement(t)
	s, opts := newKey(t)
	if s.Logged() {
		t.Fatal("a fresh key signer says it logs")
	}
	if err := s.LogTo(ss.Rekor.URL+"/", time.Second*10); err != nil {
		t.Fatal(err)
	}
	bundleJSON, err := s.SignStatement(context.Background(), stmt)
	if err != nil {
		t.Fatalf("SignStatement: %v", err)
	}
	if _, entries := ss.Counts(); entries != 1 || !s.Logged() {
		t.Fatalf("Rekor logged %d entries, want 1", entries)
	}
	// VerifyBundle checks the entry against the trusted root's Rekor, and refuses a bundle
	// whose entry it cannot check or that another log's key does not verify.
	opts.TrustedMaterial = ss.TrustedRoot()
	if got, err := VerifyBundle(bundleJSON, opts); err != nil || !bytes.Equal(got, stmt) {
		t.Fatalf("VerifyBundle: %v", err)
	}
	if _, err := VerifyBundle(bundleJSON, VerifyOptions{PublicKey: opts.PublicKey}); !errors.Is(err, ErrBundle) {
		t.Errorf("VerifyBundle without a trusted root: %v, want ErrBundle", err)
	}
	other := VerifyOptions{PublicKey: opts.PublicKey, TrustedMaterial: ghfake.NewSigstore(t, releaseClaims()).TrustedRoot()}
	if _, err := VerifyBundle(bundleJSON, other); !errors.Is(err, ErrTransparencyLog) || errors.Is(err, ErrSignature) {
		t.Errorf("VerifyBundle against another Rekor: %v, want ErrTransparencyLog only", err)
	}

	var b bundle.Bundle
	if err := b.UnmarshalJSON(bundleJSON); err != nil {
		t.Fatal(err)
	}
	if n := len(b.GetVerificationMaterial().GetTlogEntries()); n != 1 {
		t.Fatalf("bundle carries %d tlog entries, want 1", n)
	}
	if err := verifyLoggedKeyBundle(ss.TrustedRoot(), opts.PublicKey, &b); err != nil {
		t.Fatalf("sigstore-go requiring a log entry rejects the bundle: %v", err)
	}
	// The same check fails closed on a bundle without the entry.
	plain, _ := newKey(t)
	plainJSON, err := plain.SignStatement(context.Background(), stmt)
	if err != nil {
		t.Fatal(err)
	}
	var pb bundle.Bundle
	if err := pb.UnmarshalJSON(plainJSON); err != nil {
		t.Fatal(err)
	}
	if err := verifyLoggedKeyBundle(ss.TrustedRoot(), plain.PublicKey(), &pb); err == nil {
		t.Error("a bundle without a log entry passes a verifier that requires one")
	}
}

func verifyLoggedKeyBundle(tr *root.TrustedRoot, pub crypto.PublicKey, b *bundle.Bundle) error {
	sv, err := signature.LoadECDSAVerifier(pub.(*ecdsa.PublicKey), crypto.SHA256)
	if err != nil {
		return err
	}
	keys := root.NewTrustedPublicKeyMaterial(func(string) (root.TimeConstrainedVerifier, error) {
		return root.NewExpiringKey(sv, time.Time{}, time.Time{}), nil
	})
	v, err := verify.NewVerifier(root.TrustedMaterialCollection{tr, keys}, verify.WithTransparencyLog(1), verify.WithIntegratedTimestamps(1))
	if err != nil {
		return err
	}
	_, err = v.Verify(b, verify.NewPolicy(verify.WithoutArtifactUnsafe(), verify.WithKey()))
	return err
}

func TestKeySignerLogToRefuses(t *testing.T) {
	s, _ := newKey(t)
	for _, u := range []string{"", "rekor.example", "ftp://rekor.example", "https://"} {
		if err := s.LogTo(u, 0); err == nil || !strings.Contains(err.Error(), "transparency log URL") {
			t.Errorf("LogTo(%q) = %v, want a transparency log URL error", u, err)
		}
	}
	if s.Logged() {
		t.Error("a refused URL left the signer logging")
	}
	// A log that cannot be reached fails the signature, naming the log: no bundle is
	// produced that silently lacks the entry asked for.
	ss := ghfake.NewSigstore(t, releaseClaims())
	dead := ss.Rekor.URL
	ss.Rekor.Close()
	if err := s.LogTo(dead, time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SignStatement(context.Background(), newFixture(t).statement(t)); err == nil || !strings.Contains(err.Error(), dead) {
		t.Errorf("signing with an unreachable log: %v, want an error naming %s", err, dead)
	}
}
