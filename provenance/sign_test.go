package provenance

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigstore/sigstore-go/pkg/bundle"
)

// newKey generates a key pair on disk with GenerateKey and loads both halves.
func newKey(t testing.TB) (*KeySigner, VerifyOptions) {
	t.Helper()
	dir := t.TempDir()
	priv, pub := filepath.Join(dir, "cosign.key"), filepath.Join(dir, "cosign.pub")
	if err := GenerateKey(priv, pub); err != nil {
		t.Fatalf("GenerateKey: %v", err)
	}
	s, err := LoadKeySigner(priv)
	if err != nil {
		t.Fatalf("LoadKeySigner: %v", err)
	}
	pk, err := LoadPublicKey(pub)
	if err != nil {
		t.Fatalf("LoadPublicKey: %v", err)
	}
	return s, VerifyOptions{PublicKey: pk}
}

func signFixture(t testing.TB) (stmt, bundleJSON []byte, opts VerifyOptions) {
	t.Helper()
	stmt = newFixture(t).statement(t)
	s, opts := newKey(t)
	bundleJSON, err := s.SignStatement(context.Background(), stmt)
	if err != nil {
		t.Fatalf("SignStatement: %v", err)
	}
	return stmt, bundleJSON, opts
}

func TestSignVerifyRoundTrip(t *testing.T) {
	stmt, bundleJSON, opts := signFixture(t)

	got, err := VerifyBundle(bundleJSON, opts)
	if err != nil {
		t.Fatalf("VerifyBundle: %v", err)
	}
	if !bytes.Equal(got, stmt) {
		t.Fatal("verified payload differs from the signed statement")
	}
	if bytes.Contains(bundleJSON, []byte("\n")) {
		t.Error("bundle is not one line")
	}

	// sigstore-go itself loads the file as a v0.3 bundle with a DSSE envelope and a key hint.
	path := filepath.Join(t.TempDir(), "hello.intoto.jsonl")
	if err := os.WriteFile(path, bundleJSON, 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := bundle.LoadJSONFromPath(path)
	if err != nil {
		t.Fatalf("bundle.LoadJSONFromPath: %v", err)
	}
	if b.GetMediaType() != BundleMediaType {
		t.Fatalf("mediaType = %q", b.GetMediaType())
	}
	if v, err := b.Version(); err != nil || v != "v0.3" {
		t.Fatalf("version = %q, %v", v, err)
	}
	env, err := b.Envelope()
	if err != nil {
		t.Fatalf("Envelope: %v", err)
	}
	if env.PayloadType != PayloadType {
		t.Fatalf("payloadType = %q", env.PayloadType)
	}
	st, err := env.Statement()
	if err != nil {
		t.Fatalf("Statement: %v", err)
	}
	if st.GetPredicateType() != PredicateType || len(st.GetSubject()) != 4 { // three artifacts and SHA256SUMS
		t.Fatalf("statement predicateType %q, %d subjects", st.GetPredicateType(), len(st.GetSubject()))
	}
	if b.GetVerificationMaterial().GetPublicKey().GetHint() == "" {
		t.Fatal("bundle carries no public key hint")
	}

	// And the verified statement goes on through the statement checks.
	p, err := ParseStatement(got)
	if err != nil {
		t.Fatal(err)
	}
	if p.InvocationID == "" {
		t.Fatal("no invocation id")
	}
}

// editBundle decodes a bundle generically, applies edit and encodes it again.
func editBundle(t *testing.T, bundleJSON []byte, edit func(b map[string]any)) []byte {
	t.Helper()
	var b map[string]any
	if err := json.Unmarshal(bundleJSON, &b); err != nil {
		t.Fatal(err)
	}
	edit(b)
	out, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestVerifyBundleRejects(t *testing.T) {
	stmt, bundleJSON, opts := signFixture(t)
	_, otherOpts := newKey(t)

	t.Run("wrong public key", func(t *testing.T) {
		if _, err := VerifyBundle(bundleJSON, otherOpts); !errors.Is(err, ErrSignature) {
			t.Fatalf("error = %v, want ErrSignature", err)
		}
	})
	t.Run("payload changed after signing", func(t *testing.T) {
		evil := bytes.Replace(stmt, []byte(`"make","-C","src","hello"`), []byte(`"make","-C","src","evil!"`), 1)
		if bytes.Equal(evil, stmt) {
			t.Fatal("test did not change the statement")
		}
		tampered := editBundle(t, bundleJSON, func(b map[string]any) {
			b["dsseEnvelope"].(map[string]any)["payload"] = base64.StdEncoding.EncodeToString(evil)
		})
		if _, err := VerifyBundle(tampered, opts); !errors.Is(err, ErrSignature) {
			t.Fatalf("error = %v, want ErrSignature", err)
		}
	})
	t.Run("signature bit flipped", func(t *testing.T) {
		tampered := editBundle(t, bundleJSON, func(b map[string]any) {
			sig := b["dsseEnvelope"].(map[string]any)["signatures"].([]any)[0].(map[string]any)
			raw, err := base64.StdEncoding.DecodeString(sig["sig"].(string))
			if err != nil {
				t.Fatal(err)
			}
			raw[len(raw)-1] ^= 1
			sig["sig"] = base64.StdEncoding.EncodeToString(raw)
		})
		if _, err := VerifyBundle(tampered, opts); !errors.Is(err, ErrSignature) {
			t.Fatalf("error = %v, want ErrSignature", err)
		}
	})
	t.Run("key hint of another key is ignored, signature still decides", func(t *testing.T) {
		other, _ := newKey(t)
		rehinted := editBundle(t, bundleJSON, func(b map[string]any) {
			b["verificationMaterial"].(map[string]any)["publicKey"].(map[string]any)["hint"] = string(other.hint)
		})
		if _, err := VerifyBundle(rehinted, opts); err != nil {
			t.Fatalf("trusted key's signature with a foreign hint: %v", err)
		}
		if _, err := VerifyBundle(rehinted, otherOpts); !errors.Is(err, ErrSignature) {
			t.Fatalf("foreign key named by hint: error = %v, want ErrSignature", err)
		}
	})
	for _, c := range []struct {
		name   string
		bundle []byte
		want   string
	}{
		{"not JSON", []byte("this is not a bundle"), "decoding"},
		{"empty", nil, "decoding"},
		{"v0.2 media type", editBundle(t, bundleJSON, func(b map[string]any) {
			b["mediaType"] = "application/vnd.dev.sigstore.bundle+json;version=0.2"
		}), "mediaType"},
		{"unknown media type", editBundle(t, bundleJSON, func(b map[string]any) {
			b["mediaType"] = "application/json"
		}), "decoding"},
		{"unknown field", editBundle(t, bundleJSON, func(b map[string]any) { b["cert"] = "x" }), "decoding"},
		{"payload type", editBundle(t, bundleJSON, func(b map[string]any) {
			b["dsseEnvelope"].(map[string]any)["payloadType"] = "text/plain"
		}), "payloadType"},
		{"no verification material", editBundle(t, bundleJSON, func(b map[string]any) {
			delete(b, "verificationMaterial")
		}), "verification material"},
		{"two signatures", editBundle(t, bundleJSON, func(b map[string]any) {
			env := b["dsseEnvelope"].(map[string]any)
			sigs := env["signatures"].([]any)
			env["signatures"] = append(sigs, sigs[0])
		}), "2 signatures"},
		{"message signature instead of DSSE", editBundle(t, bundleJSON, func(b map[string]any) {
			delete(b, "dsseEnvelope")
			b["messageSignature"] = map[string]any{
				"messageDigest": map[string]any{"algorithm": "SHA2_256", "digest": base64.StdEncoding.EncodeToString(make([]byte, 32))},
				"signature":     base64.StdEncoding.EncodeToString([]byte("sig")),
			}
		}), "DSSE"},
		{"too large", make([]byte, MaxBundleSize+1), "limit"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := VerifyBundle(c.bundle, opts)
			if !errors.Is(err, ErrBundle) {
				t.Fatalf("error = %v, want ErrBundle", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not mention %q", err, c.want)
			}
		})
	}
	t.Run("no key", func(t *testing.T) {
		if _, err := VerifyBundle(bundleJSON, VerifyOptions{}); !errors.Is(err, ErrSignature) {
			t.Fatalf("error = %v, want ErrSignature", err)
		}
	})
	t.Run("non-P-256 key", func(t *testing.T) {
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := VerifyBundle(bundleJSON, VerifyOptions{PublicKey: pub}); !errors.Is(err, ErrSignature) {
			t.Fatalf("error = %v, want ErrSignature", err)
		}
	})
}

func TestSignStatementRefuses(t *testing.T) {
	s, _ := newKey(t)
	stmt := newFixture(t).statement(t)
	if _, err := s.SignStatement(context.Background(), []byte(`{"hello":"world"}`)); !errors.Is(err, ErrStatement) {
		t.Fatalf("signing non-statement: error = %v, want ErrStatement", err)
	}
	noSubject := bytes.Replace(stmt, []byte(`"subject":`), []byte(`"subject":[],"x":`), 1)
	if _, err := s.SignStatement(context.Background(), noSubject); !errors.Is(err, ErrStatement) {
		t.Fatalf("signing malformed statement: error = %v, want ErrStatement", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.SignStatement(ctx, stmt); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: error = %v, want context.Canceled", err)
	}
}

func TestGenerateKey(t *testing.T) {
	dir := t.TempDir()
	priv, pub := filepath.Join(dir, "k.pem"), filepath.Join(dir, "k.pub")
	if err := GenerateKey(priv, pub); err != nil {
		t.Fatal(err)
	}
	for path, mode := range map[string]os.FileMode{priv: 0o600, pub: 0o644} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s mode = %v, want %v", filepath.Base(path), fi.Mode().Perm(), mode)
		}
	}
	before, err := os.ReadFile(priv)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(before)
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("private key file is not a PKCS#8 PEM")
	}

	// Refuses to overwrite either file, and leaves the existing files alone.
	if err := GenerateKey(priv, filepath.Join(dir, "new.pub")); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("existing private key: error = %v", err)
	}
	if err := GenerateKey(filepath.Join(dir, "new.pem"), pub); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("existing public key: error = %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "new.pem")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused GenerateKey left a file behind: %v", err)
	}
	after, err := os.ReadFile(priv)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("private key changed")
	}
	if err := GenerateKey(filepath.Join(dir, "same"), filepath.Join(dir, "same")); err == nil {
		t.Fatal("same path for both halves accepted")
	}
	// No temporary files remain.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("directory holds %v, want only the two key files", names)
	}
	if err := GenerateKey(filepath.Join(dir, "missing-dir", "k"), filepath.Join(dir, "k2.pub")); err == nil {
		t.Fatal("key in a missing directory accepted")
	}
}

