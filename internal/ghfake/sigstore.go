// Package ghfake provides local stand-ins, over real HTTP, for what a GitHub Actions job
// talks to: the workflow's OIDC token endpoint, a Sigstore deployment (Fulcio issuing
// GitHub-shaped certificates, Rekor v1 signing inclusion promises) and the GitHub REST API
// (releases, asset uploads, attestations). Tests drive the real clients (sigstore-go,
// go-github, go-githubactions) against them; nothing is mocked below the HTTP layer.
//
// Only tests import this package.
package ghfake

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cyberphone/json-canonicalization/go/src/webpki.org/jsoncanonicalizer"
	"github.com/go-openapi/runtime"
	"github.com/go-openapi/strfmt"
	"github.com/sigstore/rekor/pkg/generated/models"
	"github.com/sigstore/rekor/pkg/types"
	_ "github.com/sigstore/rekor/pkg/types/dsse/v0.0.1" // the entry kind sigstore-go submits for DSSE
	rekorutil "github.com/sigstore/rekor/pkg/util"
	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/tlog"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/transparency-dev/merkle/rfc6962"
)

// GitHubIssuer is the OIDC issuer of GitHub Actions tokens; the fake issuer signs its
// tokens under this name, as the real one does.
const GitHubIssuer = "https://token.actions.githubusercontent.com"

// Claims are the GitHub Actions OIDC token claims Fulcio turns into certificate fields.
type Claims struct {
	Repository        string // owner/repo
	RepositoryID      string
	RepositoryOwner   string
	RepositoryOwnerID string
	Ref               string // refs/tags/v1.0.0
	SHA               string
	WorkflowRef       string // owner/repo/.github/workflows/release.yml@refs/tags/v1.0.0
	WorkflowSHA       string
	JobWorkflowRef    string // the workflow that ran the job (differs for reusable workflows)
	JobWorkflowSHA    string
	EventName         string
	RunID             string
	RunAttempt        string
	RunnerEnvironment string // self-hosted or github-hosted
	Visibility        string
}

// Sigstore is a private Sigstore deployment for tests: an OIDC issuer playing GitHub
// Actions' token service, Fulcio and Rekor, each on its own httptest server.
type Sigstore struct {
	t testing.TB

	issuerKey *ecdsa.PrivateKey
	rootCert  *x509.Certificate
	interCert *x509.Certificate
	interKey  *ecdsa.PrivateKey
	rekorKey  *ecdsa.PrivateKey
	rekorID   []byte // SHA-256 of the Rekor key's PKIX encoding
	treeID    int64  // the Rekor log's tree, named in its checkpoint origin as Rekor v1 does
	ct        *ctLog
	created   time.Time

	// RequestToken is what the job must present to the token endpoint
	// (ACTIONS_ID_TOKEN_REQUEST_TOKEN).
	RequestToken string

	mu        sync.Mutex
	claims    Claims
	logIndex  int64
	leaves    [][]byte
	rekorRecs int
	certRecs  int

	Issuer, Fulcio, Rekor *httptest.Server
}

// NewSigstore starts the three servers; they stop when the test ends.
func NewSigstore(t testing.TB, claims Claims) *Sigstore {
	t.Helper()
	s := &Sigstore{t: t, claims: claims, RequestToken: "request-token-" + randHex(8), created: time.Now()}
	var err error
	if s.issuerKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s.rootCert = mustCert(t, &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ghfake-fulcio-root", Organization: []string{"ghfake"}},
		NotBefore: s.created.Add(-time.Hour), NotAfter: s.created.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}, nil, &rootKey.PublicKey, rootKey)
	if s.interKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	s.interCert = mustCert(t, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "ghfake-fulcio-intermediate", Organization: []string{"ghfake"}},
		NotBefore: s.created.Add(-time.Hour), NotAfter: s.created.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		BasicConstraintsValid: true, IsCA: true,
	}, s.rootCert, &s.interKey.PublicKey, rootKey)
	if s.rekorKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&s.rekorKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	s.rekorID = sum[:]
	s.treeID = new(big.Int).SetBytes(sum[:7]).Int64()
	ctKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if s.ct, err = newCTLog(ctKey); err != nil {
		t.Fatal(err)
	}

	s.Issuer = httptest.NewServer(http.HandlerFunc(s.serveToken))
	s.Fulcio = httptest.NewServer(http.HandlerFunc(s.serveFulcio))
	s.Rekor = httptest.NewServer(http.HandlerFunc(s.serveRekor))
	t.Cleanup(func() { s.Issuer.Close(); s.Fulcio.Close(); s.Rekor.Close() })
	return s
}

