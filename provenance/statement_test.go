package provenance

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	provv1 "github.com/in-toto/attestation/go/predicates/provenance/v1"
	intoto "github.com/in-toto/attestation/go/v1"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/cloche-dev/cloche/job"
)

func TestStatementRoundTrip(t *testing.T) {
	f := newFixture(t)
	stmt := f.statement(t)

	p, err := ParseStatement(stmt)
	if err != nil {
		t.Fatalf("ParseStatement: %v", err)
	}
	if err := p.CheckAgainstManifest(f.m, f.r); err != nil {
		t.Fatalf("CheckAgainstManifest: %v", err)
	}

	wantSubjects := map[string]string{}
	for _, a := range f.r.Artifacts {
		wantSubjects[a.Path] = a.SHA256
	}
	sums := sha256.Sum256(Checksums(f.r.Artifacts))
	wantSubjects[ChecksumsName] = hex.EncodeToString(sums[:])
	if !reflect.DeepEqual(p.Subjects, wantSubjects) {
		t.Errorf("subjects = %v, want %v", p.Subjects, wantSubjects)
	}
	if want := "https://cloche.dev/builders/sim@v0.1.0"; p.BuilderID != want {
		t.Errorf("builder id = %q, want %q", p.BuilderID, want)
	}
	if p.BuilderVersion != "0.1.0" {
		t.Errorf("builder version = %q", p.BuilderVersion)
	}
	wantExt := ExternalParameters{
		Command:   f.m.Command,
		Workdir:   ".",
		Env:       f.m.Env,
		Artifacts: f.m.Artifacts,
		Source: SourceParameters{Repository: f.m.Source.Repository, Ref: f.m.Source.Ref,
			Commit: f.r.SourceCommit, Tag: "v1.0.0", Tree: f.r.SourceTree},
		Toolchain: ToolchainParameters{Name: f.m.Toolchain.Name, ImageSHA256: f.m.Toolchain.ImageSHA256,
			VerityRootHash: f.m.Toolchain.VerityRootHash},
		TEE:             "sim",
		SourceDateEpoch: 1700000000,
		TimeoutSeconds:  600,
		Rlimits:         job.DefaultRlimits(),
	}
	if !reflect.DeepEqual(p.External, wantExt) {
		t.Errorf("externalParameters = %+v,\nwant %+v", p.External, wantExt)
	}
	if p.MaxOutputBytes != f.m.MaxOutputBytes {
		t.Errorf("maxOutputBytes = %d, want %d", p.MaxOutputBytes, f.m.MaxOutputBytes)
	}
	if p.Guest != f.in.Guest {
		t.Errorf("guest = %+v, want %+v", p.Guest, f.in.Guest)
	}
	src := p.Dependencies[SourceDependency]
	if want := "git+https://github.com/cloche-dev/hello@refs/tags/v1.0.0"; src.URI != want {
		t.Errorf("source uri = %q, want %q", src.URI, want)
	}
	wantDigest := map[string]string{"gitCommit": f.r.SourceCommit, "gitTree": f.r.SourceTree, "sha256": f.m.Source.ArchiveSHA256}
	if !reflect.DeepEqual(src.Digest, wantDigest) {
		t.Errorf("source digest = %v, want %v", src.Digest, wantDigest)
	}
	tc := p.Dependencies[ToolchainDependency]
	if len(tc.Digest) != 0 || tc.Annotations["imageSha256"] != f.m.Toolchain.ImageSHA256 || tc.URI != ToolchainURI(f.m.Toolchain.Name) ||
		tc.Annotations["veritySalt"] != f.m.Toolchain.VeritySalt ||
		tc.Annotations["hashOffset"] != float64(f.m.Toolchain.HashOffset) {
		t.Errorf("toolchain dependency = %+v", tc)
	}
	if p.InvocationID != f.m.InvocationID {
		t.Errorf("invocationId = %q", p.InvocationID)
	}
	if !p.StartedOn.Equal(f.in.StartedOn) || !p.FinishedOn.Equal(f.in.FinishedOn) {
		t.Errorf("times = %v..%v, want %v..%v", p.StartedOn, p.FinishedOn, f.in.StartedOn, f.in.FinishedOn)
	}
	for name, pair := range map[string][2][]byte{
		ManifestByproduct: {p.Manifest, f.manifest},
		ResultByproduct:   {p.Result, f.result},
		EvidenceByproduct: {p.Evidence, f.evidence},
	} {
		if !bytes.Equal(pair[0], pair[1]) {
			t.Errorf("byproduct %s differs from the input bytes", name)
		}
	}
	// The byproducts carry the digests the hardware binds.
	if job.ManifestDigest(p.Manifest) != job.ManifestDigest(f.manifest) || job.ReportData(p.Result) != job.ReportData(f.result) {
		t.Error("byproduct digests differ")
	}
}

