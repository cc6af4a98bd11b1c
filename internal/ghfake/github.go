package ghfake

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// GitHub is a stand-in for the GitHub REST API's releases, release assets and
// attestations endpoints. It checks every request (route, API version header, token,
// content type and length of uploads), records it, and can fail chosen requests to test
// retries.
type GitHub struct {
	t testing.TB
	// Server serves the API at its root, uploads under /uploads/ and asset bytes under
	// /download/ (where the API redirects asset downloads, as GitHub does).
	Server *httptest.Server
	// Token is the only token accepted.
	Token string

	mu       sync.Mutex
	repos    map[string]*repo
	nextID   int64
	requests []Request
	faults   []fault
	// ContentsWrite and AttestationsWrite are the token's permissions (both true by
	// default): without them writes answer 403 as GitHub does.
	ContentsWrite, AttestationsWrite bool
	// OmitDigests leaves the "digest" field out of asset listings, as older GitHub
	// versions do, so clients must download an asset to compare it.
	OmitDigests bool
}

// Request is one recorded request.
type Request struct {
	Method, Path, Query string
	Status              int
}

// Release is a release as the fake stores it.
type Release struct {
	ID     int64
	Tag    string
	Assets []*Asset
}

// Asset is a release asset.
type Asset struct {
	ID          int64
	Name        string
	ContentType string
	Content     []byte
	State       string
}

type repo struct {
	releases     []*Release
	attestations [][]byte
}

type fault struct {
	method, pathPrefix string
	status, times      int
}

// NewGitHub starts the API with the given repositories ("owner/name").
func NewGitHub(t testing.TB, repos ...string) *GitHub {
	t.Helper()
	g := &GitHub{t: t, Token: "ghs_" + randHex(12), repos: map[string]*repo{}, nextID: 100, ContentsWrite: true, AttestationsWrite: true}
	for _, r := range repos {
		g.repos[r] = &repo{}
	}
	mux := http.NewServeMux()
	// releases/tags/{tag}, releases/{id}/assets and releases/assets/{id} overlap as
	// patterns, so one route dispatches them.
	mux.HandleFunc("GET /repos/{owner}/{repo}/releases/{a}/{b}", func(w http.ResponseWriter, r *http.Request) {
		a, b := r.PathValue("a"), r.PathValue("b")
		switch {
		case a == "tags":
			r.SetPathValue("tag", b)
			g.getReleaseByTag(w, r)
		case a == "assets":
			r.SetPathValue("id", b)
			g.getAsset(w, r)
		case b == "assets":
			r.SetPathValue("id", a)
			g.listAssets(w, r)
		default:
			g.t.Errorf("ghfake github: unexpected request GET %s", r.URL.Path)
			writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found"})
		}
	})
	mux.HandleFunc("POST /repos/{owner}/{repo}/releases", g.createRelease)
	mux.HandleFunc("DELETE /repos/{owner}/{repo}/releases/assets/{id}", g.deleteAsset)
	mux.HandleFunc("POST /uploads/repos/{owner}/{repo}/releases/{id}/assets", g.upload)
	mux.HandleFunc("GET /download/{id}", g.download)
	mux.HandleFunc("POST /repos/{owner}/{repo}/attestations", g.attest)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		g.t.Errorf("ghfake github: unexpected request %s %s", r.Method, r.URL.Path)
		writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found"})
	})
	g.Server = httptest.NewServer(g.check(mux))
	t.Cleanup(g.Server.Close)
	return g
}

// URL is the API base URL (GITHUB_API_URL).
func (g *GitHub) URL() string { return g.Server.URL }

// FailNext makes the next `times` requests whose method matches and whose path starts with
// pathPrefix answer status (e.g. 502) without being handled.
func (g *GitHub) FailNext(method, pathPrefix string, status, times int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.faults = append(g.faults, fault{method, pathPrefix, status, times})
}

// Requests returns the requests so far.
func (g *GitHub) Requests() []Request {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]Request(nil), g.requests...)
}

// Count counts recorded requests by method and path substring.
func (g *GitHub) Count(method, pathContains string) int {
	n := 0
	for _, r := range g.Requests() {
		if r.Method == method && strings.Contains(r.Path, pathContains) {
			n++
		}
	}
	return n
}

