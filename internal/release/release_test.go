package release

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/internal/ghfake"
)

const repoName = "acme/widget"

func newTestClient(t *testing.T, g *ghfake.GitHub, token string) *Client {
	t.Helper()
	gh, err := NewGitHubClient(g.URL(), token, g.Server.Client())
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(gh, repoName, Options{BaseDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func writeFiles(t *testing.T, contents map[string]string) []File {
	t.Helper()
	dir := t.TempDir()
	var files []File
	for _, name := range []string{"hello", "hello.sha256", "provenance.sigstore.json"} {
		c, ok := contents[name]
		if !ok {
			continue
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, File{Name: name, Path: p})
	}
	return files
}

func actions(out []Outcome) string {
	var s []string
	for _, o := range out {
		s = append(s, o.Name+"="+o.Action)
	}
	return strings.Join(s, ",")
}

func TestPublishIdempotent(t *testing.T) {
	g := ghfake.NewGitHub(t, repoName)
	c := newTestClient(t, g, g.Token)
	ctx := context.Background()
	files := writeFiles(t, map[string]string{"hello": "binary", "provenance.sigstore.json": `{"mediaType":"x"}`})

	rel, err := c.EnsureRelease(ctx, "v1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.Publish(ctx, rel, files, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := actions(out); got != "hello=uploaded,provenance.sigstore.json=uploaded" {
		t.Errorf("first publish: %s", got)
	}
	if r := g.Release(repoName, "v1.0.0"); r == nil || len(r.Assets) != 2 || string(r.Assets[0].Content) != "binary" {
		t.Fatalf("release after publish: %+v", r)
	}

	// A re-run: the release is found, not created again, and nothing is uploaded.
	before := g.Count("POST", "/uploads/")
	rel2, err := c.EnsureRelease(ctx, "v1.0.0")
	if err != nil || rel2.ID != rel.ID {
		t.Fatalf("EnsureRelease again: %v, id %d vs %d", err, rel2.ID, rel.ID)
	}
	out, err = c.Publish(ctx, rel2, files, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := actions(out); got != "hello=unchanged,provenance.sigstore.json=unchanged" {
		t.Errorf("second publish: %s", got)
	}
	if n := g.Count("POST", "/uploads/") - before; n != 0 {
		t.Errorf("re-run uploaded %d assets", n)
	}
	created := 0
	for _, r := range g.Requests() {
		if r.Method == "POST" && r.Path == "/repos/acme/widget/releases" {
			created++
		}
	}
	if n := created; n != 1 {
		t.Errorf("release created %d times", n)
	}

	// Without the API's digest field, the client downloads and hashes to compare.
	g.OmitDigests = true
	out, err = c.Publish(ctx, rel2, files, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := actions(out); got != "hello=unchanged,provenance.sigstore.json=unchanged" {
		t.Errorf("publish without digests: %s", got)
	}
	if g.Count("GET", "/download/") == 0 {
		t.Error("no asset was downloaded to compare it")
	}
	if n := g.Count("POST", "/uploads/") - before; n != 0 {
		t.Errorf("re-run without digests uploaded %d assets", n)
	}
}

func TestPublishConflictAndReplace(t *testing.T) {
	for _, omit := range []bool{false, true} {
		t.Run(fmt.Sprintf("omit digests %v", omit), func(t *testing.T) {
			g := ghfake.NewGitHub(t, repoName)
			g.OmitDigests = omit
			g.AddRelease(repoName, "v1", map[string][]byte{"hello": []byte("old binary")})
			c := newTestClient(t, g, g.Token)
			ctx := context.Background()
			rel, err := c.EnsureRelease(ctx, "v1")
			if err != nil {
				t.Fatal(err)
			}
			files := writeFiles(t, map[string]string{"hello": "new binary", "provenance.sigstore.json": "{}"})
			_, err = c.Publish(ctx, rel, files, false)
			if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "hello") {
				t.Fatalf("error = %v, want ErrConflict naming hello", err)
			}
			if n := g.Count("POST", "/uploads/"); n != 0 {
				t.Errorf("a conflicting publish uploaded %d assets before failing", n)
			}
			out, err := c.Publish(ctx, rel, files, true)
			if err != nil {
				t.Fatal(err)
			}
			if got := actions(out); got != "hello=replaced,provenance.sigstore.json=uploaded" {
				t.Errorf("replace: %s", got)
			}
			r := g.Release(repoName, "v1")
			if len(r.Assets) != 2 {
				t.Fatalf("assets after replace: %d", len(r.Assets))
			}
			for _, a := range r.Assets {
				if a.Name == "hello" && string(a.Content) != "new binary" {
					t.Errorf("hello holds %q", a.Content)
				}
			}
		})
	}
}

func TestRetries(t *testing.T) {
	g := ghfake.NewGitHub(t, repoName)
	c := newTestClient(t, g, g.Token)
	ctx := context.Background()
	g.FailNext("GET", "/repos/acme/widget/releases/tags/", 502, 1)
	g.FailNext("POST", "/uploads/", 502, 1)
	g.FailNext("GET", "/repos/acme/widget/releases/", 429, 1)
	rel, err := c.EnsureRelease(ctx, "v2")
	if err != nil {
		t.Fatal(err)
	}
	files := writeFiles(t, map[string]string{"hello": "binary"})
	out, err := c.Publish(ctx, rel, files, false)
	if err != nil {
		t.Fatalf("Publish after a 502: %v", err)
	}
	if got := actions(out); got != "hello=uploaded" {
		t.Errorf("publish: %s", got)
	}
	var statuses []int
	for _, r := range g.Requests() {
		if r.Method == "POST" && strings.HasPrefix(r.Path, "/uploads/") {
			statuses = append(statuses, r.Status)
		}
	}
	if fmt.Sprint(statuses) != "[502 201]" {
		t.Errorf("upload attempts answered %v, want [502 201]", statuses)
	}
	if a := g.Release(repoName, "v2").Assets; len(a) != 1 || string(a[0].Content) != "binary" {
		t.Errorf("the retried upload stored %+v", a)
	}

	t.Run("gives up after MaxAttempts", func(t *testing.T) {
		g.FailNext("GET", "/repos/acme/widget/releases/tags/", 503, 5)
		_, err := c.FindRelease(ctx, "v2")
		if err == nil || !strings.Contains(err.Error(), "after 5 attempts") {
			t.Fatalf("error = %v", err)
		}
	})
	t.Run("a 404 is not retried", func(t *testing.T) {
		before := len(g.Requests())
		_, err := c.FindRelease(ctx, "v9")
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("error = %v", err)
		}
		if n := len(g.Requests()) - before; n != 1 {
			t.Errorf("%d requests for a missing release", n)
		}
	})
}

func TestPermissions(t *testing.T) {
	g := ghfake.NewGitHub(t, repoName)
	g.ContentsWrite = false
	g.AttestationsWrite = false
	c := newTestClient(t, g, g.Token)
	ctx := context.Background()
	_, err := c.EnsureRelease(ctx, "v1")
	if !errors.Is(err, ErrPermission) || !strings.Contains(err.Error(), "contents: write") {
		t.Fatalf("create release without contents: write: %v", err)
	}
	g.AddRelease(repoName, "v1", nil)
	rel, err := c.FindRelease(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Publish(ctx, rel, writeFiles(t, map[string]string{"hello": "x"}), false)
	if !errors.Is(err, ErrPermission) || !strings.Contains(err.Error(), "contents: write") {
		t.Fatalf("upload without contents: write: %v", err)
	}
	_, err = c.PushAttestation(ctx, []byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{},"dsseEnvelope":{}}`))
	if !errors.Is(err, ErrPermission) || !strings.Contains(err.Error(), "attestations: write") || !strings.Contains(err.Error(), "id-token: write") {
		t.Fatalf("attestation without attestations: write: %v", err)
	}
	bad := newTestClient(t, g, "wrong-token")
	if _, err := bad.EnsureRelease(ctx, "v2"); !errors.Is(err, ErrPermission) {
		t.Fatalf("wrong token: %v", err)
	}
}

func TestPushAttestation(t *testing.T) {
	g := ghfake.NewGitHub(t, repoName)
	c := newTestClient(t, g, g.Token)
	b := []byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"certificate":{}},"dsseEnvelope":{"payload":"e30="}}`)
	g.FailNext("POST", "/repos/acme/widget/attestations", 502, 1)
	id, err := c.PushAttestation(context.Background(), b)
	if err != nil || id == 0 {
		t.Fatalf("PushAttestation: %d, %v", id, err)
	}
	got := g.Attestations(repoName)
	if len(got) != 1 || !bytes.Contains(got[0], []byte(`"bundle":{"mediaType"`)) {
		t.Fatalf("attestations: %s", got)
	}
	if _, err := c.PushAttestation(context.Background(), []byte("not json")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("non-JSON bundle: %v", err)
	}
}

func TestDownload(t *testing.T) {
	g := ghfake.NewGitHub(t, repoName)
	assets := map[string][]byte{"hello": []byte("binary"), "provenance.sigstore.json": []byte("{}")}
	for i := 0; i < 120; i++ { // more than one page
		assets[fmt.Sprintf("extra-%03d", i)] = []byte{byte(i)}
	}
	g.AddRelease(repoName, "v1", assets)
	c := newTestClient(t, g, "") // public repository: no token
	ctx := context.Background()
	rel, err := c.FindRelease(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	all, err := c.ListAssets(ctx, rel)
	if err != nil || len(all) != 122 {
		t.Fatalf("ListAssets: %d assets, %v", len(all), err)
	}
	dir := t.TempDir()
	got, err := c.Download(ctx, rel, dir, []string{"hello", "provenance.sigstore.json"})
	if err != nil || len(got) != 2 {
		t.Fatalf("Download: %+v, %v", got, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "hello")); string(b) != "binary" {
		t.Errorf("hello = %q", b)
	}
	if _, err := c.Download(ctx, rel, dir, []string{"missing"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing asset: %v", err)
	}
	small, err := NewClient(c.gh, repoName, Options{MaxAssetSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := small.Download(ctx, rel, dir, []string{"hello"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("oversized asset: %v", err)
	}
	g.AddRelease(repoName, "evil", map[string][]byte{"..": []byte("x")})
	erel, err := c.FindRelease(ctx, "evil")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Download(ctx, erel, dir, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("asset named ..: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	g := ghfake.NewGitHub(t, repoName)
	gh, _ := NewGitHubClient(g.URL(), g.Token, nil)
	for _, r := range []string{"", "acme", "acme/", "/widget", "acme/wid/get", "acme/../x", "ac me/widget"} {
		if _, err := NewClient(gh, r, Options{}); !errors.Is(err, ErrInvalid) {
			t.Errorf("NewClient(%q): %v", r, err)
		}
	}
	if _, err := NewGitHubClient("ftp://example", "", nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("ftp API URL: %v", err)
	}
	c := newTestClient(t, g, g.Token)
	rel, err := c.EnsureRelease(context.Background(), "v1")
	if err != nil {
		t.Fatal(err)
	}
	files := writeFiles(t, map[string]string{"hello": "x"})
	for _, f := range []File{{Name: "a/b", Path: files[0].Path}, {Name: "..", Path: files[0].Path}, {Name: "x", Path: "/nonexistent"}} {
		if _, err := c.Publish(context.Background(), rel, []File{f}, false); !errors.Is(err, ErrInvalid) {
			t.Errorf("Publish(%+v): %v", f, err)
		}
	}
	if _, err := c.Publish(context.Background(), rel, []File{files[0], files[0]}, false); !errors.Is(err, ErrInvalid) {
		t.Errorf("duplicate names: %v", err)
	}
}
