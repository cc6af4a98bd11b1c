package job

import (
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/source"
)

func validManifest() *Manifest {
	return &Manifest{
		Type: ManifestType, InvocationID: "local:1", TEE: "sim",
		Source:    Source{ArchiveSHA256: strings.Repeat("a", 64), ArchiveSize: 10240},
		Toolchain: Toolchain{ImageSHA256: strings.Repeat("b", 64), ImageSize: 3 * 4096, VerityRootHash: strings.Repeat("c", 64), VeritySalt: "0011", DataBlocks: 2, HashOffset: 8192},
		Command:   []string{"make", "<all>&"}, Workdir: ".", Env: map[string]string{"Z": "1", "A": "2"},
		Artifacts: []string{"out/*.bin"}, SourceDateEpoch: 1, TimeoutSeconds: 60, MaxOutputBytes: 1 << 20,
	}
}

func validResult() *Result {
	return &Result{Type: ResultType, ManifestSHA256: strings.Repeat("d", 64), SourceTree: strings.Repeat("e", 40),
		Artifacts: []Artifact{{Path: "out/a.bin", SHA256: strings.Repeat("f", 64), Size: 1}}, Log: Digest{SHA256: strings.Repeat("0", 64)}}
}

func TestMarshalIsCanonical(t *testing.T) {
	b, err := Marshal(validManifest())
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	if strings.HasSuffix(s, "\n") {
		t.Error("canonical encoding ends with a newline")
	}
	if !strings.Contains(s, `"<all>&"`) {
		t.Errorf("HTML characters were escaped: %s", s)
	}
	if strings.Index(s, `"A":"2"`) > strings.Index(s, `"Z":"1"`) {
		t.Errorf("env keys are not sorted: %s", s)
	}
	if !strings.HasPrefix(s, `{"_type":"`+ManifestType+`","invocationId"`) {
		t.Errorf("fields are not in declared order: %s", s)
	}
	again, _ := Marshal(validManifest())
	if string(again) != s {
		t.Error("two encodings of the same manifest differ")
	}
	m, err := ParseManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	round, _ := Marshal(m)
	if string(round) != s {
		t.Errorf("parse+marshal changed the bytes:\n%s\n%s", s, round)
	}
}

func TestDigests(t *testing.T) {
	b := []byte(`{"x":1}`)
	if ManifestDigest(b) != sha256.Sum256(b) || ReportData(b) != sha512.Sum512(b) {
		t.Fatal("ManifestDigest must be SHA-256 and ReportData SHA-512 of the exact bytes")
	}
}

