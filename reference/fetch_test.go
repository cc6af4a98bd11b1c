package reference_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sethvargo/go-githubactions"

	"github.com/cloche-dev/cloche/internal/ghfake"
	guest "github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/internal/release"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/reference"
)

func releaseClaims(repo string) ghfake.Claims {
	wf := repo + "/.github/workflows/release.yml@refs/tags/v1.0.0"
	return ghfake.Claims{Repository: repo, RepositoryID: "101", RepositoryOwner: strings.Split(repo, "/")[0], RepositoryOwnerID: "7",
		Ref: "refs/tags/v1.0.0", SHA: strings.Repeat("ab", 20), WorkflowRef: wf, WorkflowSHA: strings.Repeat("ab", 20),
		JobWorkflowRef: wf, JobWorkflowSHA: strings.Repeat("ab", 20), EventName: "push", RunID: "1", RunAttempt: "1",
		RunnerEnvironment: "self-hosted", Visibility: "public"}
}

// publishedRelease is a guest image release as the release workflow publishes it: the
// image files and its reference values, signed keyless by the workflow of signerRepo.
func publishedRelease(t *testing.T, gh *ghfake.GitHub, ss *ghfake.Sigstore, signerRepo string) *reference.Document {
	t.Helper()
	img := testfixture.GuestImage(t)
	doc, err := reference.Create(context.Background(), reference.CreateOptions{GuestImageDir: img, ToolVersion: "1.0.0", VCPUs: []int{2}})
	if err != nil {
		t.Fatal(err)
	}
	ss.SetClaims(releaseClaims(signerRepo))
	env := map[string]string{"ACTIONS_ID_TOKEN_REQUEST_URL": ss.TokenURL(), "ACTIONS_ID_TOKEN_REQUEST_TOKEN": ss.RequestToken}
	a := githubactions.New(githubactions.WithGetenv(func(k string) string { return env[k] }))
	signer, err := provenance.NewKeylessSigner(provenance.KeylessOptions{FulcioURL: ss.Fulcio.URL, RekorURL: ss.Rekor.URL, Token: a.GetIDToken})
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := reference.Sign(context.Background(), signer, doc)
	if err != nil {
		t.Fatal(err)
	}
	assets := map[string][]byte{reference.BundleFileName: bundle}
	for _, name := range []string{guest.KernelFile, guest.InitrdFile, guest.MetadataFile} {
		b, err := os.ReadFile(filepath.Join(img, name))
		if err != nil {
			t.Fatal(err)
		}
		assets[name] = b
	}
	gh.AddRelease("acme/cloche", "v1.0.0", assets)
	return doc
}