// The statement must be a valid in-toto v1 statement with a valid SLSA v1 predicate by the
// bindings' own validators, decoded strictly.
func TestStatementValidatesAsInToto(t *testing.T) {
	stmt := newFixture(t).statement(t)
	var st intoto.Statement
	if err := protojson.Unmarshal(stmt, &st); err != nil {
		t.Fatalf("protojson statement: %v", err)
	}
	if err := st.Validate(); err != nil {
		t.Fatalf("in-toto Validate: %v", err)
	}
	if st.GetType() != intoto.StatementTypeUri || st.GetPredicateType() != PredicateType {
		t.Fatalf("type %q predicateType %q", st.GetType(), st.GetPredicateType())
	}
	predJSON, err := protojson.Marshal(st.GetPredicate())
	if err != nil {
		t.Fatal(err)
	}
	var p provv1.Provenance
	if err := protojson.Unmarshal(predJSON, &p); err != nil {
		t.Fatalf("strict SLSA decode: %v", err)
	}
	if err := p.Validate(); err != nil {
		t.Fatalf("SLSA Validate: %v", err)
	}
	// Field names are the JSON names of the specs.
	for _, key := range []string{`"_type":`, `"predicateType":`, `"buildDefinition":`, `"externalParameters":`,
		`"resolvedDependencies":`, `"runDetails":`, `"byproducts":`, `"invocationId":`, `"mediaType":`} {
		if !bytes.Contains(stmt, []byte(key)) {
			t.Errorf("statement lacks %s", key)
		}
	}
	if bytes.ContainsAny(stmt, "\n") {
		t.Error("statement is not on one line")
	}
}

func TestStatementIsDeterministic(t *testing.T) {
	f := newFixture(t)
	a, b := f.statement(t), f.statement(t)
	if !bytes.Equal(a, b) {
		t.Fatal("two statements from the same input differ")
	}
	if !json.Valid(a) {
		t.Fatal("statement is not JSON")
	}
}

func TestBuilderID(t *testing.T) {
	for _, c := range []struct{ tee, version, want string }{
		{"sim", "0.1.0", "https://cloche.dev/builders/sim@v0.1.0"},
		{"snp", "v1.2.3", "https://cloche.dev/builders/snp@v1.2.3"},
		{"tdx", "2.0.0-rc.1", "https://cloche.dev/builders/tdx@v2.0.0-rc.1"},
	} {
		if got := BuilderID(c.tee, c.version); got != c.want {
			t.Errorf("BuilderID(%q, %q) = %q, want %q", c.tee, c.version, got, c.want)
		}
	}
}