func TestManifestValidation(t *testing.T) {
	if err := validManifest().Validate(); err != nil {
		t.Fatalf("valid manifest rejected: %v", err)
	}
	withImage := validManifest()
	withImage.Toolchain.SourceImage = "registry.example:5000/tools/gcc:14@sha256:" + strings.Repeat("a", 64)
	if err := withImage.Validate(); err != nil {
		t.Fatalf("manifest with a digest-pinned source image rejected: %v", err)
	}
	cases := map[string]func(*Manifest){
		"wrong type":          func(m *Manifest) { m.Type = "x" },
		"no invocation id":    func(m *Manifest) { m.InvocationID = "" },
		"unknown tee":         func(m *Manifest) { m.TEE = "sgx" },
		"archive digest":      func(m *Manifest) { m.Source.ArchiveSHA256 = "ABC" },
		"archive size":        func(m *Manifest) { m.Source.ArchiveSize = 0 },
		"image digest":        func(m *Manifest) { m.Toolchain.ImageSHA256 = "" },
		"root hash":           func(m *Manifest) { m.Toolchain.VerityRootHash = strings.Repeat("C", 64) },
		"salt odd":            func(m *Manifest) { m.Toolchain.VeritySalt = "abc" },
		"hash offset":         func(m *Manifest) { m.Toolchain.HashOffset = 4096 },
		"image too small":     func(m *Manifest) { m.Toolchain.ImageSize = 8192 },
		"source image by tag": func(m *Manifest) { m.Toolchain.SourceImage = "registry.example/debian:12" },
		"source image short digest": func(m *Manifest) {
			m.Toolchain.SourceImage = "registry.example/debian@sha256:abc"
		},
		"no command":           func(m *Manifest) { m.Command = nil },
		"empty program":        func(m *Manifest) { m.Command = []string{""} },
		"NUL in argument":      func(m *Manifest) { m.Command = []string{"make", "a\x00b"} },
		"bad env name":         func(m *Manifest) { m.Env = map[string]string{"1X": "y"} },
		"nil artifacts":        func(m *Manifest) { m.Artifacts = nil },
		"absolute pattern":     func(m *Manifest) { m.Artifacts = []string{"/etc/passwd"} },
		"dotdot pattern":       func(m *Manifest) { m.Artifacts = []string{"../x"} },
		"unclean pattern":      func(m *Manifest) { m.Artifacts = []string{"a//b"} },
		"malformed pattern":    func(m *Manifest) { m.Artifacts = []string{"a["} },
		"workdir escapes":      func(m *Manifest) { m.Workdir = "../src" },
		"no timeout":           func(m *Manifest) { m.TimeoutSeconds = 0 },
		"no output cap":        func(m *Manifest) { m.MaxOutputBytes = 0 },
		"negative date epoch":  func(m *Manifest) { m.SourceDateEpoch = -1 },
		"rlimit processes":     func(m *Manifest) { m.Rlimits.Processes = MaxRlimitProcesses + 1 },
		"rlimit open files":    func(m *Manifest) { m.Rlimits.OpenFiles = MaxRlimitOpenFiles + 1 },
		"rlimit few files":     func(m *Manifest) { m.Rlimits.OpenFiles = 3 },
		"too many env entries": func(m *Manifest) { m.Env = bigEnv() },
		"object format":        func(m *Manifest) { m.Source.ObjectFormat = "md5" },
		"oversized commit":     func(m *Manifest) { m.Source.CommitObject = make([]byte, source.MaxObjectSize+1) },
		"tag without commit":   func(m *Manifest) { m.Source.TagObject = []byte("object x") },
		"path without commit":  func(m *Manifest) { m.Source.Path = "sub" },
		"unclean path": func(m *Manifest) {
			m.Source.CommitObject, m.Source.Path = []byte("tree x"), "sub/../x"
		},
		"too many trees": func(m *Manifest) {
			m.Source.CommitObject, m.Source.TreeObjects = []byte("tree x"), make([][]byte, source.MaxTreePath+1)
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			m := validManifest()
			mutate(m)
			if err := m.Validate(); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate = %v, want ErrInvalid", err)
			}
		})
	}
	empty := validManifest()
	empty.Artifacts = []string{}
	if err := empty.Validate(); err != nil {
		t.Errorf("an empty artifact list (every changed file) was rejected: %v", err)
	}
	limited := validManifest()
	limited.Rlimits = Rlimits{Processes: 64, OpenFiles: 16, FileSizeBytes: 1}
	if err := limited.Validate(); err != nil {
		t.Errorf("limits within bounds were rejected: %v", err)
	}
}

// A manifest without limits marshals without the field (old manifests keep their digest)
// and runs under the defaults.
func TestRlimitsDefaults(t *testing.T) {
	b, err := Marshal(validManifest())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "rlimits") {
		t.Errorf("a manifest with no limits names them: %s", b)
	}
	if got := (Rlimits{OpenFiles: 100}).Effective(); got.Processes != DefaultRlimits().Processes || got.OpenFiles != 100 || got.FileSizeBytes != 0 {
		t.Errorf("Effective = %+v", got)
	}
}

func bigEnv() map[string]string {
	m := map[string]string{}
	for i := 0; i <= MaxEnvEntries; i++ {
		m["V"+strings.Repeat("x", i)] = "1"
	}
	return m
}

