// Package release publishes a build's artifacts and provenance bundle to a GitHub release
// and fetches them back for verification, through go-github.
//
// Publishing is idempotent, so a re-run workflow can publish again safely: an asset that is
// already there with the same name and SHA-256 is left alone; one with the same name and
// different bytes is an error unless the caller asked to replace it (a release's assets are
// what users download, and silently swapping them is exactly what provenance exists to
// catch). Every API call is retried with backoff on 5xx, 429 and rate-limit answers; a 403
// that is not a rate limit is a missing permission, and the error says which one.
package release

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-github/v60/github"

	"github.com/cloche-dev/cloche/internal/atomicfile"
	"github.com/cloche-dev/cloche/internal/fileio"
)

// Sentinel errors callers branch on; each is wrapped with the details.
var (
	// ErrNotFound: the release or asset does not exist.
	ErrNotFound = errors.New("not found")
	// ErrPermission: the token may not do this (403, or 404 on a write).
	ErrPermission = errors.New("permission denied")
	// ErrConflict: an asset exists with the same name and different content.
	ErrConflict = errors.New("release asset conflict")
	// ErrInvalid: bad input or a malformed answer from the API.
	ErrInvalid = errors.New("invalid release input")
)

// Limits on what is read from the API.
const (
	// MaxAssets caps the assets listed for one release (GitHub allows 1000).
	MaxAssets = 1000
	// DefaultMaxAssetSize caps one downloaded asset (GitHub allows 2 GiB).
	DefaultMaxAssetSize = 2 << 30
)

// Options tune a Client. Zero values take the defaults.
type Options struct {
	Logger *slog.Logger
	// MaxAttempts per API call (default 5), with exponential backoff from BaseDelay
	// (default 1 s) up to MaxDelay (default 30 s); a Retry-After or rate-limit reset
	// further away than MaxWait (default 2 min) is not waited for.
	MaxAttempts int
	BaseDelay   time.Duration
	MaxDelay    time.Duration
	MaxWait     time.Duration
	// MaxAssetSize caps one downloaded asset (default DefaultMaxAssetSize).
	MaxAssetSize int64
	// DownloadClient follows the API's redirect to the asset bytes; it must not carry the
	// API token to another host (default: a plain http.Client).
	DownloadClient *http.Client
}

// Client publishes to and reads from one repository's releases.
type Client struct {
	gh          *github.Client
	owner, repo string
	o           Options
}

// DefaultAPIURL is GitHub's API, where GITHUB_API_URL does not say otherwise.
const DefaultAPIURL = "https://api.github.com"

// NewGitHubClient returns a go-github client for the API at apiURL (GITHUB_API_URL;
// default https://api.github.com) authenticated with token (may be empty for public reads).
func NewGitHubClient(apiURL, token string, hc *http.Client) (*github.Client, error) {
	gh := github.NewClient(hc)
	if token != "" {
		gh = gh.WithAuthToken(token)
	}
	if apiURL != "" {
		u, err := url.Parse(strings.TrimSuffix(apiURL, "/") + "/")
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return nil, fmt.Errorf("%w: GitHub API URL %q is not an http(s) URL", ErrInvalid, apiURL)
		}
		gh.BaseURL = u
		// Uploads go to the upload_url the API returns with each release, so UploadURL
		// only needs to be absolute and well-formed.
		gh.UploadURL = u
	}
	return gh, nil
}

// NewClient returns a Client for repository "OWNER/REPO".
func NewClient(gh *github.Client, repository string, o Options) (*Client, error) {
	owner, repo, ok := strings.Cut(repository, "/")
	if !ok || !validName(owner) || !validName(repo) {
		return nil, fmt.Errorf("%w: repository %q: expected OWNER/REPO", ErrInvalid, repository)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 5
	}
	if o.BaseDelay <= 0 {
		o.BaseDelay = time.Second
	}
	if o.MaxDelay <= 0 {
		o.MaxDelay = 30 * time.Second
	}
	if o.MaxWait <= 0 {
		o.MaxWait = 2 * time.Minute
	}
	if o.MaxAssetSize <= 0 {
		o.MaxAssetSize = DefaultMaxAssetSize
	}
	if o.DownloadClient == nil {
		o.DownloadClient = &http.Client{Timeout: 10 * time.Minute}
	}
	return &Client{gh: gh, owner: owner, repo: repo, o: o}, nil
}

