package provenance

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	intoto "github.com/in-toto/attestation/go/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/cloche-dev/cloche/internal/atomicfile"
)

// maxKeyFileSize caps a PEM key file; a P-256 key in PEM is a few hundred bytes.
const maxKeyFileSize = 64 << 10

// Signer signs a statement into a Sigstore bundle (v0.3 JSON, one line). KeySigner signs
// with a key file; keyless signing (Fulcio certificate, Rekor entry) implements the same
// interface.
type Signer interface {
	SignStatement(ctx context.Context, statement []byte) (bundleJSON []byte, err error)
}

// KeySigner signs with an ECDSA P-256 private key loaded from a file.
type KeySigner struct {
	key  *ecdsa.PrivateKey
	hint []byte
	// rekor, when set, is the transparency log each signature is also entered in (see
	// LogTo); otherwise the bundle carries no log entry and no timestamp.
	rekor *sign.RekorOptions
}

var _ Signer = (*KeySigner)(nil)

// LoadKeySigner reads an ECDSA P-256 private key from a PEM file ("PRIVATE KEY", PKCS#8, or
// "EC PRIVATE KEY", SEC 1).
func LoadKeySigner(privateKeyPEMPath string) (*KeySigner, error) {
	block, err := readPEM(privateKeyPEMPath)
	if err != nil {
		return nil, err
	}
	var key any
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("signing key %s: PEM block is %q, expected \"PRIVATE KEY\" or \"EC PRIVATE KEY\"", privateKeyPEMPath, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", privateKeyPEMPath, err)
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("signing key %s: is %T, expected an ECDSA P-256 key", privateKeyPEMPath, key)
	}
	return newKeySigner(ec)
}

