package verify

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/verify/verifytest"
)

// checksumsFixture is a build whose subjects are a checksums file listing the fixture's
// artifact and one more file, both beside it, and that file (attested unless unattested).
func checksumsFixture(t *testing.T, k *verifytest.Kit) (*verifytest.Fixture, string, string) {
	return checksumsFixtureOf(t, k, true)
}

func checksumsFixtureOf(t *testing.T, k *verifytest.Kit, attested bool) (*verifytest.Fixture, string, string) {
	t.Helper()
	dir := t.TempDir()
	other := []byte("a second release file\n")
	if err := os.WriteFile(filepath.Join(dir, "other.tar.gz"), other, 0o644); err != nil {
		t.Fatal(err)
	}
	sums := []byte(fmt.Sprintf("%s  hello\n%s *other.tar.gz\n", sha256Hex(verifytest.ArtifactContent), sha256Hex(other)))
	sumsPath := filepath.Join(dir, "checksums.txt")
	if err := os.WriteFile(sumsPath, sums, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := k.Build(dir, verifytest.Hooks{Result: func(r *job.Result) {
		r.Artifacts = append(r.Artifacts, job.Artifact{Path: "checksums.txt", SHA256: sha256Hex(sums), Size: int64(len(sums))})
		if attested {
			r.Artifacts = append(r.Artifacts, job.Artifact{Path: "other.tar.gz", SHA256: sha256Hex(other), Size: int64(len(other))})
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	return f, sumsPath, filepath.Join(dir, "other.tar.gz")
}

func TestChecksums(t *testing.T) {
	k := testKit(t)
	f, sums, other := checksumsFixture(t, k)
	o := kitOptions(k, f)
	o.Artifacts, o.Checksums = nil, []string{sums}
	res, err := Verify(context.Background(), o)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	var names []string
	for _, a := range res.Artifacts {
		names = append(names, a.Path)
	}
	if strings.Join(names, ",") != "checksums.txt,hello,other.tar.gz" {
		t.Errorf("verified artifacts %v", names)
	}

	// A listed file that differs, or is missing, fails; so does a checksums file that is no
	// subject.
	if err := os.WriteFile(other, []byte("swapped\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(context.Background(), o); !isCheck(err, CheckChecksums) || !strings.Contains(err.Error(), "other.tar.gz") {
		t.Errorf("a swapped listed file: %v, want %s naming it", err, CheckChecksums)
	}
	os.Remove(other)
	if _, err := Verify(context.Background(), o); !isCheck(err, CheckChecksums) {
		t.Errorf("a missing listed file: %v, want %s", err, CheckChecksums)
	}
	forged := filepath.Join(t.TempDir(), "checksums.txt")
	os.WriteFile(forged, []byte(sha256Hex([]byte("x"))+"  hello\n"), 0o644)
	o.Checksums = []string{forged}
	if _, err := Verify(context.Background(), o); !isCheck(err, CheckSubject) {
		t.Errorf("a checksums file that is no subject: %v, want %s", err, CheckSubject)
	}
}

// A checksums file the build attested cannot vouch for a file the build did not: every
// file it lists must have a subject's digest.
func TestChecksumsListingAnUnattestedFile(t *testing.T) {
	k := testKit(t)
	f, sums, _ := checksumsFixtureOf(t, k, false)
	o := kitOptions(k, f)
	o.Artifacts, o.Checksums = nil, []string{sums}
	if _, err := Verify(context.Background(), o); !isCheck(err, CheckChecksums) || !strings.Contains(err.Error(), "other.tar.gz") || !strings.Contains(err.Error(), "no subject") {
		t.Fatalf("Verify = %v, want %s naming other.tar.gz as no subject", err, CheckChecksums)
	}
}

func isCheck(err error, name string) bool {
	var ve *Error
	return errors.As(err, &ve) && ve.Check == name
}

func TestParseChecksums(t *testing.T) {
	h := strings.Repeat("a", 64)
	for name, in := range map[string]string{
		"empty":      "",
		"bad digest": "abc  x\n",
		"one space":  h + " x\n",
		"absolute":   h + "  /etc/passwd\n",
		"dotdot":     h + "  ../x\n",
		"unclean":    h + "  a//b\n",
		"twice":      h + "  x\n" + h + "  x\n",
		"sha512":     strings.Repeat("a", 128) + "  x\n",
		"backslash":  h + "  a\\b\n",
	} {
		if _, err := ParseChecksums([]byte(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	got, err := ParseChecksums([]byte(strings.ToUpper(h) + "  dist/x.tar.gz\r\n\n" + h + " *y\n"))
	if err != nil || len(got) != 2 || got[0].Name != "dist/x.tar.gz" || got[0].SHA256 != h || got[1].Name != "y" {
		t.Errorf("ParseChecksums = %v, %v", got, err)
	}
}

// The host's SHA256SUMS subject, verified as a file, is reported under its name with the
// content the result record gives it, not as a nameless artifact.
func TestVerifyTheBuildsSHA256SUMS(t *testing.T) {
	k := testKit(t)
	f, err := k.Build(t.TempDir(), verifytest.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := provenance.ParseStatement(f.Statement)
	if err != nil {
		t.Fatal(err)
	}
	res, err := job.ParseResult(p.Result)
	if err != nil {
		t.Fatal(err)
	}
	sums := filepath.Join(f.Dir, provenance.ChecksumsName)
	if err := os.WriteFile(sums, provenance.Checksums(res.Artifacts), 0o644); err != nil {
		t.Fatal(err)
	}
	o := kitOptions(k, f)
	o.Artifacts = []string{sums}
	got, err := Verify(context.Background(), o)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if len(got.Artifacts) != 1 || got.Artifacts[0].Path != provenance.ChecksumsName || got.Artifacts[0].SHA256 == "" {
		t.Errorf("verified artifacts %+v, want SHA256SUMS with its digest", got.Artifacts)
	}
}

// Claims only the host vouches for are named unbound in the result: the toolchain image's
// file digest always, the source repository and ref of a key-signed bundle.
func TestHostClaimsAreUnbound(t *testing.T) {
	k := testKit(t)
	f, err := k.Build(t.TempDir(), verifytest.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := Verify(context.Background(), kitOptions(k, f))
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	for _, want := range []string{"toolchain imageSha256", "source repository", "source ref", "invocation id"} {
		if !slices.Contains(res.Unbound, want) {
			t.Errorf("unbound %v lacks %q", res.Unbound, want)
		}
	}
}
