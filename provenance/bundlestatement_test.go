package provenance

import (
	"bytes"
	"errors"
	"testing"
)

// BundleStatement returns the signed payload without a key, and refuses what
// VerifyBundleSigner refuses for its shape: another media type, another payload type, not
// exactly one signature.
func TestBundleStatement(t *testing.T) {
	stmt, bundleJSON, _ := signFixture(t)
	got, err := BundleStatement(bundleJSON)
	if err != nil || !bytes.Equal(got, stmt) {
		t.Fatalf("BundleStatement: %v; payload equal to the signed statement: %v", err, bytes.Equal(got, stmt))
	}
	for name, edit := range map[string]func(b map[string]any){
		"media type":    func(b map[string]any) { b["mediaType"] = "application/vnd.dev.sigstore.bundle+json;version=0.1" },
		"payload type":  func(b map[string]any) { b["dsseEnvelope"].(map[string]any)["payloadType"] = "text/plain" },
		"no signatures": func(b map[string]any) { b["dsseEnvelope"].(map[string]any)["signatures"] = []any{} },
		"two signatures": func(b map[string]any) {
			env := b["dsseEnvelope"].(map[string]any)
			sigs := env["signatures"].([]any)
			env["signatures"] = append(sigs, sigs[0])
		},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := BundleStatement(editBundle(t, bundleJSON, edit)); !errors.Is(err, ErrBundle) {
				t.Fatalf("BundleStatement: %v, want ErrBundle", err)
			}
		})
	}
}