func validName(s string) bool {
	if s == "" || len(s) > 100 || s == "." || s == ".." {
		return false
	}
	for _, r := range s {
		if !(r == '-' || r == '_' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

// Repository is "OWNER/REPO".
func (c *Client) Repository() string { return c.owner + "/" + c.repo }

// Release identifies a GitHub release.
type Release struct {
	ID        int64
	Tag       string
	HTMLURL   string
	UploadURL string // upload_url with its URI template part removed
}

func fromGitHub(r *github.RepositoryRelease) (*Release, error) {
	if r.GetID() == 0 || r.GetUploadURL() == "" {
		return nil, fmt.Errorf("%w: the API returned a release without id or upload_url", ErrInvalid)
	}
	up, _, _ := strings.Cut(r.GetUploadURL(), "{")
	return &Release{ID: r.GetID(), Tag: r.GetTagName(), HTMLURL: r.GetHTMLURL(), UploadURL: up}, nil
}

// FindRelease returns the published release for tag, or an error wrapping ErrNotFound.
func (c *Client) FindRelease(ctx context.Context, tag string) (*Release, error) {
	if tag == "" {
		return nil, fmt.Errorf("%w: no release tag given", ErrInvalid)
	}
	var rel *github.RepositoryRelease
	err := c.call(ctx, "finding release "+tag, false, func() (*github.Response, error) {
		var resp *github.Response
		var err error
		rel, resp, err = c.gh.Repositories.GetReleaseByTag(ctx, c.owner, c.repo, tag)
		return resp, err
	})
	if err != nil {
		return nil, err
	}
	return fromGitHub(rel)
}

// EnsureRelease finds the release for tag or creates it (for an existing tag; GitHub
// creates the tag from the default branch otherwise, so callers pass a pushed tag).
func (c *Client) EnsureRelease(ctx context.Context, tag string) (*Release, error) {
	rel, err := c.FindRelease(ctx, tag)
	if err == nil || !errors.Is(err, ErrNotFound) {
		return rel, err
	}
	var created *github.RepositoryRelease
	err = c.call(ctx, "creating release "+tag, true, func() (*github.Response, error) {
		var resp *github.Response
		var err error
		created, resp, err = c.gh.Repositories.CreateRelease(ctx, c.owner, c.repo, &github.RepositoryRelease{
			TagName: github.String(tag), Name: github.String(tag),
		})
		return resp, err
	})
	if err != nil {
		// Another job of the same workflow may have created it in the meantime.
		var er *github.ErrorResponse
		if errors.As(err, &er) && er.Response != nil && er.Response.StatusCode == http.StatusUnprocessableEntity && alreadyExists(er) {
			return c.FindRelease(ctx, tag)
		}
		return nil, err
	}
	c.o.Logger.Info("created release", "repository", c.Repository(), "tag", tag)
	return fromGitHub(created)
}

func alreadyExists(er *github.ErrorResponse) bool {
	for _, e := range er.Errors {
		if e.Code == "already_exists" {
			return true
		}
	}
	return false
}

// Asset is a release asset as listed by the API.
type Asset struct {
	ID    int64  `json:"id"`
	Name  string `json:"name"`
	Size  int64  `json:"size"`
	State string `json:"state"`
	// Digest is "sha256:<hex>" where the API provides it (go-github v60 predates the
	// field, hence this package's own type).
	Digest string `json:"digest"`
}

// ListAssets lists every asset of a release, following pagination.
func (c *Client) ListAssets(ctx context.Context, rel *Release) ([]Asset, error) {
	var all []Asset
	for page := 1; page != 0; {
		var batch []Asset
		var next int
		err := c.call(ctx, "listing release assets", false, func() (*github.Response, error) {
			u := fmt.Sprintf("repos/%s/%s/releases/%d/assets?per_page=100&page=%d", c.owner, c.repo, rel.ID, page)
			req, err := c.gh.NewRequest(http.MethodGet, u, nil)
			if err != nil {
				return nil, err
			}
			batch = nil
			resp, err := c.gh.Do(ctx, req, &batch)
			if resp != nil {
				next = resp.NextPage
			}
			return resp, err
		})
		if err != nil {
			return nil, err
		}
		all = append(all, batch...)
		if len(all) > MaxAssets {
			return nil, fmt.Errorf("%w: release %s lists more than %d assets", ErrInvalid, rel.Tag, MaxAssets)
		}
		page = next
	}
	return all, nil
}

// File is a local file to publish under Name.
type File struct {
	Name string
	Path string
}

// Outcome says what Publish did with one file.
type Outcome struct {
	Name   string
	SHA256 string
	// Action is "uploaded", "unchanged" (same name and digest already there) or
	// "replaced".
	Action string
}

// Publish uploads files to the release in order. It first compares every file with the
// assets already there and fails with ErrConflict, before uploading anything, when one
// differs and replace is false; so a rejected run leaves the release as it was.
func (c *Client) Publish(ctx context.Context, rel *Release, files []File, replace bool) ([]Outcome, error) {
	type plan struct {
		f        File
		sha      string
		size     int64
		existing *Asset
		same     bool
	}
	seen := map[string]bool{}
	var plans []plan
	for _, f := range files {
		if !validAssetName(f.Name) {
			return nil, fmt.Errorf("%w: asset name %q: expected a plain file name", ErrInvalid, f.Name)
		}
		if seen[f.Name] {
			return nil, fmt.Errorf("%w: asset name %q given twice", ErrInvalid, f.Name)
		}
		seen[f.Name] = true
		sum, size, err := fileio.SHA256(f.Path)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		plans = append(plans, plan{f: f, sha: sum, size: size})
	}
	assets, err := c.ListAssets(ctx, rel)
	if err != nil {
		return nil, err
	}
	byName := map[string]*Asset{}
	for i := range assets {
		byName[assets[i].Name] = &assets[i]
	}
	for i := range plans {
		p := &plans[i]
		a := byName[p.f.Name]
		if a == nil {
			continue
		}
		p.existing = a
		if a.State != "" && a.State != "uploaded" {
			continue // a failed earlier upload: replace it
		}
		same, err := c.sameContent(ctx, a, p.sha, p.size)
		if err != nil {
			return nil, err
		}
		p.same = same
		if !same && !replace {
			return nil, fmt.Errorf("%w: release %s already has %s with different content (sha256 of ours %s); pass replace to overwrite it", ErrConflict, rel.Tag, p.f.Name, p.sha)
		}
	}
	var out []Outcome
	for _, p := range plans {
		action := "uploaded"
		switch {
		case p.same:
			out = append(out, Outcome{Name: p.f.Name, SHA256: p.sha, Action: "unchanged"})
			c.o.Logger.Info("asset unchanged", "name", p.f.Name, "sha256", p.sha)
			continue
		case p.existing != nil:
			if err := c.deleteAsset(ctx, p.existing.ID); err != nil {
				return out, err
			}
			action = "replaced"
		}
		if err := c.upload(ctx, rel, p.f, p.size); err != nil {
			return out, err
		}
		c.o.Logger.Info("asset "+action, "name", p.f.Name, "sha256", p.sha)
		out = append(out, Outcome{Name: p.f.Name, SHA256: p.sha, Action: action})
	}
	return out, nil
}

// sameContent compares an existing asset with a local digest: by the API's digest where
// given, else by downloading and hashing it.
func (c *Client) sameContent(ctx context.Context, a *Asset, sha string, size int64) (bool, error) {
	if a.Size != size {
		return false, nil
	}
	if d, ok := strings.CutPrefix(a.Digest, "sha256:"); ok {
		return strings.EqualFold(d, sha), nil
	}
	rc, err := c.openAsset(ctx, a.ID)
	if err != nil {
		return false, err
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(rc, size+1))
	if err != nil {
		return false, fmt.Errorf("downloading asset %s to compare it: %w", a.Name, err)
	}
	return n == size && hex.EncodeToString(h.Sum(nil)) == sha, nil
}

func (c *Client) deleteAsset(ctx context.Context, id int64) error {
	return c.call(ctx, "deleting the old asset", true, func() (*github.Response, error) {
		return c.gh.Repositories.DeleteReleaseAsset(ctx, c.owner, c.repo, id)
	})
}

// upload sends one file to the release's upload URL; the file is reopened on each attempt
// so a retry sends it from the start.
func (c *Client) upload(ctx context.Context, rel *Release, f File, size int64) error {
	mediaType := mime.TypeByExtension(filepath.Ext(f.Name))
	if mediaType == "" {
		mediaType = "application/octet-stream"
	}
	u := rel.UploadURL + "?name=" + url.QueryEscape(f.Name)
	return c.call(ctx, "uploading "+f.Name, true, func() (*github.Response, error) {
		fh, err := os.Open(f.Path)
		if err != nil {
			return nil, &permanent{err}
		}
		defer fh.Close()
		req, err := c.gh.NewUploadRequest(u, fh, size, mediaType)
		if err != nil {
			return nil, &permanent{err}
		}
		return c.gh.Do(ctx, req, nil)
	})
}

// openAsset opens an asset's bytes, following the API's redirect with the download
// client (which carries no token).
func (c *Client) openAsset(ctx context.Context, id int64) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := c.call(ctx, "downloading asset", false, func() (*github.Response, error) {
		var err error
		rc, _, err = c.gh.Repositories.DownloadReleaseAsset(ctx, c.owner, c.repo, id, c.o.DownloadClient)
		var ge *github.ErrorResponse
		if errors.As(err, &ge) {
			return &github.Response{Response: ge.Response}, err
		}
		return nil, err
	})
	return rc, err
}

// Downloaded is an asset written to disk.
type Downloaded struct {
	Name string
	Path string
	Size int64
}

// Download writes the named assets (all when names is empty) of a release into dir, each
// size-capped and written atomically. Asset names come from the API and are accepted only
// as plain file names.
func (c *Client) Download(ctx context.Context, rel *Release, dir string, names []string) ([]Downloaded, error) {
	assets, err := c.ListAssets(ctx, rel)
	if err != nil {
		return nil, err
	}
	want, missing := map[string]bool{}, map[string]bool{}
	for _, n := range names {
		want[n], missing[n] = true, true
	}
	var out []Downloaded
	for _, a := range assets {
		if len(want) > 0 && !want[a.Name] {
			continue
		}
		delete(missing, a.Name)
		if !validAssetName(a.Name) {
			return nil, fmt.Errorf("%w: release %s has an asset named %q, which is not a plain file name", ErrInvalid, rel.Tag, a.Name)
		}
		if a.Size > c.o.MaxAssetSize {
			return nil, fmt.Errorf("%w: asset %s is %d bytes, limit %d", ErrInvalid, a.Name, a.Size, c.o.MaxAssetSize)
		}
		p := filepath.Join(dir, a.Name)
		n, err := c.downloadTo(ctx, a, p)
		if err != nil {
			return nil, err
		}
		out = append(out, Downloaded{Name: a.Name, Path: p, Size: n})
	}
	for n := range missing {
		return nil, fmt.Errorf("%w: release %s has no asset named %s", ErrNotFound, rel.Tag, n)
	}
	return out, nil
}

func (c *Client) downloadTo(ctx context.Context, a Asset, path string) (int64, error) {
	rc, err := c.openAsset(ctx, a.ID)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	tmp, err := atomicfile.Create(path)
	if err != nil {
		return 0, err
	}
	defer tmp.Abort()
	n, err := io.Copy(tmp, io.LimitReader(rc, c.o.MaxAssetSize+1))
	if err == nil && n > c.o.MaxAssetSize {
		err = fmt.Errorf("%w: asset %s is larger than %d bytes", ErrInvalid, a.Name, c.o.MaxAssetSize)
	}
	if err == nil && n != a.Size {
		err = fmt.Errorf("%w: asset %s: downloaded %d bytes, the API lists %d", ErrInvalid, a.Name, n, a.Size)
	}
	if err != nil {
		return 0, fmt.Errorf("downloading %s: %w", a.Name, err)
	}
	if err := tmp.Commit(0o644); err != nil {
		return 0, fmt.Errorf("downloading %s: %w", a.Name, err)
	}
	return n, nil
}

// PushAttestation posts a Sigstore bundle to the repository's attestations API (what
// `gh attestation verify` reads) and returns the attestation id. go-github v60 has no
// typed method for it, so this is a raw request through the same client.
func (c *Client) PushAttestation(ctx context.Context, bundleJSON []byte) (int64, error) {
	if !json.Valid(bundleJSON) {
		return 0, fmt.Errorf("%w: the bundle is not JSON", ErrInvalid)
	}
	var created struct {
		ID int64 `json:"id"`
	}
	err := c.call(ctx, "pushing the attestation", true, func() (*github.Response, error) {
		req, err := c.gh.NewRequest(http.MethodPost, fmt.Sprintf("repos/%s/%s/attestations", c.owner, c.repo),
			map[string]json.RawMessage{"bundle": bundleJSON})
		if err != nil {
			return nil, &permanent{err}
		}
		return c.gh.Do(ctx, req, &created)
	})
	if err != nil {
		if errors.Is(err, ErrPermission) {
			return 0, fmt.Errorf("%w (the attestations API needs `permissions: attestations: write` and `id-token: write`, and a keyless bundle)", err)
		}
		return 0, err
	}
	return created.ID, nil
}

// permanent marks an error that retrying cannot fix (a local file, a request that cannot
// be built).
type permanent struct{ err error }

func (p *permanent) Error() string { return p.err.Error() }
func (p *permanent) Unwrap() error { return p.err }

// call runs one API operation with retries. write says whether a 403/404 means a missing
// `contents: write` permission.
func (c *Client) call(ctx context.Context, what string, write bool, op func() (*github.Response, error)) error {
	var err error
	for attempt := 1; ; attempt++ {
		var resp *github.Response
		resp, err = op()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", what, ctx.Err())
		}
		var p *permanent
		if errors.As(err, &p) {
			return fmt.Errorf("%s: %w", what, err)
		}
		status := 0
		if resp != nil && resp.Response != nil {
			status = resp.StatusCode
		}
		wait, retry := c.retryable(err, status, attempt)
		if !retry || attempt >= c.o.MaxAttempts {
			return c.classify(what, write, status, err, attempt)
		}
		if wait > c.o.MaxWait {
			return fmt.Errorf("%s: the API asks to wait %s before retrying, longer than %s: %w", what, wait.Round(time.Second), c.o.MaxWait, err)
		}
		c.o.Logger.Warn("GitHub API call failed, retrying", "what", what, "status", status, "attempt", attempt, "wait", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
}

// retryable decides whether to retry and how long to wait: the API's own Retry-After or
// rate-limit reset when it gives one, else exponential backoff with jitter.
func (c *Client) retryable(err error, status, attempt int) (time.Duration, bool) {
	backoff := c.o.BaseDelay << (attempt - 1)
	if backoff > c.o.MaxDelay || backoff <= 0 {
		backoff = c.o.MaxDelay
	}
	backoff = backoff/2 + time.Duration(rand.Int64N(int64(backoff/2)+1))
	var rl *github.RateLimitError
	var abuse *github.AbuseRateLimitError
	switch {
	case errors.As(err, &rl):
		return max(time.Until(rl.Rate.Reset.Time), c.o.BaseDelay), true
	case errors.As(err, &abuse):
		if d := abuse.GetRetryAfter(); d > 0 {
			return d, true
		}
		return backoff, true
	case status == http.StatusTooManyRequests || status >= 500:
		if ra := retryAfter(err); ra > 0 {
			return ra, true
		}
		return backoff, true
	case status == 0:
		// No HTTP answer at all: a network error is worth another try.
		var ue *url.Error
		return backoff, errors.As(err, &ue)
	}
	return 0, false
}

func retryAfter(err error) time.Duration {
	var er *github.ErrorResponse
	if !errors.As(err, &er) || er.Response == nil {
		return 0
	}
	if s, perr := strconv.Atoi(er.Response.Header.Get("Retry-After")); perr == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	return 0
}

func (c *Client) classify(what string, write bool, status int, err error, attempts int) error {
	switch {
	case status == http.StatusForbidden || (write && status == http.StatusNotFound):
		hint := ""
		if write {
			hint = " (publishing to a release needs `permissions: contents: write` for the workflow's token)"
		}
		return fmt.Errorf("%s in %s: %w: %v%s", what, c.Repository(), ErrPermission, err, hint)
	case status == http.StatusUnauthorized:
		return fmt.Errorf("%s in %s: %w: the token was refused: %v", what, c.Repository(), ErrPermission, err)
	case status == http.StatusNotFound:
		return fmt.Errorf("%s in %s: %w: %v", what, c.Repository(), ErrNotFound, err)
	case attempts > 1:
		return fmt.Errorf("%s in %s: giving up after %d attempts: %w", what, c.Repository(), attempts, err)
	}
	return fmt.Errorf("%s in %s: %w", what, c.Repository(), err)
}

func validAssetName(n string) bool {
	return n != "" && n != "." && n != ".." && len(n) <= 255 && !strings.ContainsAny(n, "/\\\x00")
}