func TestParseManifestStrict(t *testing.T) {
	b, _ := Marshal(validManifest())
	for name, in := range map[string]string{
		"unknown field": strings.Replace(string(b), `{"_type"`, `{"extra":1,"_type"`, 1),
		"trailing data": string(b) + `{}`,
		"not json":      "nope",
		"oversized":     `{"_type":"` + strings.Repeat("a", MaxManifestSize) + `"}`,
		"duplicate key": strings.Replace(string(b), `"tee":"sim"`, `"tee":"snp","tee":"sim"`, 1),
		"case-variant":  strings.Replace(string(b), `"workdir"`, `"Workdir"`, 1),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseManifest([]byte(in)); !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseManifest = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestResultValidation(t *testing.T) {
	if err := validResult().Validate(); err != nil {
		t.Fatalf("valid result rejected: %v", err)
	}
	cases := map[string]func(*Result){
		"wrong type":         func(r *Result) { r.Type = ManifestType },
		"manifest digest":    func(r *Result) { r.ManifestSHA256 = "x" },
		"tree id":            func(r *Result) { r.SourceTree = "abc" },
		"artifact escapes":   func(r *Result) { r.Artifacts[0].Path = "../x" },
		"artifact digest":    func(r *Result) { r.Artifacts[0].SHA256 = "" },
		"negative size":      func(r *Result) { r.Artifacts[0].Size = -1 },
		"duplicate artifact": func(r *Result) { r.Artifacts = append(r.Artifacts, r.Artifacts[0]) },
		"log digest":         func(r *Result) { r.Log.SHA256 = "zz" },
		"commit length":      func(r *Result) { r.SourceCommit = strings.Repeat("a", 64) },
		"commit not hex":     func(r *Result) { r.SourceCommit = strings.Repeat("A", 40) },
		"tag without commit": func(r *Result) { r.SourceTag, r.SourceTagObject = "v1", strings.Repeat("a", 40) },
		"tag without object": func(r *Result) { r.SourceCommit, r.SourceTag = strings.Repeat("a", 40), "v1" },
		"tag object only":    func(r *Result) { r.SourceCommit, r.SourceTagObject = strings.Repeat("a", 40), strings.Repeat("b", 40) },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			r := validResult()
			mutate(r)
			if err := r.Validate(); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate = %v, want ErrInvalid", err)
			}
		})
	}
	sha256Tag := validResult()
	sha256Tag.SourceTree, sha256Tag.SourceCommit = strings.Repeat("e", 64), strings.Repeat("a", 64)
	sha256Tag.SourceTag, sha256Tag.SourceTagObject = "v1", strings.Repeat("b", 64)
	if err := sha256Tag.Validate(); err != nil {
		t.Errorf("a sha256 commit and tag were rejected: %v", err)
	}
	b, _ := Marshal(validResult())
	if _, err := ParseResult(append(b, 'x')); !errors.Is(err, ErrInvalid) {
		t.Errorf("trailing data accepted: %v", err)
	}
	for name, in := range map[string]string{
		"duplicate key": strings.Replace(string(b), `"exitCode":0`, `"exitCode":1,"exitCode":0`, 1),
		"case-variant":  strings.Replace(string(b), `"exitCode"`, `"ExitCode"`, 1),
		"unknown key":   strings.Replace(string(b), `"exitCode"`, `"extra":1,"exitCode"`, 1),
	} {
		if _, err := ParseResult([]byte(in)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s accepted: %v", name, err)
		}
	}
}

func TestManifestDepsAndResultModulesValidated(t *testing.T) {
	good := Deps{Kind: DepsGo, Lockfile: "app/go.sum", ArchiveSHA256: strings.Repeat("a", 64), ArchiveSize: 1}
	for name, d := range map[string]Deps{
		"kind":       {Kind: "cargo", Lockfile: "go.sum", ArchiveSHA256: good.ArchiveSHA256, ArchiveSize: 1},
		"npm go.sum": {Kind: DepsNPM, Lockfile: "go.sum", ArchiveSHA256: good.ArchiveSHA256, ArchiveSize: 1},
		"go npm":     {Kind: DepsGo, Lockfile: "package-lock.json", ArchiveSHA256: good.ArchiveSHA256, ArchiveSize: 1},
		"lockfile":   {Kind: DepsGo, Lockfile: "../go.sum", ArchiveSHA256: good.ArchiveSHA256, ArchiveSize: 1},
		"not go.sum": {Kind: DepsGo, Lockfile: "go.mod", ArchiveSHA256: good.ArchiveSHA256, ArchiveSize: 1},
		"digest":     {Kind: DepsGo, Lockfile: "go.sum", ArchiveSHA256: "x", ArchiveSize: 1},
		"size":       {Kind: DepsGo, Lockfile: "go.sum", ArchiveSHA256: good.ArchiveSHA256},
	} {
		if err := d.validate(); err == nil {
			t.Errorf("%s: deps %+v accepted", name, d)
		}
	}
	if err := good.validate(); err != nil {
		t.Errorf("good deps refused: %v", err)
	}
	npm := Deps{Kind: DepsNPM, Lockfile: "app/package-lock.json", ArchiveSHA256: good.ArchiveSHA256, ArchiveSize: 1}
	if err := npm.validate(); err != nil {
		t.Errorf("good npm deps refused: %v", err)
	}
	mod := func(p, v string) Module {
		return Module{Path: p, Version: v, ModSHA256: strings.Repeat("b", 64), ModH1: "h1:x"}
	}
	if err := validateModules([]Module{mod("a.com/"+strings.Repeat("x", maxModulePart-6), "v1.0.0"), mod("b.com/y", "v1.0.0")}); err != nil {
		t.Errorf("sorted modules refused: %v", err)
	}
	for name, mods := range map[string][]Module{
		"unsorted":  {mod("b.com/y", "v1.0.0"), mod("a.com/x", "v1.0.0")},
		"repeated":  {mod("a.com/x", "v1.0.0"), mod("a.com/x", "v1.0.0")},
		"space":     {mod("a.com/x y", "v1.0.0")},
		"long path": {mod("a.com/"+strings.Repeat("x", maxModulePart-5), "v1.0.0")},
		"zip half":  {{Path: "a.com/x", Version: "v1", ModSHA256: strings.Repeat("b", 64), ModH1: "h1:x", ZipH1: "h1:y"}},
	} {
		if err := validateModules(mods); err == nil {
			t.Errorf("%s: modules accepted", name)
		}
	}
}

