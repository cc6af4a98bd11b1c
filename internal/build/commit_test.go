package build

import (
	"context"
	"crypto/x509"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/internal/attest/simsp"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/source"
	"github.com/cloche-dev/cloche/verify"
)

// gitRepo makes a real repository of the given files in the object format, with one
// commit and an annotated tag v1.
func gitRepo(t *testing.T, format source.ObjectFormat, files map[string]string) string {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	dir := testfixture.WriteTree(t, files)
	git(t, dir, "init", "-q", "--object-format="+string(format))
	git(t, dir, "add", "-A")
	git(t, dir, "commit", "-q", "-m", "build me")
	git(t, dir, "tag", "-a", "-m", "release", "v1")
	return dir
}

func git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "HOME="+dir,
		"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.invalid", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.invalid")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// A build of a subdirectory of a SHA-256 repository at an annotated tag: the guest attests
// the commit and the tag, and the verifier checks them as attested.
func TestBuildAttestsCommitAndTag(t *testing.T) {
	e := newEnv(t)
	repo := gitRepo(t, source.FormatSHA256, map[string]string{"README": "top\n", "app/build.sh": "mkdir -p dist\necho built > dist/out.txt\n"})
	src := filepath.Join(repo, "app")
	objs, err := source.ReadGitObjects(context.Background(), src, "HEAD", "refs/tags/v1")
	if err != nil {
		t.Fatal(err)
	}
	o := e.options(t, src, "sh", "build.sh")
	o.Git, o.Ref, o.Repository = objs, "refs/tags/v1", "https://github.com/example/app"
	out, err := Run(context.Background(), o)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	commit := git(t, repo, "rev-parse", "HEAD")
	if out.Commit != commit || out.Tag != "v1" || out.SourceTree != git(t, repo, "rev-parse", "HEAD:app") {
		t.Fatalf("attested commit %s tag %q tree %s, git says commit %s", out.Commit, out.Tag, out.SourceTree, commit)
	}
	pub, err := provenance.LoadPublicKey(e.publicKey)
	if err != nil {
		t.Fatal(err)
	}
	root, err := simsp.LoadOrCreate(e.simDir)
	if err != nil {
		t.Fatal(err)
	}
	simRoot, err := x509.ParseCertificate(root.Chain().ARK)
	if err != nil {
		t.Fatal(err)
	}
	vo := verify.Options{
		BundlePath: out.BundlePath, PublicKey: pub, Artifacts: []string{filepath.Join(o.OutDir, "dist", "out.txt")},
		AllowSimulated: true, SimRoots: []*x509.Certificate{simRoot}, Reference: verify.ReferenceOptions{GuestImageDir: e.guestImage},
		ExpectedSourceCommit: commit, ExpectedSourceTag: "v1", Pins: verify.Pins{ToolchainDigest: out.ToolchainDigest},
	}
	res, err := verify.Verify(context.Background(), vo)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if res.SourceCommit != commit || res.SourceTag != "v1" {
		t.Errorf("verified commit %s tag %q", res.SourceCommit, res.SourceTag)
	}
	vo.ExpectedSourceTag = "v2"
	var ve *verify.Error
	if _, err := verify.Verify(context.Background(), vo); !errors.As(err, &ve) || ve.Check != verify.CheckSourceTag {
		t.Errorf("another tag: %v, want check %s", err, verify.CheckSourceTag)
	}
}

// A hostile host sends the commit object of another tree (its host-side check skipped):
// the guest refuses before running anything, naming both ids.
func TestGuestRefusesCommitOfAnotherTree(t *testing.T) {
	e := newEnv(t)
	repo := gitRepo(t, source.FormatSHA1, map[string]string{"build.sh": "echo SHOULD-NOT-RUN; touch x\n"})
	objs, err := source.ReadGitObjects(context.Background(), repo, "HEAD", "")
	if err != nil {
		t.Fatal(err)
	}
	// The commit is of the repository as committed; the host packs a backdoored tree.
	if err := os.WriteFile(filepath.Join(repo, "build.sh"), []byte("echo backdoor; echo SHOULD-NOT-RUN; touch x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	packed, err := source.TreeID(repo)
	if err != nil {
		t.Fatal(err)
	}
	o := e.options(t, repo, "sh", "build.sh")
	if err := CheckCommit(repo, "", objs); !errors.Is(err, ErrInput) || !errors.Is(err, source.ErrCommit) {
		t.Fatalf("host-side check: %v, want ErrInput and source.ErrCommit", err)
	}
	o.alterManifest = func(m *job.Manifest) { m.Source.SetGitObjects(objs) }
	console := &recordingWriter{}
	o.Console = console
	_, err = Run(context.Background(), o)
	commit, committedTree := git(t, repo, "rev-parse", "HEAD"), git(t, repo, "rev-parse", "HEAD^{tree}")
	if err == nil || !strings.Contains(err.Error(), "checking the commit object against the unpacked tree") || !strings.Contains(err.Error(), commit) || !strings.Contains(err.Error(), committedTree) || !strings.Contains(err.Error(), packed) {
		t.Fatalf("err = %v, want the guest's refusal naming commit %s, its tree %s and the packed tree %s", err, commit, committedTree, packed)
	}
	if strings.Contains(console.String(), "SHOULD-NOT-RUN") {
		t.Errorf("the build command ran with a commit of another tree")
	}
	assertNoOutput(t, o.OutDir)
}

// The host-side check: a dirty checkout, a tag ref that is not the tag object's, and a
// commit of the right tree pass or fail before anything is packed.
func TestCheckCommit(t *testing.T) {
	repo := gitRepo(t, source.FormatSHA1, map[string]string{"a": "a"})
	objs, err := source.ReadGitObjects(context.Background(), repo, "HEAD", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckCommit(repo, "refs/tags/v1", objs); err != nil {
		t.Fatalf("clean checkout: %v", err)
	}
	if err := CheckCommit(repo, "refs/tags/v2", objs); !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), "refs/tags/v1") {
		t.Fatalf("ref of another tag: %v", err)
	}
	if err := CheckCommit(repo, "", nil); err != nil {
		t.Fatalf("no commit: %v", err)
	}
	if err := os.WriteFile(filepath.Join(repo, "untracked"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CheckCommit(repo, "", objs); !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), "clean checkout") {
		t.Fatalf("untracked file: %v", err)
	}
}