// SetClaims changes the identity the next tokens carry.
func (s *Sigstore) SetClaims(c Claims) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.claims = c
}

// TokenURL is ACTIONS_ID_TOKEN_REQUEST_URL for a job: the runner's URL already carries a
// query, to which the client appends "&audience=...".
func (s *Sigstore) TokenURL() string { return s.Issuer.URL + "/token?api-version=2.0" }

// Counts reports how many certificates Fulcio issued and entries Rekor logged.
func (s *Sigstore) Counts() (certs, entries int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.certRecs, s.rekorRecs
}

// TrustedRoot is the trusted root of this deployment: the Fulcio CA, its CT log and the
// Rekor log.
func (s *Sigstore) TrustedRoot() *root.TrustedRoot {
	s.t.Helper()
	ca := &root.FulcioCertificateAuthority{
		Root: s.rootCert, Intermediates: []*x509.Certificate{s.interCert},
		ValidityPeriodStart: s.created.Add(-time.Hour), URI: s.Fulcio.URL,
	}
	tl := &root.TransparencyLog{
		BaseURL: s.Rekor.URL, ID: s.rekorID, ValidityPeriodStart: s.created.Add(-time.Hour),
		HashFunc: crypto.SHA256, PublicKey: &s.rekorKey.PublicKey, SignatureHashFunc: crypto.SHA256,
	}
	// The CT log is not served: Fulcio talks to it in-process, as the real one talks to CTFE
	// behind its own API. Its URL says where it lives.
	ctl := &root.TransparencyLog{
		BaseURL: s.Fulcio.URL + "/ct", ID: s.ct.id[:], ValidityPeriodStart: s.created.Add(-time.Hour),
		HashFunc: crypto.SHA256, PublicKey: &s.ct.key.PublicKey, SignatureHashFunc: crypto.SHA256,
	}
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01, []root.CertificateAuthority{ca},
		map[string]*root.TransparencyLog{hex.EncodeToString(s.ct.id[:]): ctl}, nil,
		map[string]*root.TransparencyLog{hex.EncodeToString(s.rekorID): tl})
	if err != nil {
		s.t.Fatal(err)
	}
	return tr
}

// WriteTrustedRoot writes the trusted root JSON (what `--trusted-root FILE` reads) to path:
// one line ending in a newline, as gh's `--custom-trusted-root` reads a JSON-lines file and
// drops a last line without one.
func (s *Sigstore) WriteTrustedRoot(path string) {
	s.t.Helper()
	b, err := s.TrustedRoot().MarshalJSON()
	if err != nil {
		s.t.Fatal(err)
	}
	var line bytes.Buffer
	if err := json.Compact(&line, b); err != nil {
		s.t.Fatal(err)
	}
	line.WriteByte('\n')
	if err := os.WriteFile(path, line.Bytes(), 0o644); err != nil {
		s.t.Fatal(err)
	}
}

// serveToken plays the Actions token service: GET with the job's request token as Bearer,
// the audience in the query; answers {"value": JWT}.
func (s *Sigstore) serveToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet || r.URL.Path != "/token" {
		s.t.Errorf("ghfake issuer: unexpected request %s %s", r.Method, r.URL)
		http.NotFound(w, r)
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+s.RequestToken {
		http.Error(w, `{"message":"bad request token"}`, http.StatusUnauthorized)
		return
	}
	aud := r.URL.Query().Get("audience")
	if aud == "" {
		aud = "https://github.com/" + s.claimsNow().RepositoryOwner
	}
	tok, err := s.mintToken(aud)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"value": tok})
}

func (s *Sigstore) claimsNow() Claims {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.claims
}