func TestNewStatementRejectsBadInput(t *testing.T) {
	for _, c := range []struct {
		name string
		edit func(t *testing.T, f *fixture)
		want string
	}{
		{"result of another manifest", func(t *testing.T, f *fixture) {
			m := *f.m
			m.InvocationID = "another run"
			b, err := job.Marshal(&m)
			if err != nil {
				t.Fatal(err)
			}
			f.in.Manifest = b
		}, "manifestSha256"},
		{"failed build", func(t *testing.T, f *fixture) {
			r := *f.r
			r.ExitCode = 2
			f.in.Result = mustMarshal(t, &r)
		}, "failed build"},
		{"build error", func(t *testing.T, f *fixture) {
			r := *f.r
			r.ExitCode, r.Error = -1, "timeout after 600s"
			f.in.Result = mustMarshal(t, &r)
		}, "failed build"},
		{"no artifacts", func(t *testing.T, f *fixture) {
			r := *f.r
			r.Artifacts = nil
			f.in.Result = mustMarshal(t, &r)
		}, "no artifacts"},
		{"manifest not JSON", func(t *testing.T, f *fixture) { f.in.Manifest = []byte("{") }, "manifest"},
		{"result unknown field", func(t *testing.T, f *fixture) {
			f.in.Result = append(bytes.TrimSuffix(f.in.Result, []byte("}")), []byte(`,"extra":1}`)...)
		}, `unknown key "extra"`},
		{"evidence not JSON", func(t *testing.T, f *fixture) { f.in.Evidence = []byte("report") }, "evidence"},
		{"evidence missing", func(t *testing.T, f *fixture) { f.in.Evidence = nil }, "evidence"},
		{"short measurement", func(t *testing.T, f *fixture) { f.in.Guest.Measurement = f.in.Guest.Measurement[:64] }, "measurement"},
		{"uppercase kernel digest", func(t *testing.T, f *fixture) {
			f.in.Guest.KernelSHA256 = strings.ToUpper(f.in.Guest.KernelSHA256)
		}, "kernelSha256"},
		{"no vcpus", func(t *testing.T, f *fixture) { f.in.Guest.VCPUs = 0 }, "vcpus"},
		{"release without repository", func(t *testing.T, f *fixture) { f.in.Guest.Release = "v1.0.0" }, "both or neither"},
		{"release not a tag", func(t *testing.T, f *fixture) { f.in.Guest.Release, f.in.Guest.Repository = "main", "acme/cloche" }, "vX.Y.Z"},
		{"empty version", func(t *testing.T, f *fixture) { f.in.BuilderVersion = "" }, "builder version"},
		{"version with slash", func(t *testing.T, f *fixture) { f.in.BuilderVersion = "1.0/evil" }, "builder version"},
		{"finished before started", func(t *testing.T, f *fixture) {
			f.in.FinishedOn = f.in.StartedOn.Add(-1)
		}, "finishedOn"},
		{"number beyond float precision", func(t *testing.T, f *fixture) {
			m := *f.m
			m.MaxOutputBytes = 1<<53 + 1
			f.in.Manifest = mustMarshal(t, &m)
			r := *f.r
			r.ManifestSHA256 = sha256Hex(f.in.Manifest)
			f.in.Result = mustMarshal(t, &r)
		}, "maxOutputBytes"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			c.edit(t, f)
			_, err := NewStatement(f.in)
			if err == nil {
				t.Fatal("NewStatement accepted bad input")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := job.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseStatementRejects(t *testing.T) {
	f := newFixture(t)
	stmt := f.statement(t)
	for _, c := range []struct {
		name string
		edit func(st map[string]any)
		want string
	}{
		{"statement type v0.1", func(st map[string]any) { st["_type"] = "https://in-toto.io/Statement/v0.1" }, "_type"},
		{"predicate type v0.2", func(st map[string]any) { st["predicateType"] = "https://slsa.dev/provenance/v0.2" }, "predicateType"},
		{"build type", func(st map[string]any) {
			buildDef(st)["buildType"] = "https://actions.github.io/buildtypes/workflow/v1"
		}, "buildType"},
		{"unknown predicate field", func(st map[string]any) { pred(st)["extra"] = "x" }, "extra"},
		{"unknown buildDefinition field", func(st map[string]any) { buildDef(st)["cloche_note"] = "x" }, "cloche_note"},
		{"unknown runDetails field", func(st map[string]any) { runDetails(st)["notes"] = []any{} }, "notes"},
		{"unknown metadata field", func(st map[string]any) { obj(runDetails(st), "metadata")["host"] = "x" }, "host"},
		{"unknown statement field", func(st map[string]any) { st["signature"] = "x" }, "signature"},
		{"unknown external parameter", func(st map[string]any) { external(st)["network"] = true }, "network"},
		{"external parameter of wrong type", func(st map[string]any) { external(st)["command"] = "make hello" }, "command"},
		// encoding/json folds "ſource" (U+017F) and "Source" onto "source": a second copy
		// under such a key would be what the verifier reads, while jq or a policy engine
		// reads the first.
		{"external parameter under a folded key", func(st map[string]any) {
			external(st)["\u017fource"] = external(st)["source"]
		}, "\u017fource"},
		{"external parameter in another case", func(st map[string]any) {
			external(st)["SourceDateEpoch"] = 1
		}, "SourceDateEpoch"},
		{"unknown internal parameter", func(st map[string]any) { obj(buildDef(st), "internalParameters")["debug"] = true }, "debug"},
		{"internal parameters missing", func(st map[string]any) { delete(buildDef(st), "internalParameters") }, "internalParameters"},
		{"no subjects", func(st map[string]any) { st["subject"] = []any{} }, "subject"},
		{"subject twice", func(st map[string]any) {
			st["subject"] = append(arr(st, "subject"), arr(st, "subject")[0])
		}, "appears twice"},
		{"subject with sha512", func(st map[string]any) {
			arr(st, "subject")[0].(map[string]any)["digest"] = map[string]any{"sha512": strings.Repeat("ab", 64)}
		}, "digest"},
		{"subject with short digest", func(st map[string]any) {
			arr(st, "subject")[0].(map[string]any)["digest"] = map[string]any{"sha256": "abcd"}
		}, "digest"},
		{"missing manifest byproduct", func(st map[string]any) {
			rd := runDetails(st)
			var kept []any
			for _, b := range arr(rd, "byproducts") {
				if b.(map[string]any)["name"] != ManifestByproduct {
					kept = append(kept, b)
				}
			}
			rd["byproducts"] = kept
		}, `byproduct "manifest.json" is missing`},
		{"duplicated evidence byproduct", func(st map[string]any) {
			rd := runDetails(st)
			rd["byproducts"] = append(arr(rd, "byproducts"), named(arr(rd, "byproducts"), EvidenceByproduct))
		}, `byproduct "evidence.json" appears twice`},
		{"unknown byproduct", func(st map[string]any) {
			rd := runDetails(st)
			rd["byproducts"] = append(arr(rd, "byproducts"), map[string]any{"name": "log.txt", "content": "aGk="})
		}, "log.txt"},
		{"byproduct media type", func(st map[string]any) {
			named(arr(runDetails(st), "byproducts"), ResultByproduct)["mediaType"] = "application/json"
		}, "mediaType"},
		{"empty byproduct", func(st map[string]any) {
			delete(named(arr(runDetails(st), "byproducts"), EvidenceByproduct), "content")
		}, "content is 0 bytes"},
		{"missing dependency", func(st map[string]any) {
			bd := buildDef(st)
			bd["resolvedDependencies"] = arr(bd, "resolvedDependencies")[:2]
		}, `"guest-image" is missing`},
		{"extra dependency", func(st map[string]any) {
			bd := buildDef(st)
			bd["resolvedDependencies"] = append(arr(bd, "resolvedDependencies"),
				map[string]any{"name": "network", "uri": "https://example.invalid/pkg.tar"})
		}, "network"},
		{"guest measurement as a digest", func(st map[string]any) {
			named(arr(buildDef(st), "resolvedDependencies"), GuestImageDependency)["digest"] = map[string]any{"sha384": strings.Repeat("00", 48)}
		}, "launchMeasurement"},
		{"guest release claimed with the local uri", func(st map[string]any) {
			obj(named(arr(buildDef(st), "resolvedDependencies"), GuestImageDependency), "annotations")["release"] = "v1.0.0"
		}, "annotation release"},
		{"guest release uri of another tag", func(st map[string]any) {
			d := named(arr(buildDef(st), "resolvedDependencies"), GuestImageDependency)
			obj(d, "annotations")["release"] = "v1.0.0"
			d["uri"] = "https://github.com/acme/cloche/releases/tag/v1.0.1"
		}, "annotation release"},
		{"guest local with a release uri", func(st map[string]any) {
			named(arr(buildDef(st), "resolvedDependencies"), GuestImageDependency)["uri"] = "https://github.com/acme/cloche/releases/tag/v1.0.0"
		}, "local build"},
		{"guest measurement missing", func(st map[string]any) {
			delete(obj(named(arr(buildDef(st), "resolvedDependencies"), GuestImageDependency), "annotations"), "launchMeasurement")
		}, "launchMeasurement"},
		{"guest annotation extra", func(st map[string]any) {
			obj(named(arr(buildDef(st), "resolvedDependencies"), GuestImageDependency), "annotations")["debug"] = true
		}, "annotations"},
		{"guest vcpus fractional", func(st map[string]any) {
			obj(named(arr(buildDef(st), "resolvedDependencies"), GuestImageDependency), "annotations")["vcpus"] = 1.5
		}, "vcpus"},
		{"builder version missing", func(st map[string]any) { delete(obj(runDetails(st), "builder"), "version") }, "builder.version"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseStatement(mutate(t, stmt, c.edit))
			if !errors.Is(err, ErrStatement) {
				t.Fatalf("error = %v, want ErrStatement", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not mention %q", err, c.want)
			}
		})
	}
	t.Run("not JSON", func(t *testing.T) {
		if _, err := ParseStatement([]byte("not json")); !errors.Is(err, ErrStatement) {
			t.Fatalf("error = %v, want ErrStatement", err)
		}
	})
	t.Run("too large", func(t *testing.T) {
		big := make([]byte, MaxStatementSize+1)
		if _, err := ParseStatement(big); !errors.Is(err, ErrStatement) || !strings.Contains(err.Error(), "limit") {
			t.Fatalf("error = %v, want ErrStatement naming the limit", err)
		}
	})
	t.Run("duplicate key", func(t *testing.T) {
		dup := bytes.Replace(stmt, []byte(`"predicateType":`), []byte(`"predicateType":"x","predicateType":`), 1)
		if _, err := ParseStatement(dup); !errors.Is(err, ErrStatement) {
			t.Fatalf("error = %v, want ErrStatement", err)
		}
	})
}

// Each field a host could misstate must be caught, naming the field and both values.
func TestCheckAgainstManifestMismatch(t *testing.T) {
	f := newFixture(t)
	stmt := f.statement(t)
	setDigest := func(dep, alg, value string) func(st map[string]any) {
		return func(st map[string]any) {
			obj(named(arr(buildDef(st), "resolvedDependencies"), dep), "digest")[alg] = value
		}
	}
	otherHex := strings.Repeat("ab", 32)
	for _, c := range []struct {
		name  string
		edit  func(st map[string]any)
		field string
	}{
		{"command", func(st map[string]any) { external(st)["command"] = []any{"make", "hello", "V=1"} }, "externalParameters.command"},
		{"workdir", func(st map[string]any) { external(st)["workdir"] = "src" }, "externalParameters.workdir"},
		{"env", func(st map[string]any) { obj(external(st), "env")["LD_PRELOAD"] = "/evil.so" }, "externalParameters.env"},
		{"artifact patterns", func(st map[string]any) { external(st)["artifacts"] = []any{"out/*"} }, "externalParameters.artifacts"},
		{"source repository", func(st map[string]any) {
			obj(external(st), "source")["repository"] = "https://github.com/evil/hello"
		}, "externalParameters.source.repository"},
		{"source ref", func(st map[string]any) { obj(external(st), "source")["ref"] = "refs/heads/main" }, "externalParameters.source.ref"},
		{"source commit", func(st map[string]any) {
			obj(external(st), "source")["commit"] = strings.Repeat("1", 40)
		}, "externalParameters.source.commit"},
		{"source tree", func(st map[string]any) { obj(external(st), "source")["tree"] = strings.Repeat("2", 40) }, "externalParameters.source.tree"},
		{"toolchain name", func(st map[string]any) { obj(external(st), "toolchain")["name"] = "other" }, "externalParameters.toolchain.name"},
		{"rlimits", func(st map[string]any) { obj(external(st), "rlimits")["processes"] = 4 }, "externalParameters.rlimits"},
		{"toolchain image digest parameter", func(st map[string]any) {
			obj(external(st), "toolchain")["imageSha256"] = otherHex
		}, "externalParameters.toolchain.imageSha256"},
		{"toolchain verity root", func(st map[string]any) {
			obj(external(st), "toolchain")["verityRootHash"] = otherHex
		}, "externalParameters.toolchain.verityRootHash"},
		{"tee", func(st map[string]any) { external(st)["tee"] = "snp" }, "externalParameters.tee"},
		{"sourceDateEpoch", func(st map[string]any) { external(st)["sourceDateEpoch"] = 1 }, "externalParameters.sourceDateEpoch"},
		{"timeoutSeconds", func(st map[string]any) { external(st)["timeoutSeconds"] = 60 }, "externalParameters.timeoutSeconds"},
		{"maxOutputBytes", func(st map[string]any) {
			obj(buildDef(st), "internalParameters")["maxOutputBytes"] = 1
		}, "internalParameters.maxOutputBytes"},
		{"source uri", func(st map[string]any) {
			named(arr(buildDef(st), "resolvedDependencies"), SourceDependency)["uri"] = "git+https://github.com/evil/hello@main"
		}, "resolvedDependencies[source].uri"},
		{"source archive digest", setDigest(SourceDependency, "sha256", otherHex), "resolvedDependencies[source].digest.sha256"},
		{"source git tree digest", setDigest(SourceDependency, "gitTree", strings.Repeat("3", 40)), "resolvedDependencies[source].digest.gitTree"},
		{"source git commit digest", setDigest(SourceDependency, "gitCommit", strings.Repeat("4", 40)), "resolvedDependencies[source].digest.gitCommit"},
		{"source tag", func(st map[string]any) { obj(external(st), "source")["tag"] = "v9.9.9" }, "externalParameters.source.tag"},
		{"source path", func(st map[string]any) { obj(external(st), "source")["path"] = "sub" }, "externalParameters.source.path"},
		{"source uri names the manifest's ref, not the attested tag", func(st map[string]any) {
			named(arr(buildDef(st), "resolvedDependencies"), SourceDependency)["uri"] = "git+https://github.com/cloche-dev/hello@refs/tags/v9.9.9"
		}, "resolvedDependencies[source].uri"},
		{"source extra digest", setDigest(SourceDependency, "sha512", strings.Repeat("ab", 64)), "resolvedDependencies[source].digest keys"},
		{"toolchain image digest", func(st map[string]any) {
			obj(named(arr(buildDef(st), "resolvedDependencies"), ToolchainDependency), "annotations")["imageSha256"] = otherHex
		}, "resolvedDependencies[toolchain].annotations.imageSha256"},
		{"toolchain digest added", func(st map[string]any) {
			named(arr(buildDef(st), "resolvedDependencies"), ToolchainDependency)["digest"] = map[string]any{"sha256": otherHex}
		}, "resolvedDependencies[toolchain].digest keys"},
		{"toolchain uri", func(st map[string]any) {
			named(arr(buildDef(st), "resolvedDependencies"), ToolchainDependency)["uri"] = "urn:cloche:toolchain:other"
		}, "resolvedDependencies[toolchain].uri"},
		{"toolchain salt", func(st map[string]any) {
			obj(named(arr(buildDef(st), "resolvedDependencies"), ToolchainDependency), "annotations")["veritySalt"] = ""
		}, "resolvedDependencies[toolchain].annotations.veritySalt"},
		{"toolchain data blocks", func(st map[string]any) {
			obj(named(arr(buildDef(st), "resolvedDependencies"), ToolchainDependency), "annotations")["dataBlocks"] = 11
		}, "resolvedDependencies[toolchain].annotations.dataBlocks"},
		{"invocationId", func(st map[string]any) {
			obj(runDetails(st), "metadata")["invocationId"] = "https://github.com/cloche-dev/hello/actions/runs/41/attempts/1"
		}, "runDetails.metadata.invocationId"},
		{"builder claims real hardware", func(st map[string]any) {
			obj(runDetails(st), "builder")["id"] = BuilderID("snp", "0.1.0")
		}, "runDetails.builder.id"},
		{"subject digest differs", func(st map[string]any) {
			arr(st, "subject")[0].(map[string]any)["digest"] = map[string]any{"sha256": otherHex}
		}, "subject out/NOTICE.txt sha256"},
		{"subject missing", func(st map[string]any) { st["subject"] = arr(st, "subject")[1:] }, "subject out/NOTICE.txt"},
		{"subject added", func(st map[string]any) {
			st["subject"] = append(arr(st, "subject"), map[string]any{"name": "out/backdoor", "digest": map[string]any{"sha256": otherHex}})
		}, "subject out/backdoor"},
		{"subject renamed", func(st map[string]any) {
			arr(st, "subject")[2].(map[string]any)["name"] = "out/hello.exe"
		}, "subject out/hello"},
		{"checksums subject digest differs", func(st map[string]any) {
			named(arr(st, "subject"), ChecksumsName)["digest"] = map[string]any{"sha256": otherHex}
		}, "subject SHA256SUMS sha256"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := ParseStatement(mutate(t, stmt, c.edit))
			if err != nil {
				t.Fatalf("ParseStatement: %v", err)
			}
			err = p.CheckAgainstManifest(f.m, f.r)
			if !errors.Is(err, ErrMismatch) {
				t.Fatalf("error = %v, want ErrMismatch", err)
			}
			if !strings.Contains(err.Error(), c.field+": statement says") {
				t.Fatalf("error %q does not name field %q", err, c.field)
			}
		})
	}
}

// The byproducts must belong together, and documents other than the ones described fail.
func TestCheckAgainstManifestOtherDocuments(t *testing.T) {
	f := newFixture(t)
	p, err := ParseStatement(f.statement(t))
	if err != nil {
		t.Fatal(err)
	}
	m := *f.m
	m.Command = []string{"make", "all"}
	if err := p.CheckAgainstManifest(&m, f.r); !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "externalParameters.command") {
		t.Fatalf("other manifest: error = %v", err)
	}
	r := *f.r
	r.ManifestSHA256 = strings.Repeat("0", 64)
	if err := p.CheckAgainstManifest(f.m, &r); !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "result.manifestSha256") {
		t.Fatalf("other result: error = %v", err)
	}
	m = *f.m
	m.Toolchain.DataBlocks = 1<<53 + 1
	if err := p.CheckAgainstManifest(&m, f.r); !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "dataBlocks") {
		t.Fatalf("inexact number: error = %v", err)
	}
	if err := p.CheckAgainstManifest(nil, f.r); err == nil {
		t.Fatal("nil manifest accepted")
	}
}

