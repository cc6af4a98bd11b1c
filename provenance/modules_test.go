package provenance

import (
	"errors"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/job"
)

// withModules gives the fixture a dependency disk and two checked modules, one of them
// needed for its go.mod only.
func withModules(t *testing.T, f *fixture) {
	t.Helper()
	f.m.Deps = &job.Deps{Kind: job.DepsGo, Lockfile: "go.sum", ArchiveSHA256: strings.Repeat("cd", 32), ArchiveSize: 10240}
	manifest, err := job.Marshal(f.m)
	if err != nil {
		t.Fatal(err)
	}
	f.r.ManifestSHA256 = sha256Hex(manifest)
	f.r.Modules = []job.Module{
		{Path: "github.com/google/uuid", Version: "v1.6.0", ZipSHA256: strings.Repeat("01", 32),
			ZipH1: "h1:NIvaJDMOsjHA8n1jAhLSgzrAzy1Hgr+hNrb57e+94F0=", ModSHA256: strings.Repeat("02", 32), ModH1: "h1:TIyPZe4MgqvfeYDBFedMoGGpEw/LqOeaOT+nhxU+yHo="},
		{Path: "golang.org/x/sys", Version: "v0.49.0", ModSHA256: strings.Repeat("03", 32), ModH1: "h1:TIyPZe4MgqvfeYDBFedMoGGpEw/LqOeaOT+nhxU+yHo="},
	}
	result, err := job.Marshal(f.r)
	if err != nil {
		t.Fatal(err)
	}
	if f.m, err = job.ParseManifest(manifest); err != nil {
		t.Fatal(err)
	}
	if f.r, err = job.ParseResult(result); err != nil {
		t.Fatal(err)
	}
	f.manifest, f.result, f.in.Manifest, f.in.Result = manifest, result, manifest, result
}

func TestModulesInResolvedDependencies(t *testing.T) {
	f := newFixture(t)
	withModules(t, f)
	p, err := ParseStatement(f.statement(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CheckAgainstManifest(f.m, f.r); err != nil {
		t.Fatalf("CheckAgainstManifest: %v", err)
	}
	uuid := p.Dependencies["gomod:github.com/google/uuid@v1.6.0"]
	if uuid == nil || uuid.URI != "pkg:golang/github.com/google/uuid@v1.6.0" ||
		uuid.Digest["sha256"] != strings.Repeat("01", 32) ||
		uuid.Digest["dirHash1"] != "348bda24330eb231c0f27d630212d2833ac0cf2d4782bfa136b6f9edefbde05d" {
		t.Errorf("uuid dependency = %+v", uuid)
	}
	if sys := p.Dependencies["gomod:golang.org/x/sys@v0.49.0"]; sys == nil || len(sys.Digest) != 0 || sys.Annotations["goModSha256"] != strings.Repeat("03", 32) {
		t.Errorf("go.mod-only dependency = %+v", sys)
	}
	if p.External.Deps == nil || p.External.Deps.ArchiveSHA256 != f.m.Deps.ArchiveSHA256 {
		t.Errorf("externalParameters.deps = %+v", p.External.Deps)
	}
}

func TestModuleDependencyMismatch(t *testing.T) {
	f := newFixture(t)
	withModules(t, f)
	stmt := f.statement(t)
	const uuid = "gomod:github.com/google/uuid@v1.6.0"
	for _, c := range []struct {
		name, field string
		edit        func(st map[string]any)
	}{
		{"zip digest", "resolvedDependencies[" + uuid + "].digest.sha256", func(st map[string]any) {
			obj(named(arr(buildDef(st), "resolvedDependencies"), uuid), "digest")["sha256"] = strings.Repeat("ff", 32)
		}},
		{"module left out", "resolvedDependencies[" + uuid + "]", func(st map[string]any) {
			deps := arr(buildDef(st), "resolvedDependencies")
			var kept []any
			for _, d := range deps {
				if d.(map[string]any)["name"] != uuid {
					kept = append(kept, d)
				}
			}
			buildDef(st)["resolvedDependencies"] = kept
		}},
		{"module added", "resolvedDependencies[gomod:example.com/evil@v1.0.0]", func(st map[string]any) {
			bd := buildDef(st)
			bd["resolvedDependencies"] = append(arr(bd, "resolvedDependencies"), map[string]any{"name": "gomod:example.com/evil@v1.0.0", "uri": "pkg:golang/example.com/evil@v1.0.0"})
		}},
		{"deps archive", "externalParameters.deps", func(st map[string]any) {
			obj(external(st), "deps")["archiveSha256"] = strings.Repeat("ee", 32)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := ParseStatement(mutate(t, stmt, c.edit))
			if err != nil {
				t.Fatal(err)
			}
			err = p.CheckAgainstManifest(f.m, f.r)
			if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), c.field+":") {
				t.Fatalf("CheckAgainstManifest = %v, want ErrMismatch naming %s", err, c.field)
			}
		})
	}
}