// mintToken makes an ES256 JWT with GitHub's claim names.
func (s *Sigstore) mintToken(audience string) (string, error) {
	c := s.claimsNow()
	now := time.Now()
	claims := map[string]any{
		"iss": GitHubIssuer, "aud": audience, "sub": "repo:" + c.Repository + ":ref:" + c.Ref,
		"iat": now.Unix(), "nbf": now.Add(-time.Minute).Unix(), "exp": now.Add(5 * time.Minute).Unix(),
		"repository": c.Repository, "repository_id": c.RepositoryID, "repository_owner": c.RepositoryOwner,
		"repository_owner_id": c.RepositoryOwnerID, "ref": c.Ref, "sha": c.SHA, "workflow_ref": c.WorkflowRef,
		"workflow_sha": c.WorkflowSHA, "job_workflow_ref": c.JobWorkflowRef, "job_workflow_sha": c.JobWorkflowSHA,
		"event_name": c.EventName, "run_id": c.RunID, "run_attempt": c.RunAttempt,
		"runner_environment": c.RunnerEnvironment, "repository_visibility": c.Visibility,
	}
	header := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"ES256","typ":"JWT","kid":"ghfake"}`))
	body, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	signing := header + "." + base64.RawURLEncoding.EncodeToString(body)
	digest := sha256.Sum256([]byte(signing))
	r, ss, err := ecdsa.Sign(rand.Reader, s.issuerKey, digest[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	ss.FillBytes(sig[32:])
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// verifyToken checks a JWT as Fulcio does: the issuer's signature, the audience, the time.
func (s *Sigstore) verifyToken(tok string) (map[string]any, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("token is not a JWT")
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		return nil, fmt.Errorf("token signature malformed")
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if !ecdsa.Verify(&s.issuerKey.PublicKey, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		return nil, fmt.Errorf("token signature does not verify")
	}
	body, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, err
	}
	var claims map[string]any
	if err := json.Unmarshal(body, &claims); err != nil {
		return nil, err
	}
	if claims["aud"] != "sigstore" {
		return nil, fmt.Errorf("token audience is %v, expected sigstore", claims["aud"])
	}
	if exp, _ := claims["exp"].(float64); time.Unix(int64(exp), 0).Before(time.Now()) {
		return nil, fmt.Errorf("token expired")
	}
	return claims, nil
}

// serveFulcio implements POST /api/v2/signingCert for a public key with proof of
// possession, issuing a 10-minute certificate carrying the GitHub workflow identity as the
// real Fulcio does (SAN = job workflow URI, extensions 1.3.6.1.4.1.57264.1.*).
func (s *Sigstore) serveFulcio(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/api/v2/signingCert" {
		s.t.Errorf("ghfake fulcio: unexpected request %s %s", r.Method, r.URL)
		http.NotFound(w, r)
		return
	}
	claims, err := s.verifyToken(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))
	if err != nil {
		http.Error(w, `{"message":"`+err.Error()+`"}`, http.StatusUnauthorized)
		return
	}
	ecPub, herr := provenKey(r, claims)
	if herr != nil {
		http.Error(w, herr.msg, herr.code)
		return
	}
	san, ext, err := workflowIdentity(claims)
	if err != nil {
		http.Error(w, "bad job_workflow_ref", http.StatusBadRequest)
		return
	}
	now := time.Now()
	leaf, err := s.ct.issueWithSCT(&x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(10 * time.Minute),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		URIs: []*url.URL{san}, ExtraExtensions: ext,
	}, s.interCert, ecPub, s.interKey, now)
	if err != nil {
		http.Error(w, `{"message":"`+jsonEscape(err.Error())+`"}`, http.StatusInternalServerError)
		return
	}
	s.mu.Lock()
	s.certRecs++
	s.mu.Unlock()
	chain := []string{pemCert(leaf), pemCert(s.interCert), pemCert(s.rootCert)}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"signedCertificateEmbeddedSct": map[string]any{"chain": map[string]any{"certificates": chain}},
	})
}

// httpError is a response a handler's step refuses a request with.
type httpError struct {
	msg  string
	code int
}

// provenKey reads the signing-certificate request's public key and checks its proof of
// possession: a signature over the token's subject.
func provenKey(r *http.Request, claims map[string]any) (*ecdsa.PublicKey, *httpError) {
	var req struct {
		PublicKeyRequest struct {
			PublicKey struct {
				Algorithm string `json:"algorithm"`
				Content   string `json:"content"`
			} `json:"publicKey"`
			ProofOfPossession string `json:"proofOfPossession"`
		} `json:"publicKeyRequest"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		return nil, &httpError{"bad request body", http.StatusBadRequest}
	}
	block, _ := pem.Decode([]byte(req.PublicKeyRequest.PublicKey.Content))
	if block == nil {
		return nil, &httpError{"public key is not PEM", http.StatusBadRequest}
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, &httpError{"bad public key", http.StatusBadRequest}
	}
	ecPub, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return nil, &httpError{"public key is not ECDSA", http.StatusBadRequest}
	}
	pop, err := base64.StdEncoding.DecodeString(req.PublicKeyRequest.ProofOfPossession)
	sub, _ := claims["sub"].(string)
	subDigest := sha256.Sum256([]byte(sub))
	if err != nil || !ecdsa.VerifyASN1(ecPub, subDigest[:], pop) {
		return nil, &httpError{"proof of possession does not verify", http.StatusBadRequest}
	}
	return ecPub, nil
}

