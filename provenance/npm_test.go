package provenance

import (
	"errors"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/job"
)

const msIntegrity = "sha512-6FlzubTLZG3J2a/NVCAleEhjzq5oxgHyaCU9yYXvcLsvoVaHJq/s5xXI6/XXP6tz7R9xAOtHnSO/tXtF3WRTlA=="

// withPackages gives the fixture an npm dependency disk and two checked packages, one of
// them with only a sha1 integrity and no resolved location.
func withPackages(t *testing.T, f *fixture) {
	t.Helper()
	f.m.Deps = &job.Deps{Kind: job.DepsNPM, Lockfile: "package-lock.json", ArchiveSHA256: strings.Repeat("cd", 32), ArchiveSize: 10240}
	manifest, err := job.Marshal(f.m)
	if err != nil {
		t.Fatal(err)
	}
	f.r.ManifestSHA256 = sha256Hex(manifest)
	f.r.Packages = []job.Package{
		{Name: "@scope/old", Version: "0.1.0", Integrity: "sha1-" + strings.Repeat("A", 27) + "="},
		{Name: "ms", Version: "2.1.3", Integrity: msIntegrity, Resolved: "https://example.invalid/ms/-/ms-2.1.3.tgz"},
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

func TestNPMPackagesInResolvedDependencies(t *testing.T) {
	f := newFixture(t)
	withPackages(t, f)
	p, err := ParseStatement(f.statement(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CheckAgainstManifest(f.m, f.r); err != nil {
		t.Fatalf("CheckAgainstManifest: %v", err)
	}
	ms := p.Dependencies["npm:ms@2.1.3"]
	if ms == nil || ms.URI != "https://example.invalid/ms/-/ms-2.1.3.tgz" || len(ms.Digest) != 1 ||
		ms.Digest["sha512"] != "e85973b9b4cb646dc9d9afcd542025784863ceae68c601f268253dc985ef70bb2fa1568726afece715c8ebf5d73fab73ed1f7100eb479d23bfb57b45dd645394" ||
		ms.Annotations["integrity"] != msIntegrity {
		t.Errorf("ms dependency = %+v", ms)
	}
	if old := p.Dependencies["npm:@scope/old@0.1.0"]; old == nil || old.URI != "" || old.Digest["sha1"] != strings.Repeat("0", 40) {
		t.Errorf("sha1-only dependency = %+v", old)
	}
}

func TestNPMPackageDependencyMismatch(t *testing.T) {
	f := newFixture(t)
	withPackages(t, f)
	stmt := f.statement(t)
	const ms = "npm:ms@2.1.3"
	for _, c := range []struct {
		name, field string
		edit        func(st map[string]any)
	}{
		{"digest", "resolvedDependencies[" + ms + "].digest.sha512", func(st map[string]any) {
			obj(named(arr(buildDef(st), "resolvedDependencies"), ms), "digest")["sha512"] = strings.Repeat("ff", 64)
		}},
		{"resolved", "resolvedDependencies[" + ms + "].uri", func(st map[string]any) {
			named(arr(buildDef(st), "resolvedDependencies"), ms)["uri"] = "https://example.invalid/evil.tgz"
		}},
		{"left out", "resolvedDependencies[" + ms + "]", func(st map[string]any) {
			var kept []any
			for _, d := range arr(buildDef(st), "resolvedDependencies") {
				if d.(map[string]any)["name"] != ms {
					kept = append(kept, d)
				}
			}
			buildDef(st)["resolvedDependencies"] = kept
		}},
		{"added", "resolvedDependencies[npm:evil@1.0.0]", func(st map[string]any) {
			bd := buildDef(st)
			bd["resolvedDependencies"] = append(arr(bd, "resolvedDependencies"), map[string]any{"name": "npm:evil@1.0.0", "uri": "https://example.invalid/evil.tgz"})
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