// Release returns the release for tag, or nil.
func (g *GitHub) Release(repoName, tag string) *Release {
	g.mu.Lock()
	defer g.mu.Unlock()
	if r := g.repos[repoName]; r != nil {
		for _, rel := range r.releases {
			if rel.Tag == tag {
				return rel
			}
		}
	}
	return nil
}

// AddRelease creates a release with the given assets (name → content), for tests that
// start from an existing or hand-made release.
func (g *GitHub) AddRelease(repoName, tag string, assets map[string][]byte) *Release {
	g.mu.Lock()
	defer g.mu.Unlock()
	r := g.repos[repoName]
	if r == nil {
		r = &repo{}
		g.repos[repoName] = r
	}
	g.nextID++
	rel := &Release{ID: g.nextID, Tag: tag}
	for name, content := range assets {
		g.nextID++
		rel.Assets = append(rel.Assets, &Asset{ID: g.nextID, Name: name, ContentType: "application/octet-stream", Content: content, State: "uploaded"})
	}
	r.releases = append(r.releases, rel)
	return rel
}

// AddAsset adds an asset to the release for tag, as an upload would.
func (g *GitHub) AddAsset(repoName, tag, name string, content []byte) {
	rel := g.Release(repoName, tag)
	if rel == nil {
		g.t.Fatalf("ghfake: no release %s in %s", tag, repoName)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.nextID++
	rel.Assets = append(rel.Assets, &Asset{ID: g.nextID, Name: name, ContentType: "application/octet-stream", Content: content, State: "uploaded"})
}

// SetAssetContent replaces an asset's bytes behind the client's back (a swapped asset).
func (g *GitHub) SetAssetContent(repoName, tag, name string, content []byte) {
	rel := g.Release(repoName, tag)
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, a := range rel.Assets {
		if a.Name == name {
			a.Content = content
			return
		}
	}
	g.t.Fatalf("ghfake: no asset %s in %s@%s", name, repoName, tag)
}

// Attestations returns the bodies POSTed to the attestations API of a repository.
func (g *GitHub) Attestations(repoName string) [][]byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	if r := g.repos[repoName]; r != nil {
		return append([][]byte(nil), r.attestations...)
	}
	return nil
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// check records the request, injects faults, and enforces what every API call must carry.
func (g *GitHub) check(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		defer func() {
			g.mu.Lock()
			g.requests = append(g.requests, Request{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Status: rec.status})
			g.mu.Unlock()
		}()
		g.mu.Lock()
		for i := range g.faults {
			f := &g.faults[i]
			if f.times > 0 && f.method == r.Method && strings.HasPrefix(r.URL.Path, f.pathPrefix) {
				f.times--
				g.mu.Unlock()
				_, _ = io.Copy(io.Discard, r.Body)
				writeJSON(rec, f.status, map[string]string{"message": http.StatusText(f.status)})
				return
			}
		}
		g.mu.Unlock()
		if strings.HasPrefix(r.URL.Path, "/download/") {
			next.ServeHTTP(rec, r)
			return
		}
		if v := r.Header.Get("X-GitHub-Api-Version"); v != "2022-11-28" {
			g.t.Errorf("ghfake github: %s %s without X-GitHub-Api-Version 2022-11-28 (got %q)", r.Method, r.URL.Path, v)
		}
		if r.Header.Get("User-Agent") == "" {
			g.t.Errorf("ghfake github: %s %s without a User-Agent", r.Method, r.URL.Path)
		}
		auth := r.Header.Get("Authorization")
		switch {
		case auth == "" && r.Method == http.MethodGet:
			// Public repositories are readable without a token.
		case auth != "Bearer "+g.Token:
			writeJSON(rec, http.StatusUnauthorized, map[string]string{"message": "Bad credentials"})
			return
		}
		next.ServeHTTP(rec, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (g *GitHub) repoOf(w http.ResponseWriter, r *http.Request) (string, *repo) {
	name := r.PathValue("owner") + "/" + r.PathValue("repo")
	rp := g.repos[name]
	if rp == nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found"})
	}
	return name, rp
}

func (g *GitHub) releaseJSON(repoName string, rel *Release) map[string]any {
	assets := []any{}
	for _, a := range rel.Assets {
		assets = append(assets, g.assetJSON(repoName, a))
	}
	return map[string]any{
		"id": rel.ID, "tag_name": rel.Tag, "name": rel.Tag, "draft": false,
		"html_url":   "https://github.com/" + repoName + "/releases/tag/" + rel.Tag,
		"upload_url": fmt.Sprintf("%s/uploads/repos/%s/releases/%d/assets{?name,label}", g.Server.URL, repoName, rel.ID),
		"assets":     assets,
	}
}

func (g *GitHub) assetJSON(repoName string, a *Asset) map[string]any {
	m := map[string]any{
		"id": a.ID, "name": a.Name, "size": len(a.Content), "state": a.State, "content_type": a.ContentType,
		"url":                  fmt.Sprintf("%s/repos/%s/releases/assets/%d", g.Server.URL, repoName, a.ID),
		"browser_download_url": fmt.Sprintf("%s/download/%d", g.Server.URL, a.ID),
	}
	if !g.OmitDigests {
		sum := sha256.Sum256(a.Content)
		m["digest"] = "sha256:" + hex.EncodeToString(sum[:])
	}
	return m
}

func (g *GitHub) getReleaseByTag(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	defer g.mu.Unlock()
	name, rp := g.repoOf(w, r)
	if rp == nil {
		return
	}
	for _, rel := range rp.releases {
		if rel.Tag == r.PathValue("tag") {
			writeJSON(w, http.StatusOK, g.releaseJSON(name, rel))
			return
		}
	}
	writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found"})
}

func (g *GitHub) createRelease(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	defer g.mu.Unlock()
	name, rp := g.repoOf(w, r)
	if rp == nil {
		return
	}
	if !g.ContentsWrite {
		writeJSON(w, http.StatusForbidden, map[string]string{"message": "Resource not accessible by integration"})
		return
	}
	var body struct {
		TagName string `json:"tag_name"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&body); err != nil || body.TagName == "" {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"message": "Validation Failed: tag_name"})
		return
	}
	for _, rel := range rp.releases {
		if rel.Tag == body.TagName {
			writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"message": "Validation Failed",
				"errors": []map[string]string{{"resource": "Release", "code": "already_exists", "field": "tag_name"}}})
			return
		}
	}
	g.nextID++
	rel := &Release{ID: g.nextID, Tag: body.TagName}
	rp.releases = append(rp.releases, rel)
	writeJSON(w, http.StatusCreated, g.releaseJSON(name, rel))
}

func (g *GitHub) findRelease(rp *repo, idText string) *Release {
	id, _ := strconv.ParseInt(idText, 10, 64)
	for _, rel := range rp.releases {
		if rel.ID == id {
			return rel
		}
	}
	return nil
}

func (g *GitHub) findAsset(rp *repo, idText string) (*Release, int) {
	id, _ := strconv.ParseInt(idText, 10, 64)
	for _, rel := range rp.releases {
		for i, a := range rel.Assets {
			if a.ID == id {
				return rel, i
			}
		}
	}
	return nil, -1
}

func (g *GitHub) listAssets(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	defer g.mu.Unlock()
	name, rp := g.repoOf(w, r)
	if rp == nil {
		return
	}
	rel := g.findRelease(rp, r.PathValue("id"))
	if rel == nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found"})
		return
	}
	// One page of at most per_page entries, with a Link header to the next, as GitHub
	// paginates.
	perPage, _ := strconv.Atoi(r.URL.Query().Get("per_page"))
	if perPage <= 0 || perPage > 100 {
		perPage = 30
	}
	page, _ := strconv.Atoi(r.URL.Query().Get("page"))
	if page < 1 {
		page = 1
	}
	out := []any{}
	start := (page - 1) * perPage
	for i := start; i < len(rel.Assets) && i < start+perPage; i++ {
		out = append(out, g.assetJSON(name, rel.Assets[i]))
	}
	if start+perPage < len(rel.Assets) {
		w.Header().Set("Link", fmt.Sprintf(`<%s%s?per_page=%d&page=%d>; rel="next"`, g.Server.URL, r.URL.Path, perPage, page+1))
	}
	writeJSON(w, http.StatusOK, out)
}

func (g *GitHub) getAsset(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	defer g.mu.Unlock()
	name, rp := g.repoOf(w, r)
	if rp == nil {
		return
	}
	rel, i := g.findAsset(rp, r.PathValue("id"))
	if rel == nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found"})
		return
	}
	a := rel.Assets[i]
	if r.Header.Get("Accept") == "application/octet-stream" {
		http.Redirect(w, r, fmt.Sprintf("%s/download/%d", g.Server.URL, a.ID), http.StatusFound)
		return
	}
	writeJSON(w, http.StatusOK, g.assetJSON(name, a))
}

func (g *GitHub) download(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, rp := range g.repos {
		if rel, i := g.findAsset(rp, r.PathValue("id")); rel != nil {
			w.Header().Set("Content-Type", "application/octet-stream")
			_, _ = w.Write(rel.Assets[i].Content)
			return
		}
	}
	http.NotFound(w, r)
}

func (g *GitHub) deleteAsset(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, rp := g.repoOf(w, r)
	if rp == nil {
		return
	}
	if !g.ContentsWrite {
		writeJSON(w, http.StatusForbidden, map[string]string{"message": "Resource not accessible by integration"})
		return
	}
	rel, i := g.findAsset(rp, r.PathValue("id"))
	if rel == nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found"})
		return
	}
	rel.Assets = append(rel.Assets[:i], rel.Assets[i+1:]...)
	w.WriteHeader(http.StatusNoContent)
}

func (g *GitHub) upload(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	defer g.mu.Unlock()
	name, rp := g.repoOf(w, r)
	if rp == nil {
		return
	}
	if !g.ContentsWrite {
		writeJSON(w, http.StatusForbidden, map[string]string{"message": "Resource not accessible by integration"})
		return
	}
	rel := g.findRelease(rp, r.PathValue("id"))
	if rel == nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found"})
		return
	}
	assetName := r.URL.Query().Get("name")
	ct := r.Header.Get("Content-Type")
	if assetName == "" || strings.ContainsAny(assetName, "/\\") || ct == "" {
		g.t.Errorf("ghfake github: upload with name %q and content type %q", assetName, ct)
		writeJSON(w, http.StatusBadRequest, map[string]string{"message": "Bad Request"})
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 256<<20))
	if err != nil || int64(len(body)) != r.ContentLength {
		g.t.Errorf("ghfake github: upload of %s: read %d bytes, Content-Length %d (%v)", assetName, len(body), r.ContentLength, err)
		writeJSON(w, http.StatusBadRequest, map[string]string{"message": "Bad Content-Length"})
		return
	}
	for _, a := range rel.Assets {
		if a.Name == assetName {
			writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"message": "Validation Failed",
				"errors": []map[string]string{{"resource": "ReleaseAsset", "code": "already_exists", "field": "name"}}})
			return
		}
	}
	g.nextID++
	a := &Asset{ID: g.nextID, Name: assetName, ContentType: ct, Content: body, State: "uploaded"}
	rel.Assets = append(rel.Assets, a)
	writeJSON(w, http.StatusCreated, g.assetJSON(name, a))
}

// attest accepts {"bundle": <Sigstore bundle v0.3>}: the shape GitHub's attestations API
// takes.
func (g *GitHub) attest(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, rp := g.repoOf(w, r)
	if rp == nil {
		return
	}
	if !g.AttestationsWrite {
		writeJSON(w, http.StatusForbidden, map[string]string{"message": "Resource not accessible by integration"})
		return
	}
	raw, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"message": "Bad Request"})
		return
	}
	var body struct {
		Bundle struct {
			MediaType            string          `json:"mediaType"`
			VerificationMaterial json.RawMessage `json:"verificationMaterial"`
			DSSEEnvelope         json.RawMessage `json:"dsseEnvelope"`
		} `json:"bundle"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&body); err != nil || body.Bundle.MediaType != "application/vnd.dev.sigstore.bundle.v0.3+json" ||
		len(body.Bundle.VerificationMaterial) == 0 || len(body.Bundle.DSSEEnvelope) == 0 {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"message": "Invalid request: bundle is not a Sigstore bundle v0.3"})
		return
	}
	rp.attestations = append(rp.attestations, raw)
	g.nextID++
	writeJSON(w, http.StatusCreated, map[string]any{"id": g.nextID})
}