// workflowIdentity is the certificate's SAN (the job workflow URI) and the Fulcio
// extensions the token's GitHub claims give.
func workflowIdentity(claims map[string]any) (*url.URL, []pkix.Extension, error) {
	str := func(k string) string { v, _ := claims[k].(string); return v }
	server := "https://github.com"
	jobWorkflow := server + "/" + str("job_workflow_ref")
	san, err := url.Parse(jobWorkflow)
	if err != nil {
		return nil, nil, err
	}
	ext := []pkix.Extension{
		{Id: certificate.OIDIssuer, Value: []byte(GitHubIssuer)},
		utf8Ext(certificate.OIDIssuerV2, GitHubIssuer),
		utf8Ext(certificate.OIDBuildSignerURI, jobWorkflow),
		utf8Ext(certificate.OIDBuildSignerDigest, str("job_workflow_sha")),
		utf8Ext(certificate.OIDRunnerEnvironment, str("runner_environment")),
		utf8Ext(certificate.OIDSourceRepositoryURI, server+"/"+str("repository")),
		utf8Ext(certificate.OIDSourceRepositoryDigest, str("sha")),
		utf8Ext(certificate.OIDSourceRepositoryRef, str("ref")),
		utf8Ext(certificate.OIDSourceRepositoryIdentifier, str("repository_id")),
		utf8Ext(certificate.OIDSourceRepositoryOwnerURI, server+"/"+str("repository_owner")),
		utf8Ext(certificate.OIDSourceRepositoryOwnerIdentifier, str("repository_owner_id")),
		utf8Ext(certificate.OIDBuildConfigURI, server+"/"+str("workflow_ref")),
		utf8Ext(certificate.OIDBuildConfigDigest, str("workflow_sha")),
		utf8Ext(certificate.OIDBuildTrigger, str("event_name")),
		utf8Ext(certificate.OIDRunInvocationURI, server+"/"+str("repository")+"/actions/runs/"+str("run_id")+"/attempts/"+str("run_attempt")),
		utf8Ext(certificate.OIDSourceRepositoryVisibilityAtSigning, str("repository_visibility")),
	}
	return san, ext, nil
}

// serveRekor implements POST /api/v1/log/entries: it canonicalises the proposed entry as the
// real server does (which also checks the entry's signature) and answers with a signed
// inclusion promise (SET).
func (s *Sigstore) serveRekor(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/api/v1/log/entries" {
		s.t.Errorf("ghfake rekor: unexpected request %s %s", r.Method, r.URL)
		http.NotFound(w, r)
		return
	}
	ctx := context.Background()
	canon, herr := canonicalEntry(ctx, r)
	if herr != nil {
		http.Error(w, herr.msg, herr.code)
		return
	}
	leafHash := rfc6962.DefaultHasher.HashLeaf(canon)
	idx, leaves := s.appendLeaf(leafHash)
	body := base64.StdEncoding.EncodeToString(canon)
	integrated := time.Now().Unix()
	logID := hex.EncodeToString(s.rekorID)
	set, err := s.signEntryTimestamp(tlog.RekorPayload{Body: body, IntegratedTime: integrated, LogIndex: idx, LogID: logID})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	proof, err := s.inclusionProof(ctx, idx, leaves)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	uuid := hex.EncodeToString(leafHash)
	entry := models.LogEntryAnon{
		Body: body, IntegratedTime: &integrated, LogID: &logID, LogIndex: &idx,
		Verification: &models.LogEntryAnonVerification{
			SignedEntryTimestamp: strfmt.Base64(set),
			InclusionProof:       proof,
		},
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("ETag", uuid)
	w.Header().Set("Location", "/api/v1/log/entries/"+uuid)
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(map[string]models.LogEntryAnon{uuid: entry})
}