func newKeySigner(key *ecdsa.PrivateKey) (*KeySigner, error) {
	hint, err := keyHint(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	return &KeySigner{key: key, hint: hint}, nil
}

// keyHint names a public key in the bundle as sigstore does: base64 of the SHA-256 of its
// PKIX encoding. The hint is not authenticated; VerifyBundle ignores it.
func keyHint(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encoding public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return []byte(base64.StdEncoding.EncodeToString(sum[:])), nil
}

// LogTo makes every later signature also be entered in the Rekor v1 log at rekorURL, whose
// entry (inclusion promise and proof) the bundle then carries. Stock verifiers (cosign, gh,
// sigstore-js) require a log entry or a timestamp by default; without one, a key-signed bundle
// verifies with them only with --insecure-ignore-tlog. The entry also publishes that this key
// signed this statement, and when. `cloche verify` trusts the key and the hardware evidence,
// not the log, so a bundle verifies the same with or without it.
func (s *KeySigner) LogTo(rekorURL string, timeout time.Duration) error {
	if err := CheckRekorURL(rekorURL); err != nil {
		return err
	}
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	s.rekor = &sign.RekorOptions{BaseURL: strings.TrimSuffix(rekorURL, "/"), Timeout: timeout, Retries: 3}
	return nil
}

// CheckRekorURL checks that rekorURL can name a Rekor log: an http(s) URL with a host.
func CheckRekorURL(rekorURL string) error {
	u, err := url.Parse(rekorURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("transparency log URL %q: expected an http(s) URL such as %s", rekorURL, PublicGoodRekorURL)
	}
	return nil
}

// Logged says whether signatures are entered in a transparency log (LogTo).
func (s *KeySigner) Logged() bool { return s.rekor != nil }

// PublicKey returns the signer's public key.
func (s *KeySigner) PublicKey() crypto.PublicKey { return &s.key.PublicKey }

// SignStatement signs statement as a DSSE envelope (payload type PayloadType) and returns
// the Sigstore bundle's JSON on one line. The statement must be an in-toto v1 statement.
func (s *KeySigner) SignStatement(ctx context.Context, statement []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkSignable(statement); err != nil {
		return nil, err
	}
	o := sign.BundleOptions{Context: ctx}
	if s.rekor != nil {
		o.TransparencyLogs = []sign.Transparency{sign.NewRekor(s.rekor)}
	}
	pb, err := sign.Bundle(&sign.DSSEData{Data: statement, PayloadType: PayloadType}, keypair{s}, o)
	if err != nil {
		if s.rekor != nil {
			return nil, fmt.Errorf("signing statement and entering it in the transparency log %s: %w", s.rekor.BaseURL, err)
		}
		return nil, fmt.Errorf("signing statement: %w", err)
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

// checkSignable refuses to sign anything but an in-toto v1 statement: a signature is a
// claim, and a signer should not be usable to sign arbitrary bytes under PayloadType.
func checkSignable(statement []byte) error {
	if len(statement) > MaxStatementSize {
		return fmt.Errorf("%w: statement is %d bytes, limit %d", ErrStatement, len(statement), MaxStatementSize)
	}
	var st intoto.Statement
	if err := protojson.Unmarshal(statement, &st); err != nil {
		return fmt.Errorf("%w: not an in-toto statement: %w", ErrStatement, err)
	}
	if st.GetType() != StatementType {
		return fmt.Errorf("%w: _type is %q, expected %q", ErrStatement, st.GetType(), StatementType)
	}
	if err := st.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrStatement, err)
	}
	return nil
}

// keypair adapts a KeySigner to sigstore-go's sign.Keypair.
type keypair struct{ s *KeySigner }

func (k keypair) GetHashAlgorithm() protocommon.HashAlgorithm {
	return protocommon.HashAlgorithm_SHA2_256
}

func (k keypair) GetSigningAlgorithm() protocommon.PublicKeyDetails {
	return protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256
}

func (k keypair) GetHint() []byte { return k.s.hint }

func (k keypair) GetKeyAlgorithm() string { return "ECDSA" }

func (k keypair) GetPublicKey() crypto.PublicKey { return &k.s.key.PublicKey }

func (k keypair) GetPublicKeyPem() (string, error) {
	b, err := publicKeyPEM(&k.s.key.PublicKey)
	return string(b), err
}

// SignData returns the ASN.1 ECDSA signature over SHA-256(data) and that digest.
func (k keypair) SignData(ctx context.Context, data []byte) ([]byte, []byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	digest := sha256.Sum256(data)
	sig, err := ecdsa.SignASN1(rand.Reader, k.s.key, digest[:])
	if err != nil {
		return nil, nil, fmt.Errorf("ECDSA signing: %w", err)
	}
	return sig, digest[:], nil
}

// GenerateKey writes a new ECDSA P-256 private key (PKCS#8 PEM, mode 0600) to privPath and
// its public key (PKIX PEM, mode 0644) to pubPath. Each file is written atomically (temp
// file + rename), and neither may exist beforehand.
func GenerateKey(privPath, pubPath string) error {
	for _, p := range []string{privPath, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("generating key: %s already exists; refusing to overwrite it", p)
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("generating key: %w", err)
		}
	}
	if filepath.Clean(privPath) == filepath.Clean(pubPath) {
		return fmt.Errorf("generating key: private and public key paths are both %s", privPath)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encoding private key: %w", err)
	}
	pub, err := publicKeyPEM(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := writeNewFile(privPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	if err := writeNewFile(pubPath, pub, 0o644); err != nil {
		// Leave no private key behind whose public half was never written.
		_ = os.Remove(privPath)
		return err
	}
	return nil
}

// writeNewFile writes data to path atomically, failing if path exists (a key is never
// replaced).
func writeNewFile(path string, data []byte, mode os.FileMode) error {
	err := atomicfile.WriteNewFile(path, data, mode)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("writing %s: already exists; refusing to overwrite it", path)
	}
	return err
}

func publicKeyPEM(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encoding public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// LoadPublicKey reads an ECDSA P-256 public key from a PEM "PUBLIC KEY" (PKIX) file.
func LoadPublicKey(path string) (crypto.PublicKey, error) {
	block, err := readPEM(path)
	if err != nil {
		return nil, err
	}
	if block.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("public key %s: PEM block is %q, expected \"PUBLIC KEY\"", path, block.Type)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("public key %s: %w", path, err)
	}
	if err := checkPublicKey(pub); err != nil {
		return nil, fmt.Errorf("public key %s: %w", path, err)
	}
	return pub, nil
}

func checkPublicKey(pub crypto.PublicKey) error {
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok || ec.Curve != elliptic.P256() {
		return fmt.Errorf("key is %T, expected an ECDSA P-256 key", pub)
	}
	return nil
}

// readPEM reads a size-capped file holding exactly one PEM key block (EC parameter blocks
// aside).
func readPEM(path string) (*pem.Block, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading key: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading key %s: %w", path, err)
	}
	if len(data) > maxKeyFileSize {
		return nil, fmt.Errorf("key file %s is larger than %d bytes", path, maxKeyFileSize)
	}
	var block *pem.Block
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			if len(bytes.TrimSpace(rest)) != 0 {
				return nil, fmt.Errorf("key file %s holds data that is not PEM", path)
			}
			break
		}
		// openssl ecparam -genkey writes the curve parameters ahead of the key.
		if b.Type == "EC PARAMETERS" {
			continue
		}
		if block != nil {
			return nil, fmt.Errorf("key file %s holds more than one key", path)
		}
		block = b
	}
	if block == nil {
		return nil, fmt.Errorf("key file %s holds no PEM key block", path)
	}
	return block, nil
}
