package provenance

import (
	"encoding/base64"
	"encoding/hex"
	"strings"

	"github.com/cloche-dev/cloche/job"
)

// GoModuleDependencyPrefix starts the name of each Go module dependency:
// "gomod:MODULE@VERSION". The modules are those the guest checked against go.sum before
// the build (job.Result.Modules): the guest's word, bound by REPORT_DATA, never the host's.
const GoModuleDependencyPrefix = "gomod:"

// GoModuleDependencyName is the resolvedDependencies name of a module.
func GoModuleDependencyName(m job.Module) string {
	return GoModuleDependencyPrefix + m.Path + "@" + m.Version
}

// expectedModuleDependency is a module's dependency as the result record states it: the
// zip's SHA-256 and its go.sum hash as in-toto's dirHash1 (the h1: hash in hex), the
// go.mod's hashes as annotations. A module of which only go.mod was needed has no digest.
func expectedModuleDependency(m job.Module) *Dependency {
	d := &Dependency{
		URI: "pkg:golang/" + m.Path + "@" + m.Version,
		Annotations: map[string]any{
			"goModH1":     m.ModH1,
			"goModSha256": m.ModSHA256,
		},
	}
	if m.ZipSHA256 != "" {
		d.Digest = map[string]string{"sha256": m.ZipSHA256, "dirHash1": h1Hex(m.ZipH1)}
		d.Annotations["h1"] = m.ZipH1
	}
	return d
}

// h1Hex is an h1: hash's SHA-256 in hex, the form in-toto's dirHash1 takes; "" for a
// malformed one (job.Result.Validate only checks the prefix).
func h1Hex(h1 string) string {
	b, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(h1, "h1:"))
	if err != nil || len(b) != 32 {
		return ""
	}
	return hex.EncodeToString(b)
}

// NPMPackageDependencyPrefix starts the name of each npm package dependency:
// "npm:NAME@VERSION". The packages are those the guest checked against package-lock.json
// before the build (job.Result.Packages).
const NPMPackageDependencyPrefix = "npm:"

// NPMPackageDependencyName is the resolvedDependencies name of an npm package.
func NPMPackageDependencyName(p job.Package) string {
	return NPMPackageDependencyPrefix + p.Name + "@" + p.Version
}

// expectedPackageDependency is an npm package's dependency as the result record states
// it: the resolved location the lockfile gives as its URI, the integrity the guest
// checked as a digest in hex (sha512, or the lockfile's strongest) and as the lockfile's
// Subresource Integrity string in an annotation.
func expectedPackageDependency(p job.Package) *Dependency {
	d := &Dependency{URI: p.Resolved, Digest: map[string]string{}, Annotations: map[string]any{"integrity": p.Integrity}}
	if algo, digest, err := job.ParseIntegrity(p.Integrity); err == nil {
		d.Digest[algo] = hex.EncodeToString(digest)
	}
	return d
}

// moduleDependencies are the dependencies of the result record's Go modules and npm
// packages, by name.
func moduleDependencies(r *job.Result) ([]string, map[string]*Dependency) {
	names := make([]string, 0, len(r.Modules)+len(r.Packages))
	deps := make(map[string]*Dependency, len(r.Modules)+len(r.Packages))
	for _, m := range r.Modules {
		name := GoModuleDependencyName(m)
		names = append(names, name)
		deps[name] = expectedModuleDependency(m)
	}
	for _, p := range r.Packages {
		name := NPMPackageDependencyName(p)
		names = append(names, name)
		deps[name] = expectedPackageDependency(p)
	}
	return names, deps
}

// modules checks the statement's module and package dependencies against the result
// record's, both ways: none missing, none added.
func (c *checker) modules(got map[string]*Dependency, r *job.Result) {
	names, want := moduleDependencies(r)
	for _, name := range names {
		c.dependency(name, got[name], want[name])
	}
	for _, name := range sortedKeys(got) {
		if want[name] != nil {
			continue
		}
		switch {
		case strings.HasPrefix(name, GoModuleDependencyPrefix):
			c.fail("resolvedDependencies["+name+"]", "result record", "a module", "no such module")
		case strings.HasPrefix(name, NPMPackageDependencyPrefix):
			c.fail("resolvedDependencies["+name+"]", "result record", "an npm package", "no such package")
		}
	}
}
