package ghaction

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/internal/agent"
	"github.com/cloche-dev/cloche/internal/build"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/verify/verifytest"
)

// recordingSigner counts what it is asked to sign.
type recordingSigner struct{ signed int }

func (s *recordingSigner) SignStatement(_ context.Context, stmt []byte) ([]byte, error) {
	s.signed++
	return []byte(`{"signed":true}`), nil
}

// TestSignOnClientChecksTheStatement: the action signs the agent's statement only when it
// is this run's build of exactly the files received; otherwise it signs nothing and
// writes no bundle.
func TestSignOnClientChecksTheStatement(t *testing.T) {
	kit, err := verifytest.NewKit(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	const run = "https://github.com/acme/widget/actions/runs/7/attempts/2"
	wc := &workflowContext{server: "https://github.com", repository: "acme/widget", runID: 7, runAttempt: 2}

	for _, c := range []struct {
		name   string
		invoc  string
		change func(t *testing.T, o *build.Outcome)
		want   string // "" signs
	}{
		{"this run's build of the files received", run, func(*testing.T, *build.Outcome) {}, ""},
		{"an artifact differs from its subject", run, func(t *testing.T, o *build.Outcome) {
			os.WriteFile(filepath.Join(o.ArtifactDir, "hello"), []byte("backdoored\n"), 0o644)
		}, "subject hello"},
		{"an artifact that is not a subject", run, func(t *testing.T, o *build.Outcome) {
			os.WriteFile(filepath.Join(o.ArtifactDir, "extra"), []byte("extra\n"), 0o644)
			o.Artifacts = append(o.Artifacts, job.Artifact{Path: "extra"})
		}, "artifact extra"},
		{"a subject that was not received", run, func(t *testing.T, o *build.Outcome) { o.Artifacts = nil }, "subject hello"},
		{"another run's statement", "https://github.com/acme/widget/actions/runs/6/attempts/1", func(*testing.T, *build.Outcome) {}, "invocation id"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f, err := kit.Build(t.TempDir(), verifytest.Hooks{Manifest: func(m *job.Manifest) { m.InvocationID = c.invoc }})
			if err != nil {
				t.Fatal(err)
			}
			res, err := job.ParseResult(mustParse(t, f.Statement).Result)
			if err != nil {
				t.Fatal(err)
			}
			w := *wc
			w.sha = res.SourceCommit
			in := &buildInputs{wc: &w, spec: job.Spec{Command: f.Manifest.Command, Repository: f.Manifest.Source.Repository, Ref: f.Manifest.Source.Ref}}
			stmtPath := filepath.Join(f.Dir, build.StatementName)
			if err := os.WriteFile(stmtPath, f.Statement, 0o644); err != nil {
				t.Fatal(err)
			}
			os.Remove(f.BundlePath)
			// The SHA256SUMS subject, as FetchResult leaves it after checking it.
			sums := provenance.ChecksumsArtifact(res.Artifacts)
			if err := os.WriteFile(filepath.Join(f.Dir, provenance.ChecksumsName), provenance.Checksums(res.Artifacts), 0o644); err != nil {
				t.Fatal(err)
			}
			o := &build.Outcome{Artifacts: res.Artifacts, Checksums: sums, ArtifactDir: f.Dir, StatementPath: stmtPath}
			c.change(t, o)
			signer := &recordingSigner{}
			err = signOnClient(context.Background(), in, &agent.JobStatus{ID: "j1"}, o, signer)
			_, statErr := os.Stat(filepath.Join(f.Dir, build.BundleName))
			if c.want == "" {
				if err != nil || signer.signed != 1 || statErr != nil || o.BundlePath == "" {
					t.Fatalf("not signed: %v (signed %d, bundle %v)", err, signer.signed, statErr)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "not signing") {
				t.Fatalf("error %v, want one naming %q", err, c.want)
			}
			if signer.signed != 0 || !os.IsNotExist(statErr) {
				t.Errorf("signed %d statements, bundle %v", signer.signed, statErr)
			}
		})
	}
}

func mustParse(t *testing.T, stmt []byte) *provenance.Parsed {
	t.Helper()
	p, err := provenance.ParseStatement(stmt)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