func fetchOptions(t *testing.T, gh *ghfake.GitHub, dir string) reference.FetchOptions {
	t.Helper()
	c, err := release.NewGitHubClient(gh.URL(), gh.Token, &http.Client{})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := release.NewClient(c, "acme/cloche", release.Options{MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	return reference.FetchOptions{Release: guest.Release{Repository: "acme/cloche", Tag: "v1.0.0"}, Dir: dir, Client: rc}
}

func TestFetchGuestReleaseKeyless(t *testing.T) {
	testfixture.RequireQEMU(t)
	gh := ghfake.NewGitHub(t, "acme/cloche")
	ss := ghfake.NewSigstore(t, releaseClaims("acme/cloche"))
	publishedRelease(t, gh, ss, "acme/cloche")
	dir := filepath.Join(t.TempDir(), "guest-images", "v1.0.0")
	o := fetchOptions(t, gh, dir)
	o.VerifySigned = reference.ReleaseWorkflowSigned(ss.TrustedRoot())
	img, err := reference.FetchGuestRelease(context.Background(), o)
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	if rel, err := guest.LoadRelease(img.Dir); err != nil || rel == nil || rel.Tag != "v1.0.0" {
		t.Errorf("release.json: %v %v", rel, err)
	}
	downloads := gh.Count("GET", "/assets/")
	if downloads == 0 {
		t.Fatal("no asset download was counted")
	}
	if _, err := reference.FetchGuestRelease(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if n := gh.Count("GET", "/assets/"); n != downloads {
		t.Errorf("a cached release was downloaded again (%d requests, was %d)", n, downloads)
	}

	// A swapped initrd, with guest-image.json rewritten to match, is not what the signed
	// values list: refused, and nothing is left where the image would go.
	swapped := filepath.Join(t.TempDir(), "v1.0.0")
	meta, _ := os.ReadFile(filepath.Join(dir, guest.MetadataFile))
	evil := []byte("an initramfs the host wrote")
	var m map[string]any
	json.Unmarshal(meta, &m)
	m["initrd"].(map[string]any)["sha256"] = sha256hex(evil)
	m["initrd"].(map[string]any)["size"] = len(evil)
	meta, _ = json.Marshal(m)
	gh.SetAssetContent("acme/cloche", "v1.0.0", guest.InitrdFile, evil)
	gh.SetAssetContent("acme/cloche", "v1.0.0", guest.MetadataFile, meta)
	o2 := o
	o2.Dir = swapped
	if _, err := reference.FetchGuestRelease(context.Background(), o2); !errors.Is(err, reference.ErrUntrustedRelease) || !strings.Contains(err.Error(), guest.InitrdFile) {
		t.Errorf("swapped initrd: %v, want ErrUntrustedRelease naming %s", err, guest.InitrdFile)
	}
	if _, err := os.Stat(swapped); !os.IsNotExist(err) {
		t.Errorf("a refused release left %s behind", swapped)
	}
	// The cached copy is checked again, not trusted because it is there.
	os.WriteFile(filepath.Join(dir, guest.InitrdFile), evil, 0o644)
	if _, err := reference.FetchGuestRelease(context.Background(), o); err == nil {
		t.Error("a tampered cache was accepted")
	}
}

func TestFetchGuestReleaseRefusesOtherSigner(t *testing.T) {
	testfixture.RequireQEMU(t)
	gh := ghfake.NewGitHub(t, "acme/cloche")
	ss := ghfake.NewSigstore(t, releaseClaims("acme/cloche"))
	publishedRelease(t, gh, ss, "mallory/fork")
	o := fetchOptions(t, gh, filepath.Join(t.TempDir(), "v1.0.0"))
	o.VerifySigned = reference.ReleaseWorkflowSigned(ss.TrustedRoot())
	if _, err := reference.FetchGuestRelease(context.Background(), o); !errors.Is(err, reference.ErrUntrustedRelease) {
		t.Errorf("values signed by another repository's workflow: %v", err)
	}
	o.VerifySigned = nil
	if _, err := reference.FetchGuestRelease(context.Background(), o); !errors.Is(err, reference.ErrUntrustedRelease) || !strings.Contains(err.Error(), "trusted root") {
		t.Errorf("no embedded values and no trusted root: %v", err)
	}
}

// With this release's values embedded, no signature is needed, and files other than the
// embedded values list are refused.
func TestFetchGuestReleaseEmbedded(t *testing.T) {
	testfixture.RequireQEMU(t)
	gh := ghfake.NewGitHub(t, "acme/cloche")
	ss := ghfake.NewSigstore(t, releaseClaims("acme/cloche"))
	doc := publishedRelease(t, gh, ss, "mallory/fork") // the bundle's signer does not matter here
	o := fetchOptions(t, gh, filepath.Join(t.TempDir(), "v1.0.0"))
	o.Embedded = []*reference.Document{doc}
	if _, err := reference.FetchGuestRelease(context.Background(), o); err != nil {
		t.Fatalf("fetch with embedded values: %v", err)
	}
	other := *doc
	other.GuestImage.Kernel.SHA256 = strings.Repeat("0", 64)
	o.Embedded = []*reference.Document{&other}
	o.Dir = filepath.Join(t.TempDir(), "v1.0.0")
	if _, err := reference.FetchGuestRelease(context.Background(), o); !errors.Is(err, reference.ErrUntrustedRelease) || !strings.Contains(err.Error(), "embedded") {
		t.Errorf("files the embedded values do not list: %v", err)
	}
}

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