func writePEM(t *testing.T, blocks ...*pem.Block) string {
	t.Helper()
	var buf bytes.Buffer
	for _, b := range blocks {
		if err := pem.Encode(&buf, b); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// A SEC 1 key as openssl ecparam -genkey writes it (parameters block first) signs bundles
// that verify with its public key.
func TestLoadKeySignerSEC1(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	p256OID := []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}
	path := writePEM(t, &pem.Block{Type: "EC PARAMETERS", Bytes: p256OID}, &pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	s, err := LoadKeySigner(path)
	if err != nil {
		t.Fatalf("LoadKeySigner: %v", err)
	}
	stmt := newFixture(t).statement(t)
	b, err := s.SignStatement(context.Background(), stmt)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyBundle(b, VerifyOptions{PublicKey: &key.PublicKey}); err != nil {
		t.Fatalf("VerifyBundle: %v", err)
	}
}

func TestLoadKeysReject(t *testing.T) {
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384DER, err := x509.MarshalPKCS8PrivateKey(p384)
	if err != nil {
		t.Fatal(err)
	}
	_, edPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edDER, err := x509.MarshalPKCS8PrivateKey(edPriv)
	if err != nil {
		t.Fatal(err)
	}
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p256DER, err := x509.MarshalPKCS8PrivateKey(p256)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&p256.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	p384PubDER, err := x509.MarshalPKIXPublicKey(&p384.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		path string
		want string
	}{
		{"P-384 key", writePEM(t, &pem.Block{Type: "PRIVATE KEY", Bytes: p384DER}), "P-256"},
		{"Ed25519 key", writePEM(t, &pem.Block{Type: "PRIVATE KEY", Bytes: edDER}), "P-256"},
		{"public key given", writePEM(t, &pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), "PEM block"},
		{"two keys", writePEM(t, &pem.Block{Type: "PRIVATE KEY", Bytes: p256DER}, &pem.Block{Type: "PRIVATE KEY", Bytes: p256DER}), "more than one"},
		{"garbage DER", writePEM(t, &pem.Block{Type: "PRIVATE KEY", Bytes: []byte("nope")}), "signing key"},
		{"not PEM", writePEM(t), "no PEM"},
		{"missing", filepath.Join(t.TempDir(), "absent.pem"), "no such file"},
	} {
		t.Run("private "+c.name, func(t *testing.T) {
			if _, err := LoadKeySigner(c.path); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error = %v, want one mentioning %q", err, c.want)
			}
		})
	}
	for _, c := range []struct {
		name string
		path string
		want string
	}{
		{"private key given", writePEM(t, &pem.Block{Type: "PRIVATE KEY", Bytes: p256DER}), "PUBLIC KEY"},
		{"P-384 key", writePEM(t, &pem.Block{Type: "PUBLIC KEY", Bytes: p384PubDER}), "P-256"},
		{"trailing junk", func() string {
			p := writePEM(t, &pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
			f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteString("junk"); err != nil {
				t.Fatal(err)
			}
			return p
		}(), "not PEM"},
		{"too large", func() string {
			p := filepath.Join(t.TempDir(), "big.pub")
			if err := os.WriteFile(p, make([]byte, maxKeyFileSize+1), 0o644); err != nil {
				t.Fatal(err)
			}
			return p
		}(), "larger than"},
	} {
		t.Run("public "+c.name, func(t *testing.T) {
			if _, err := LoadPublicKey(c.path); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error = %v, want one mentioning %q", err, c.want)
			}
		})
	}
}

func BenchmarkSignVerify(b *testing.B) {
	stmt := newFixture(b).statement(b)
	s, opts := newKey(b)
	ctx := context.Background()
	b.SetBytes(int64(len(stmt)))
	b.ResetTimer()
	for b.Loop() {
		bundleJSON, err := s.SignStatement(ctx, stmt)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := VerifyBundle(bundleJSON, opts); err != nil {
			b.Fatal(err)
		}
	}
}