// canonicalEntry decodes the proposed entry and canonicalises it as the real server does,
// which also checks the entry's signature.
func canonicalEntry(ctx context.Context, r *http.Request) ([]byte, *httpError) {
	pe, err := models.UnmarshalProposedEntry(io.LimitReader(r.Body, 8<<20), runtime.JSONConsumer())
	if err != nil {
		return nil, &httpError{`{"message":"bad proposed entry"}`, http.StatusBadRequest}
	}
	impl, err := types.CreateVersionedEntry(pe)
	if err != nil {
		return nil, &httpError{`{"message":"` + jsonEscape(err.Error()) + `"}`, http.StatusBadRequest}
	}
	canon, err := types.CanonicalizeEntry(ctx, impl)
	if err != nil {
		return nil, &httpError{`{"message":"` + jsonEscape(err.Error()) + `"}`, http.StatusBadRequest}
	}
	return canon, nil
}

// appendLeaf adds a leaf to the log and returns its index and the log's leaves after it.
func (s *Sigstore) appendLeaf(leafHash []byte) (int64, [][]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	idx := s.logIndex
	s.logIndex++
	s.rekorRecs++
	s.leaves = append(s.leaves, leafHash)
	return idx, append([][]byte(nil), s.leaves...)
}

// signEntryTimestamp is the SET: the log's signature over the canonical JSON payload.
func (s *Sigstore) signEntryTimestamp(p tlog.RekorPayload) ([]byte, error) {
	payload, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	cj, err := jsoncanonicalizer.Transform(payload)
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256(cj)
	return ecdsa.SignASN1(rand.Reader, s.rekorKey, digest[:])
}

// inclusionProof proves entry idx in the log as it stands, under a signed checkpoint, as
// Rekor v1 returns with every new entry.
func (s *Sigstore) inclusionProof(ctx context.Context, idx int64, leaves [][]byte) (*models.InclusionProof, error) {
	size := int64(len(leaves))
	rootHash := hex.EncodeToString(treeHash(leaves))
	var path []string
	for _, h := range inclusionPath(int(idx), leaves) {
		path = append(path, hex.EncodeToString(h))
	}
	sv, err := signature.LoadECDSASignerVerifier(s.rekorKey, crypto.SHA256)
	if err != nil {
		return nil, err
	}
	// Rekor names its checkpoints "<hostname> - <tree ID>" and signs them as <hostname>;
	// verifiers find the log by matching that name against the log's URL.
	host, err := url.Parse(s.Rekor.URL)
	if err != nil {
		return nil, err
	}
	checkpoint, err := rekorutil.CreateAndSignCheckpoint(ctx, host.Hostname(), s.treeID, uint64(size), treeHash(leaves), sv)
	if err != nil {
		return nil, err
	}
	cp := string(checkpoint)
	return &models.InclusionProof{LogIndex: &idx, TreeSize: &size, RootHash: &rootHash, Hashes: path, Checkpoint: &cp}, nil
}

// treeHash is the RFC 6962 Merkle tree hash of the leaf hashes.
func treeHash(leaves [][]byte) []byte {
	h := rfc6962.DefaultHasher
	switch len(leaves) {
	case 0:
		return h.EmptyRoot()
	case 1:
		return leaves[0]
	}
	k := splitPoint(len(leaves))
	return h.HashChildren(treeHash(leaves[:k]), treeHash(leaves[k:]))
}

// inclusionPath is RFC 6962's PATH(m, D[n]), leaf to root.
func inclusionPath(m int, leaves [][]byte) [][]byte {
	if len(leaves) <= 1 {
		return nil
	}
	k := splitPoint(len(leaves))
	if m < k {
		return append(inclusionPath(m, leaves[:k]), treeHash(leaves[k:]))
	}
	return append(inclusionPath(m-k, leaves[k:]), treeHash(leaves[:k]))
}

// splitPoint is the largest power of two below n (n > 1).
func splitPoint(n int) int {
	k := 1
	for k<<1 < n {
		k <<= 1
	}
	return k
}

func utf8Ext(oid asn1.ObjectIdentifier, v string) pkix.Extension {
	b, err := asn1.MarshalWithParams(v, "utf8")
	if err != nil {
		panic(err) // a Go string always encodes
	}
	return pkix.Extension{Id: oid, Value: b}
}

func mustCert(t testing.TB, tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	c, err := createCert(tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// createCert signs tmpl with signer under parent (tmpl itself when nil: self-signed).
func createCert(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) (*x509.Certificate, error) {
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func pemCert(c *x509.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func jsonEscape(s string) string {
	b, _ := json.Marshal(s)
	return string(bytes.Trim(b, `"`))
}