// The commit and tag in the statement are the result record's: a result record that names
// another commit (what the guest attested) fails a statement that names the host's, and a
// SHA-256 repository's ids go under their own digest keys.
func TestStatementSourceFromResultRecord(t *testing.T) {
	f := newFixture(t)
	p, err := ParseStatement(f.statement(t))
	if err != nil {
		t.Fatal(err)
	}
	r := *f.r
	r.SourceCommit = strings.Repeat("5", 40)
	if err := p.CheckAgainstManifest(f.m, &r); !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "externalParameters.source.commit") {
		t.Fatalf("other attested commit: error = %v", err)
	}
	r = *f.r
	r.SourceTag, r.SourceTagObject = "", ""
	if err := p.CheckAgainstManifest(f.m, &r); !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "externalParameters.source.tag") {
		t.Fatalf("no attested tag: error = %v", err)
	}

	r = *f.r
	r.SourceTree, r.SourceCommit, r.SourceTagObject = strings.Repeat("6", 64), strings.Repeat("7", 64), strings.Repeat("8", 64)
	f.in.Result = mustMarshal(t, &r)
	p, err = ParseStatement(f.statement(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CheckAgainstManifest(f.m, &r); err != nil {
		t.Fatalf("sha256 repository: %v", err)
	}
	want := map[string]string{"gitCommitSha256": r.SourceCommit, "gitTreeSha256": r.SourceTree, "sha256": f.m.Source.ArchiveSHA256}
	if got := p.Dependencies[SourceDependency].Digest; !reflect.DeepEqual(got, want) {
		t.Fatalf("sha256 source digest = %v, want %v", got, want)
	}
}

// A manifest without repository, ref, commit, env or source tree still round-trips, and the
// source dependency then has no uri.
func TestStatementMinimalManifest(t *testing.T) {
	f := newFixture(t)
	m := *f.m
	m.Source.Repository, m.Source.Ref, m.Env, m.Toolchain.Name = "", "", nil, ""
	f.in.Manifest = mustMarshal(t, &m)
	r := *f.r
	r.ManifestSHA256, r.SourceTree, r.SourceCommit, r.SourceTag, r.SourceTagObject = sha256Hex(f.in.Manifest), "", "", "", ""
	f.in.Result = mustMarshal(t, &r)
	p, err := ParseStatement(f.statement(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CheckAgainstManifest(&m, &r); err != nil {
		t.Fatalf("CheckAgainstManifest: %v", err)
	}
	src := p.Dependencies[SourceDependency]
	if src.URI != "" || !reflect.DeepEqual(src.Digest, map[string]string{"sha256": m.Source.ArchiveSHA256}) {
		t.Fatalf("source dependency = %+v", src)
	}
	// The same statement against the full manifest fails on the first differing field.
	if err := p.CheckAgainstManifest(f.m, &r); !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "externalParameters.env") {
		t.Fatalf("error = %v", err)
	}
}

func FuzzParseStatement(f *testing.F) {
	fx := newFixture(f)
	stmt, err := NewStatement(fx.in)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(stmt)
	f.Add([]byte(`{"_type":"https://in-toto.io/Statement/v1"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseStatement(b)
		if err != nil {
			if !errors.Is(err, ErrStatement) {
				t.Fatalf("error %v does not wrap ErrStatement", err)
			}
			return
		}
		// Whatever parses can be checked without panicking.
		_ = p.CheckAgainstManifest(fx.m, fx.r)
	})
}

// A released guest image round-trips: uri of the release page and annotation release; a
// local build has the local uri.
func TestGuestReleaseRoundTrip(t *testing.T) {
	f := newFixture(t)
	p, err := ParseStatement(f.statement(t))
	if err != nil || p.Guest.Release != "" || p.Dependencies[GuestImageDependency].URI != LocalGuestImageURI {
		t.Fatalf("local build: %v %+v", err, p.Dependencies[GuestImageDependency])
	}
	f.in.Guest.Release, f.in.Guest.Repository = "v1.2.3", "acme/cloche"
	p, err = ParseStatement(f.statement(t))
	if err != nil {
		t.Fatal(err)
	}
	d := p.Dependencies[GuestImageDependency]
	if p.Guest.Release != "v1.2.3" || p.Guest.Repository != "acme/cloche" || d.URI != "https://github.com/acme/cloche/releases/tag/v1.2.3" || len(d.Digest) != 0 {
		t.Errorf("release: %+v, dependency %+v", p.Guest, d)
	}
}

// A toolchain flattened from a container image carries the image's reference in the
// externalParameters and as an annotation, and the checker holds both to the manifest;
// other toolchains' statements carry neither.
func TestStatementToolchainSourceImage(t *testing.T) {
	f := newFixture(t)
	plain, err := ParseStatement(f.statement(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := plain.Dependencies[ToolchainDependency].Annotations["sourceImage"]; ok || plain.External.Toolchain.SourceImage != "" {
		t.Fatalf("a toolchain from no container image: %+v", plain.Dependencies[ToolchainDependency])
	}
	ref := "registry.example/tools/cc@sha256:" + strings.Repeat("e", 64)
	m := *f.m
	m.Toolchain.SourceImage = ref
	f.in.Manifest = mustMarshal(t, &m)
	r := *f.r
	r.ManifestSHA256 = sha256Hex(f.in.Manifest)
	f.in.Result = mustMarshal(t, &r)
	stmt := f.statement(t)
	p, err := ParseStatement(stmt)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CheckAgainstManifest(&m, &r); err != nil {
		t.Fatalf("CheckAgainstManifest: %v", err)
	}
	if got := p.Dependencies[ToolchainDependency].Annotations["sourceImage"]; got != ref || p.External.Toolchain.SourceImage != ref {
		t.Fatalf("annotation %v, parameter %q, want %s", got, p.External.Toolchain.SourceImage, ref)
	}
	other := "registry.example/tools/cc@sha256:" + strings.Repeat("f", 64)
	for _, c := range []struct {
		name  string
		edit  func(st map[string]any)
		field string
	}{
		{"annotation", func(st map[string]any) {
			obj(named(arr(buildDef(st), "resolvedDependencies"), ToolchainDependency), "annotations")["sourceImage"] = other
		}, "resolvedDependencies[toolchain].annotations.sourceImage"},
		{"annotation dropped", func(st map[string]any) {
			delete(obj(named(arr(buildDef(st), "resolvedDependencies"), ToolchainDependency), "annotations"), "sourceImage")
		}, "resolvedDependencies[toolchain].annotations keys"},
		{"parameter", func(st map[string]any) { obj(external(st), "toolchain")["sourceImage"] = other }, "externalParameters.toolchain.sourceImage"},
	} {
		p, err := ParseStatement(mutate(t, stmt, c.edit))
		if err != nil {
			t.Fatalf("%s: ParseStatement: %v", c.name, err)
		}
		if err := p.CheckAgainstManifest(&m, &r); !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), c.field+": statement says") {
			t.Errorf("%s: error = %v, want a mismatch naming %s", c.name, err, c.field)
		}
	}
}

func TestChecksumsFormat(t *testing.T) {
	a, b := strings.Repeat("a", 64), strings.Repeat("b", 64)
	got := string(Checksums([]job.Artifact{{Path: "out/z", SHA256: a}, {Path: "hello", SHA256: b}, {Path: "out/a", SHA256: b}}))
	want := b + "  hello\n" + b + "  out/a\n" + a + "  out/z\n"
	if got != want {
		t.Fatalf("Checksums = %q, want %q (sha256sum's format, sorted by path)", got, want)
	}
}

// A statement written before the checksums subject existed still checks; one whose build
// made its own SHA256SUMS names that artifact and no second file.
func TestChecksumsSubjectOptionalAndYielding(t *testing.T) {
	f := newFixture(t)
	older := mutate(t, f.statement(t), func(st map[string]any) {
		var kept []any
		for _, s := range arr(st, "subject") {
			if s.(map[string]any)["name"] != ChecksumsName {
				kept = append(kept, s)
			}
		}
		st["subject"] = kept
	})
	p, err := ParseStatement(older)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CheckAgainstManifest(f.m, f.r); err != nil {
		t.Fatalf("statement without the checksums subject: %v", err)
	}

	own := []job.Artifact{{Path: ChecksumsName, SHA256: strings.Repeat("c", 64), Size: 1}, {Path: "out/a", SHA256: strings.Repeat("d", 64), Size: 1}}
	if HasChecksumsSubject(own) || !HasChecksumsSubject(own[1:]) {
		t.Fatal("HasChecksumsSubject must yield to an artifact of that name, and only then")
	}
	p.Subjects = map[string]string{ChecksumsName: own[0].SHA256, "out/a": own[1].SHA256}
	r := *f.r
	r.Artifacts = own
	c := checker{}
	c.subjects(p.Subjects, r.Artifacts)
	if c.err != nil {
		t.Fatalf("the build's own SHA256SUMS as subject: %v", c.err)
	}
}
