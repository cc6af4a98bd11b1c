package ghaction

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/internal/build"
	"github.com/cloche-dev/cloche/job"
)

func artifact(t *testing.T, dir, p, content string) job.Artifact {
	t.Helper()
	full := filepath.Join(dir, filepath.FromSlash(p))
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(content))
	return job.Artifact{Path: p, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(content))}
}

func paths(arts []job.Artifact) string {
	var out []string
	for _, a := range arts {
		out = append(out, a.Path)
	}
	return strings.Join(out, ",")
}

func TestSelectSubjects(t *testing.T) {
	dir := t.TempDir()
	a := artifact(t, dir, "dist/a", "a\n")
	b := artifact(t, dir, "dist/b", "b\n")
	b2 := artifact(t, dir, "other/b", "b2\n")
	sums := artifact(t, dir, "SHA256SUMS", "host's sums\n")
	o := &build.Outcome{ArtifactDir: dir, Artifacts: []job.Artifact{a, b, b2}, Checksums: &sums}

	for _, c := range []struct {
		name string
		sel  subjectSelection
		want string // the selected paths, or the error's text
	}{
		{"everything by default", subjectSelection{}, "dist/a,dist/b,other/b,SHA256SUMS"},
		{"by path", subjectSelection{name: "dist/b"}, "dist/b"},
		{"by unique base name", subjectSelection{name: "a"}, "dist/a"},
		{"base name of two", subjectSelection{name: "b"}, "names 2 artifacts"},
		{"by digest", subjectSelection{digest: b.SHA256}, "dist/b"},
		{"name and its digest", subjectSelection{name: "dist/a", digest: a.SHA256}, "dist/a"},
		{"name with another's digest", subjectSelection{name: "dist/a", digest: b.SHA256}, "input subject-name dist/a with input subject-digest sha256:" + b.SHA256 + " is no artifact"},
		{"digest not attested", subjectSelection{digest: strings.Repeat("0", 64)}, "input subject-digest sha256:" + strings.Repeat("0", 64) + " is no artifact"},
		{"no such name", subjectSelection{name: "dist/c"}, "input subject-name dist/c is no artifact"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := selectSubjects(o, c.sel)
			if err != nil {
				if !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("error %v, want ErrInput containing %q", err, c.want)
				}
				return
			}
			if paths(got) != c.want {
				t.Fatalf("selected %s, want %s", paths(got), c.want)
			}
		})
	}
}

func TestSelectSubjectsChecksums(t *testing.T) {
	dir := t.TempDir()
	a := artifact(t, dir, "dist/a", "a\n")
	b := artifact(t, dir, "dist/b", "b\n")
	list := func(name, content string) job.Artifact {
		return artifact(t, dir, name, content)
	}
	good := list("dist/checksums.txt", a.SHA256+"  a\n"+b.SHA256+"  b\n")
	wrong := list("dist/wrong.txt", a.SHA256+"  a\n"+a.SHA256+"  b\n")
	missing := list("dist/missing.txt", a.SHA256+"  c\n")
	o := &build.Outcome{ArtifactDir: dir, Artifacts: []job.Artifact{a, b, good, wrong, missing}}

	got, err := selectSubjects(o, subjectSelection{checksums: "dist/checksums.txt"})
	if err != nil || paths(got) != "dist/checksums.txt,dist/a,dist/b" {
		t.Fatalf("selected %s, %v; want the checksums file and what it lists", paths(got), err)
	}
	for name, want := range map[string]string{
		"dist/wrong.txt":   "lists dist/b with sha256 " + a.SHA256 + ", the guest attested " + b.SHA256,
		"dist/missing.txt": "lists dist/c, which is no artifact",
		"dist/absent.txt":  "input subject-checksums dist/absent.txt is no artifact this build attested",
	} {
		if _, err := selectSubjects(o, subjectSelection{checksums: name}); !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", name, err, want)
		}
	}
	// The file on the runner changed after the guest attested it.
	os.WriteFile(filepath.Join(dir, "dist", "checksums.txt"), []byte(a.SHA256+"  a\n"), 0o644)
	if _, err := selectSubjects(o, subjectSelection{checksums: "dist/checksums.txt"}); err == nil || !strings.Contains(err.Error(), "differs from the artifact the guest attested") {
		t.Errorf("changed checksums file: %v", err)
	}
}