// With a dependency disk, the lockfile is the workdir's go.sum and the env may not change
// where go takes modules from.
func TestManifestDepsBindTheLockfileAndGoSettings(t *testing.T) {
	d := &Deps{Kind: DepsGo, Lockfile: "app/go.sum", ArchiveSHA256: strings.Repeat("a", 64), ArchiveSize: 1}
	if err := d.checkAgainst(&Manifest{Workdir: "app"}); err != nil {
		t.Fatalf("the workdir's go.sum refused: %v", err)
	}
	if err := d.checkAgainst(&Manifest{Workdir: "."}); err == nil || !strings.Contains(err.Error(), `expected "go.sum"`) {
		t.Errorf("another directory's go.sum: %v", err)
	}
	for _, k := range []string{"GOPROXY", "GOFLAGS", "GONOSUMDB", "GOENV", "GOWORK"} {
		err := d.checkAgainst(&Manifest{Workdir: "app", Env: map[string]string{k: "x"}})
		if err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("env %s with a dependency disk: %v", k, err)
		}
	}
	if err := d.checkAgainst(&Manifest{Workdir: "app", Env: map[string]string{"GOARCH": "amd64", "CGO_ENABLED": "0"}}); err != nil {
		t.Errorf("a build's own go variables refused: %v", err)
	}
}

// With an npm dependency disk, the lockfile is the workdir's package-lock.json and the env
// may set no npm configuration, in any case.
func TestManifestNPMDepsBindTheLockfileAndNPMSettings(t *testing.T) {
	d := &Deps{Kind: DepsNPM, Lockfile: "app/package-lock.json", ArchiveSHA256: strings.Repeat("a", 64), ArchiveSize: 1}
	if err := d.checkAgainst(&Manifest{Workdir: "app"}); err != nil {
		t.Fatalf("the workdir's package-lock.json refused: %v", err)
	}
	if err := d.checkAgainst(&Manifest{Workdir: "."}); err == nil || !strings.Contains(err.Error(), `expected "package-lock.json"`) {
		t.Errorf("another directory's lockfile: %v", err)
	}
	for _, k := range []string{"npm_config_cache", "NPM_CONFIG_OFFLINE", "Npm_Config_Registry"} {
		err := d.checkAgainst(&Manifest{Workdir: "app", Env: map[string]string{k: "x"}})
		if err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("env %s with an npm dependency disk: %v", k, err)
		}
	}
	if err := d.checkAgainst(&Manifest{Workdir: "app", Env: map[string]string{"NODE_ENV": "production", "GOPROXY": "off"}}); err != nil {
		t.Errorf("a build's own variables refused: %v", err)
	}
}

func TestResultPackagesValidated(t *testing.T) {
	sha512 := "sha512-" + strings.Repeat("A", 86) + "=="
	pkg := func(n, v string) Package { return Package{Name: n, Version: v, Integrity: sha512} }
	good := []Package{pkg("@scope/a", "1.0.0"), pkg("is-number", "7.0.0"), pkg("is-number", "7.0.1")}
	good[1].Resolved = "https://example.invalid/is-number/-/is-number-7.0.0.tgz"
	if err := validatePackages(good); err != nil {
		t.Errorf("sorted packages refused: %v", err)
	}
	if err := validatePackages([]Package{{Name: "a", Version: "1.0.0", Integrity: "sha1-" + strings.Repeat("A", 27) + "="}}); err != nil {
		t.Errorf("a sha1 integrity refused: %v", err)
	}
	for name, pkgs := range map[string][]Package{
		"unsorted":  {pkg("b", "1.0.0"), pkg("a", "1.0.0")},
		"repeated":  {pkg("a", "1.0.0"), pkg("a", "1.0.0")},
		"name":      {pkg("a b", "1.0.0")},
		"version":   {pkg("a", "1.0.0 x")},
		"algorithm": {{Name: "a", Version: "1", Integrity: "md5-" + strings.Repeat("A", 22) + "=="}},
		"length":    {{Name: "a", Version: "1", Integrity: "sha512-" + strings.Repeat("A", 43) + "="}},
		"base64":    {{Name: "a", Version: "1", Integrity: "sha512-!"}},
		"resolved":  {{Name: "a", Version: "1", Integrity: sha512, Resolved: "https://x/a b"}},
	} {
		if err := validatePackages(pkgs); err == nil {
			t.Errorf("%s: packages accepted", name)
		}
	}
}
