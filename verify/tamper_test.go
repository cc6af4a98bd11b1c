package verify

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/attest/verifier"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/reference"
	"github.com/cloche-dev/cloche/source"
	"github.com/cloche-dev/cloche/verify/verifytest"
)

var (
	kitOnce sync.Once
	kit     *verifytest.Kit
	kitErr  error
)

func testKit(t *testing.T) *verifytest.Kit {
	t.Helper()
	kitOnce.Do(func() {
		dir, err := os.MkdirTemp("", "verify-kit-")
		if err != nil {
			kitErr = err
			return
		}
		kit, kitErr = verifytest.NewKit(dir)
	})
	if kitErr != nil {
		t.Fatal(kitErr)
	}
	return kit
}

// kitOptions verifies a kit fixture the default way: key, sim root, signed reference
// values as the measurement source.
func kitOptions(k *verifytest.Kit, f *verifytest.Fixture) Options {
	trust := k.Trust()
	return Options{BundlePath: f.BundlePath, PublicKey: trust.HostKey, Artifacts: []string{f.Artifact},
		AllowSimulated: true, SimRoots: []*x509.Certificate{trust.SimRoot},
		Reference:          ReferenceOptions{BundlePath: f.ReferencePath, Key: trust.ReleaseKey},
		ExpectedSourceTree: verifytest.SourceTree, Pins: Pins{ToolchainDigest: verifytest.ToolchainDigest}}
}

// tamper is one mutation of the corpus and the check that must catch it.
type tamper struct {
	name  string
	hooks verifytest.Hooks
	opts  func(o *Options, f *verifytest.Fixture)
	want  string
}

// editJSON sets (or, with del, removes) the value at path in a JSON document.
func editJSON(path []any, v any, del bool) func([]byte) []byte {
	return func(b []byte) []byte {
		var doc any
		if err := json.Unmarshal(b, &doc); err != nil {
			panic(err)
		}
		cur := doc
		for i, p := range path {
			last := i == len(path)-1
			switch c := cur.(type) {
			case map[string]any:
				k := p.(string)
				if last {
					if del {
						delete(c, k)
					} else {
						c[k] = v
					}
				}
				cur = c[k]
			case []any:
				k := p.(int)
				if last {
					c[k] = v
				}
				cur = c[k]
			}
		}
		out, err := json.Marshal(doc)
		if err != nil {
			panic(err)
		}
		return out
	}
}

func statementEdit(v any, path ...any) verifytest.Hooks {
	return verifytest.Hooks{Statement: editJSON(path, v, false)}
}

func statementDelete(path ...any) verifytest.Hooks {
	return verifytest.Hooks{Statement: editJSON(path, nil, true)}
}

// signedReport edits the report and lets the (lying) sim secure processor sign it.
func signedReport(edit func(r []byte)) verifytest.Hooks { return verifytest.Hooks{Report: edit} }

func flipByte(off int) func([]byte) { return func(r []byte) { r[off] ^= 0x01 } }

// bundleEdit edits the bundle's DSSE envelope (payload or signature bytes), unsigned.
func bundleEdit(edit func(env map[string]any)) verifytest.Hooks {
	return verifytest.Hooks{Bundle: func(b []byte) []byte {
		var doc map[string]any
		if err := json.Unmarshal(b, &doc); err != nil {
			panic(err)
		}
		edit(doc["dsseEnvelope"].(map[string]any))
		out, _ := json.Marshal(doc)
		return out
	}}
}

func flipBase64(field string, off int) func(env map[string]any) {
	return func(env map[string]any) {
		var s string
		var set func(string)
		if field == "payload" {
			s, set = env["payload"].(string), func(v string) { env["payload"] = v }
		} else {
			sig := env["signatures"].([]any)[0].(map[string]any)
			s, set = sig["sig"].(string), func(v string) { sig["sig"] = v }
		}
		raw, _ := base64.StdEncoding.DecodeString(s)
		raw[off%len(raw)] ^= 0x01
		set(base64.StdEncoding.EncodeToString(raw))
	}
}

func tamperCorpus(t *testing.T, k *verifytest.Kit) []tamper {
	var c []tamper
	add := func(name, want string, h verifytest.Hooks, opts func(*Options, *verifytest.Fixture)) {
		c = append(c, tamper{name: name, hooks: h, opts: opts, want: want})
	}
	// Artifact: every byte, truncated, extended, replaced by a directory, a FIFO, given twice.
	for i := range verifytest.ArtifactContent {
		i := i
		add(fmt.Sprintf("artifact byte %d flipped", i), CheckSubject, verifytest.Hooks{}, func(o *Options, f *verifytest.Fixture) {
			b := bytes.Clone(verifytest.ArtifactContent)
			b[i] ^= 0x20
			os.WriteFile(f.Artifact, b, 0o755)
		})
	}
	add("artifact truncated", CheckSubject, verifytest.Hooks{}, func(o *Options, f *verifytest.Fixture) { os.Truncate(f.Artifact, 3) })
	add("artifact extended", CheckSubject, verifytest.Hooks{}, func(o *Options, f *verifytest.Fixture) {
		os.WriteFile(f.Artifact, append(bytes.Clone(verifytest.ArtifactContent), 0), 0o755)
	})
	add("artifact empty", CheckSubject, verifytest.Hooks{}, func(o *Options, f *verifytest.Fixture) { os.WriteFile(f.Artifact, nil, 0o755) })
	add("artifact is a directory", CheckArtifact, verifytest.Hooks{}, func(o *Options, f *verifytest.Fixture) { o.Artifacts = []string{f.Dir} })
	add("artifact is a FIFO", CheckArtifact, verifytest.Hooks{}, func(o *Options, f *verifytest.Fixture) {
		p := filepath.Join(f.Dir, "fifo")
		if err := syscall.Mkfifo(p, 0o644); err != nil {
			panic(err)
		}
		o.Artifacts = []string{p}
	})
	add("artifact missing", CheckArtifact, verifytest.Hooks{}, func(o *Options, f *verifytest.Fixture) { o.Artifacts = []string{f.Artifact + ".missing"} })
	add("artifact given twice", CheckArtifact, verifytest.Hooks{}, func(o *Options, f *verifytest.Fixture) { o.Artifacts = []string{f.Artifact, f.Artifact} })
	add("artifact given twice through a symlink", CheckArtifact, verifytest.Hooks{}, func(o *Options, f *verifytest.Fixture) {
		l := filepath.Join(f.Dir, "link")
		os.Symlink(f.Artifact, l)
		o.Artifacts = []string{f.Artifact, l}
	})
	add("an artifact that is no subject", CheckSubject, verifytest.Hooks{}, func(o *Options, f *verifytest.Fixture) {
		p := filepath.Join(f.Dir, "extra")
		os.WriteFile(p, []byte("x"), 0o644)
		o.Artifacts = append(o.Artifacts, p)
	})

	// DSSE: payload and signature bytes changed without re-signing.
	for _, off := range []int{0, 1, 7, 13, 50, 100, 200, 400, 800, 1600, 3200, 5000, 7000, 9000, 11000} {
		add(fmt.Sprintf("DSSE payload byte %d flipped", off), CheckSignature, bundleEdit(flipBase64("payload", off)), nil)
	}
	for off := 0; off < 70; off += 5 {
		add(fmt.Sprintf("DSSE signature byte %d flipped", off), CheckSignature, bundleEdit(flipBase64("sig", off)), nil)
	}
	// Bundle container.
	add("bundle mediaType changed", CheckBundle, verifytest.Hooks{Bundle: editJSON([]any{"mediaType"}, "application/vnd.dev.sigstore.bundle.v0.2+json", false)}, nil)
	add("bundle unknown field", CheckBundle, verifytest.Hooks{Bundle: editJSON([]any{"extra"}, 1, false)}, nil)
	add("bundle payloadType changed", CheckBundle, bundleEdit(func(env map[string]any) { env["payloadType"] = "text/plain" }), nil)
	add("bundle two signatures", CheckBundle, bundleEdit(func(env map[string]any) {
		s := env["signatures"].([]any)
		env["signatures"] = append(s, s[0])
	}), nil)
	add("bundle no signature", CheckBundle, bundleEdit(func(env map[string]any) { env["signatures"] = []any{} }), nil)
	add("bundle not JSON", CheckBundle, verifytest.Hooks{Bundle: func(b []byte) []byte { return b[:len(b)/2] }}, nil)
	add("bundle with an RFC 3161 timestamp", CheckBundleMaterial, verifytest.Hooks{Bundle: editJSON([]any{"verificationMaterial", "timestampVerificationData"},
		map[string]any{"rfc3161Timestamps": []any{map[string]any{"signedTimestamp": base64.StdEncoding.EncodeToString([]byte("tst"))}}}, false)}, nil)
	add("bundle with a tlog entry on a key signature", CheckBundleMaterial, verifytest.Hooks{Bundle: editJSON([]any{"verificationMaterial", "tlogEntries"},
		[]any{map[string]any{"logIndex": "1", "logId": map[string]any{"keyId": base64.StdEncoding.EncodeToString([]byte("k"))}, "kindVersion": map[string]any{"kind": "dsse", "version": "0.0.1"}, "integratedTime": "1", "canonicalizedBody": base64.StdEncoding.EncodeToString([]byte("{}"))}}, false)}, nil)

	// Statement, re-signed with the host's key.
	ext := []any{"predicate", "buildDefinition", "externalParameters"}
	at := func(p ...any) []any { return append(append([]any{}, ext...), p...) }
	for _, e := range []struct {
		name string
		path []any
		v    any
	}{
		{"command", at("command"), []any{"make", "evil"}},
		{"command empty", at("command"), []any{}},
		{"workdir", at("workdir"), "src"},
		{"env", at("env"), map[string]any{"CC": "evil"}},
		{"env added", at("env"), map[string]any{"CC": "gcc", "LD_PRELOAD": "x"}},
		{"artifacts", at("artifacts"), []any{"other"}},
		{"source repository", at("source", "repository"), "https://github.com/evil/hello"},
		{"source ref", at("source", "ref"), "refs/tags/v2"},
		{"source commit", at("source", "commit"), "0000000000000000000000000000000000000000"},
		{"source commit removed", at("source", "commit"), ""},
		{"source tag", at("source", "tag"), "v2"},
		{"source tag removed", at("source", "tag"), ""},
		{"source path", at("source", "path"), "sub"},
		{"source tree", at("source", "tree"), "0000000000000000000000000000000000000000"},
		{"toolchain name", at("toolchain", "name"), "evil"},
		{"toolchain image", at("toolchain", "imageSha256"), "0000000000000000000000000000000000000000000000000000000000000000"},
		{"toolchain verity root", at("toolchain", "verityRootHash"), "0000000000000000000000000000000000000000000000000000000000000000"},
		{"tee", at("tee"), "snp"},
		{"timeout", at("timeoutSeconds"), 61},
		{"sourceDateEpoch", at("sourceDateEpoch"), 5},
		{"internal maxOutputBytes", []any{"predicate", "buildDefinition", "internalParameters", "maxOutputBytes"}, 5},
		{"invocation id", []any{"predicate", "runDetails", "metadata", "invocationId"}, "other"},
		{"builder id tee", []any{"predicate", "runDetails", "builder", "id"}, "https://cloche.dev/builders/snp@v0.1.0"},
		{"builder id version", []any{"predicate", "runDetails", "builder", "id"}, "https://cloche.dev/builders/sim@v9.9.9"},
		{"builder version", []any{"predicate", "runDetails", "builder", "version"}, map[string]any{"cloche": "9.9.9"}},
		{"subject digest", []any{"subject", 0, "digest", "sha256"}, "0000000000000000000000000000000000000000000000000000000000000000"},
		{"subject name", []any{"subject", 0, "name"}, "other"},
	} {
		want := CheckConsistency
		switch {
		case e.name == "subject digest":
			want = CheckSubject
		case strings.HasPrefix(e.name, "source commit"):
			want = CheckSourceCommit
		case strings.HasPrefix(e.name, "source tag"):
			want = CheckSourceTag
		case strings.HasPrefix(e.name, "builder id"):
			want = CheckBuilderID
		}
		add("statement "+e.name, want, statementEdit(e.v, e.path...), nil)
	}
	for _, e := range []struct {
		name string
		path []any
		v    any
	}{
		{"type", []any{"_type"}, "https://in-toto.io/Statement/v0.1"},
		{"predicateType", []any{"predicateType"}, "https://slsa.dev/provenance/v0.2"},
		{"buildType", []any{"predicate", "buildDefinition", "buildType"}, "https://example.com/other"},
		{"unknown predicate field", []any{"predicate", "extra"}, 1},
		{"unknown external parameter", at("extra"), 1},
		{"subject digest algorithm", []any{"subject", 0, "digest"}, map[string]any{"sha512": hex64x("0") + hex64x("0")}},
		{"builder dependencies", []any{"predicate", "runDetails", "builder", "builderDependencies"}, []any{map[string]any{"name": "x", "uri": "x"}}},
		{"byproduct unknown", []any{"predicate", "runDetails", "byproducts", 0, "name"}, "other"},
		{"byproduct media type", []any{"predicate", "runDetails", "byproducts", 0, "mediaType"}, "text/plain"},
		{"dependency name", []any{"predicate", "buildDefinition", "resolvedDependencies", 0, "name"}, "other"},
	} {
		add("statement "+e.name, CheckStatement, statementEdit(e.v, e.path...), nil)
	}
	// The source dependency names the attested commit, and the attested tag in its uri.
	dep := []any{"predicate", "buildDefinition", "resolvedDependencies", 0}
	add("statement source dependency gitCommit", CheckSourceCommit, statementEdit(hex64x("0")[:40], append(dep, "digest", "gitCommit")...), nil)
	add("statement source dependency gitCommit removed", CheckSourceCommit, statementDelete(append(dep, "digest", "gitCommit")...), nil)
	add("statement source dependency uri names another tag", CheckConsistency, statementEdit("git+https://github.com/example/hello@refs/tags/v2", append(dep, "uri")...), nil)
	// The host claims another release consistently (id and version): the reference values
	// that list the measurement bind the release, so builder.id fails.
	add("statement builder id and version of another release", CheckBuilderID, verifytest.Hooks{Statement: func(b []byte) []byte {
		b = editJSON([]any{"predicate", "runDetails", "builder", "id"}, "https://cloche.dev/builders/sim@v9.9.9", false)(b)
		return editJSON([]any{"predicate", "runDetails", "builder", "version"}, map[string]any{"cloche": "9.9.9"}, false)(b)
	}}, nil)
	add("statement not JSON", CheckStatement, verifytest.Hooks{Statement: func(b []byte) []byte { return b[:len(b)-1] }}, nil)
	add("statement subjects missing", CheckStatement, statementDelete("subject"), nil)
	add("statement byproducts missing", CheckStatement, statementDelete("predicate", "runDetails", "byproducts"), nil)
	add("statement finishedOn before startedOn", CheckTime, statementEdit("2001-09-09T01:46:00Z", "predicate", "runDetails", "metadata", "finishedOn"), nil)
	// The guest-image dependency: every annotation against the reference value.
	gi := func(v any, p ...any) verifytest.Hooks {
		return verifytest.Hooks{Statement: guestEdit(v, p...)}
	}
	add("guest-image measurement", CheckConsistency, gi("00"+hex96[2:], "annotations", "launchMeasurement"), nil)
	add("guest-image measurement as a digest", CheckStatement, gi(map[string]any{"sha384": hex96}, "digest"), nil)
	// The guest image release: the kit's reference values are release v0.1.0's.
	claim := func(tag, uri string) verifytest.Hooks {
		return verifytest.Hooks{Statement: func(b []byte) []byte {
			return guestEdit(uri, "uri")(guestEdit(tag, "annotations", "release")(b))
		}}
	}
	add("guest-image release another release", CheckGuestRelease, claim("v9.9.9", "https://github.com/cloche-dev/cloche/releases/tag/v9.9.9"), nil)
	add("guest-image release uri of another tag", CheckStatement, claim("v0.1.0", "https://github.com/cloche-dev/cloche/releases/tag/v9.9.9"), nil)
	add("guest-image release with the local uri", CheckStatement, claim("v0.1.0", "urn:cloche:guest-image:local-build"), nil)
	add("guest-image kernelSha256", CheckGuestImage, gi(hex64x("4"), "annotations", "kernelSha256"), nil)
	add("guest-image initrdSha256", CheckGuestImage, gi(hex64x("5"), "annotations", "initrdSha256"), nil)
	add("guest-image cmdline", CheckGuestImage, gi("console=ttyS0 init=/evil", "annotations", "cmdline"), nil)
	add("guest-image recipe", CheckGuestImage, gi(hex64x("6"), "annotations", "recipe"), nil)
	add("guest-image referenceValuesSha256", CheckGuestImage, gi(hex64x("7"), "annotations", "referenceValuesSha256"), nil)
	add("guest-image vcpus", CheckMeasurement, gi(4, "annotations", "vcpus"), nil)
	add("guest-image memoryMiB", CheckMeasurement, gi(4096, "annotations", "memoryMiB"), nil)
	add("guest-image unknown annotation", CheckStatement, gi("x", "annotations", "extra"), nil)
	add("guest-image uri", CheckStatement, gi("https://example.com/guest", "uri"), nil)

	// Byproducts changed inside the statement (re-signed): the bindings catch them.
	add("manifest byproduct changed", CheckHostData, verifytest.Hooks{Statement: byproductEdit(0, func(b []byte) []byte {
		return bytes.Replace(b, []byte(`"make"`), []byte(`"evil"`), 1)
	})}, nil)
	add("result byproduct changed", CheckReportData, verifytest.Hooks{Statement: byproductEdit(1, func(b []byte) []byte {
		return bytes.Replace(b, []byte(`"durationMillis":5`), []byte(`"durationMillis":6`), 1)
	})}, nil)
	// A failing build, or a result record of another manifest, vouched for by a lying
	// secure processor (REPORT_DATA set to match).
	for name, c := range map[string]struct {
		edit func(*job.Result)
		want string
	}{
		"build failed":                  {func(r *job.Result) { r.ExitCode = 2 }, CheckResultStatus},
		"build error":                   {func(r *job.Result) { r.Error = "oom" }, CheckResultStatus},
		"result names another manifest": {func(r *job.Result) { r.ManifestSHA256 = hex64x("9") }, CheckResultManifest},
		// The guest computes the commit and tag ids from the manifest's objects; a result
		// record that names others was not written by it.
		"result names another commit":     {func(r *job.Result) { r.SourceCommit = hex64x("1")[:40] }, CheckSourceCommit},
		"result names no commit":          {func(r *job.Result) { r.SourceCommit, r.SourceTag, r.SourceTagObject = "", "", "" }, CheckSourceCommit},
		"result names another tree":       {func(r *job.Result) { r.SourceTree = hex64x("2")[:40] }, CheckSourceCommit},
		"result names another tag":        {func(r *job.Result) { r.SourceTag = "v2" }, CheckSourceTag},
		"result names another tag object": {func(r *job.Result) { r.SourceTagObject = hex64x("3")[:40] }, CheckSourceTag},
		"result names no tag":             {func(r *job.Result) { r.SourceTag, r.SourceTagObject = "", "" }, CheckSourceTag},
	} {
		_, rb, err := verifytest.Documents(verifytest.Hooks{Result: c.edit})
		if err != nil {
			t.Fatal(err)
		}
		rd := job.ReportData(rb)
		add(name, c.want, verifytest.Hooks{
			Report:    func(r []byte) { copy(r[0x50:0x90], rd[:]) },
			Statement: byproductEdit(1, func([]byte) []byte { return rb }),
		}, nil)
	}
	// Manifests whose git objects do not name the attested source, launched by a lying
	// secure processor (HOST_DATA and the result record's manifest digest set to match).
	for name, c := range map[string]struct {
		edit func(*job.Manifest)
		want string
	}{
		"manifest commit object of another tree": {func(m *job.Manifest) {
			m.Source.CommitObject = bytes.Replace(m.Source.CommitObject, []byte(verifytest.SourceTree), []byte(hex64x("4")[:40]), 1)
		}, CheckSourceCommit},
		"manifest commit object with another message": {func(m *job.Manifest) {
			m.Source.CommitObject = append(bytes.Clone(m.Source.CommitObject), "backdoor\n"...)
		}, CheckSourceCommit},
		"manifest without a commit object": {func(m *job.Manifest) { m.Source.CommitObject, m.Source.TagObject = nil, nil }, CheckSourceCommit},
		"manifest tag object of another tag": {func(m *job.Manifest) {
			m.Source.TagObject = bytes.Replace(m.Source.TagObject, []byte("tag v1"), []byte("tag v2"), 1)
		}, CheckSourceTag},
		"manifest without a tag object": {func(m *job.Manifest) { m.Source.TagObject = nil }, CheckSourceTag},
	} {
		add(name, c.want, verifytest.Hooks{Manifest: c.edit}, nil)
	}
	add("manifest TEE snp", CheckEvidenceTEE, verifytest.Hooks{Manifest: func(m *job.Manifest) { m.TEE = "snp" }}, nil)

	// Evidence container.
	add("evidence relabelled snp", CheckChain, verifytest.Hooks{Evidence: func(e *attest.Evidence) { e.TEE = attest.TEESNP }}, nil)
	add("evidence relabelled tdx", CheckEvidenceParse, verifytest.Hooks{Evidence: func(e *attest.Evidence) { e.TEE = attest.TEETDX }}, nil)
	add("evidence without certificates", CheckChain, verifytest.Hooks{Evidence: func(e *attest.Evidence) { e.Certs = nil }}, nil)
	add("evidence VCEK replaced by the ASK", CheckChain, verifytest.Hooks{Evidence: func(e *attest.Evidence) { e.Certs.VCEK = e.Certs.ASK }}, nil)
	add("evidence ASK replaced by the ARK", CheckChain, verifytest.Hooks{Evidence: func(e *attest.Evidence) { e.Certs.ASK = e.Certs.ARK }}, nil)
	add("evidence garbage certificate table", CheckEvidenceParse, verifytest.Hooks{Evidence: func(e *attest.Evidence) { e.CertTable = []byte("garbage") }}, nil)
	add("evidence.json tee twice", CheckEvidenceParse, verifytest.Hooks{EvidenceJSON: func(b []byte) []byte {
		return append(bytes.TrimSuffix(b, []byte("}")), []byte(`,"tee":"snp"}`)...)
	}}, nil)
	add("evidence.json case-variant key", CheckEvidenceParse, verifytest.Hooks{EvidenceJSON: func(b []byte) []byte {
		return bytes.Replace(b, []byte(`"tee"`), []byte(`"TEE"`), 1)
	}}, nil)
	add("evidence.json unknown key", CheckEvidenceParse, verifytest.Hooks{EvidenceJSON: func(b []byte) []byte {
		return append(bytes.TrimSuffix(b, []byte("}")), []byte(`,"extra":1}`)...)
	}}, nil)
	add("evidence.json trailing data", CheckEvidenceParse, verifytest.Hooks{Statement: byproductEdit(2, func(b []byte) []byte { return append(b, []byte(" {}")...) })}, nil)
	add("evidence report truncated", CheckEvidenceParse, verifytest.Hooks{Evidence: func(e *attest.Evidence) { e.Report = e.Report[:1000] }}, nil)

	// Report fields, re-signed by a lying secure processor.
	for i := 0; i < 48; i++ {
		add(fmt.Sprintf("report MEASUREMENT byte %d", i), CheckMeasurement, signedReport(flipByte(0x90+i)), nil)
	}
	for i := 0; i < 32; i++ {
		add(fmt.Sprintf("report HOST_DATA byte %d", i), CheckHostData, signedReport(flipByte(0xC0+i)), nil)
	}
	for i := 0; i < 64; i++ {
		add(fmt.Sprintf("report REPORT_DATA byte %d", i), CheckReportData, signedReport(flipByte(0x50+i)), nil)
	}
	for i := 0; i < 64; i += 4 {
		add(fmt.Sprintf("report CHIP_ID byte %d", i), CheckChipID, signedReport(flipByte(0x1A0+i)), nil)
	}
	for i := 0; i < 16; i += 2 {
		add(fmt.Sprintf("report FAMILY_ID byte %d", i), CheckEvidenceParse, signedReport(flipByte(0x10+i)), nil)
	}
	for _, off := range mbzOffsets() {
		add(fmt.Sprintf("report reserved byte 0x%x set", off), CheckEvidenceParse, signedReport(flipByte(off)), nil)
	}
	for _, v := range []uint32{0, 1, 2, 4, 5, 6, 0xffffffff} {
		v := v
		add(fmt.Sprintf("report VERSION %d", v), CheckEvidenceParse, signedReport(func(r []byte) { binary.LittleEndian.PutUint32(r, v) }), nil)
	}
	add("report POLICY DEBUG", CheckPolicy, signedReport(func(r []byte) { r[0x08+2] |= 0x08 }), nil)
	add("report POLICY MIGRATE_MA", CheckPolicy, signedReport(func(r []byte) { r[0x08+2] |= 0x04 }), nil)
	add("report POLICY reserved bit cleared", CheckEvidenceParse, signedReport(func(r []byte) { r[0x08+2] &^= 0x02 }), nil)
	add("report POLICY high MBZ bit", CheckEvidenceParse, signedReport(func(r []byte) { r[0x08+7] |= 0x80 }), nil)
	for _, v := range []uint32{1, 2, 3} {
		v := v
		add(fmt.Sprintf("report VMPL %d", v), CheckPolicy, signedReport(func(r []byte) { binary.LittleEndian.PutUint32(r[0x30:], v) }), nil)
	}
	for _, v := range []uint32{0, 2, 0xffff} {
		v := v
		add(fmt.Sprintf("report SIGNATURE_ALGO %d", v), CheckEvidenceSignature, signedReport(func(r []byte) { binary.LittleEndian.PutUint32(r[0x34:], v) }), nil)
	}
	tcbParts := map[string]int{"bootloader": 0, "tee": 1, "snp": 6, "microcode": 7}
	for name, b := range tcbParts {
		b := b
		add("report REPORTED_TCB "+name+" raised", CheckPolicy, signedReport(func(r []byte) { r[0x180+b]++ }), nil)
		add("report COMMITTED_TCB "+name+" raised", CheckFirmware, signedReport(func(r []byte) { r[0x1E0+b]++ }), nil)
		if name != "tee" { // the sim's TEE SPL is 0
			add("report CURRENT_TCB "+name+" lowered", CheckFirmware, signedReport(func(r []byte) { r[0x38+b]-- }), nil)
			add("report REPORTED_TCB "+name+" lowered", CheckPolicy, signedReport(func(r []byte) { r[0x180+b]-- }), nil)
		}
	}
	add("report provisional firmware reporting CURRENT", CheckFirmware, signedReport(func(r []byte) { r[0x38+7]++; r[0x180+7]++ }), nil)
	add("report LAUNCH_TCB zero", CheckTCB, signedReport(func(r []byte) { binary.LittleEndian.PutUint64(r[0x1F0:], 0) }), nil)
	for i, name := range []string{"build", "minor", "major"} {
		i := i
		add("report committed firmware "+name+" raised", CheckFirmware, signedReport(func(r []byte) { r[0x1EC+i]++ }), nil)
		add("report current firmware "+name+" lowered", CheckFirmware, signedReport(func(r []byte) { r[0x1E8+i]-- }), nil)
	}
	add("report CPUID Genoa (the VCEK is Milan's)", CheckChain, signedReport(func(r []byte) { r[0x189] = 0x11 }), nil)
	add("report CPUID Turin", CheckUnsupported, signedReport(func(r []byte) { r[0x188] = 0x1A }), nil)
	add("report CPUID unknown family", CheckChain, signedReport(func(r []byte) { r[0x188] = 0x17 }), nil)
	add("report signed by the VLEK", CheckChain, signedReport(func(r []byte) { r[0x48] = (r[0x48] &^ 0x1C) | 0x04 }), nil)
	for off := 0x2A0; off < 0x2A0+144; off += 9 {
		add(fmt.Sprintf("report signature byte 0x%x flipped", off), CheckEvidenceSignature, verifytest.Hooks{ReportAfterSigning: flipByte(off)}, nil)
	}
	for _, off := range []int{0x08, 0x30, 0x34, 0x38, 0x50, 0x90, 0xC0, 0x180, 0x1E0, 0x1F0} {
		add(fmt.Sprintf("report byte 0x%x flipped after signing", off), CheckEvidenceSignature, verifytest.Hooks{ReportAfterSigning: flipByte(off)}, nil)
	}

	// The manifest, result record and reference values are read strictly: a duplicate,
	// case-variant or unknown key is refused even where a lenient reader would agree.
	appendKey := func(kv string) func([]byte) []byte {
		return func(b []byte) []byte { return append(bytes.TrimSuffix(b, []byte("}")), []byte(","+kv+"}")...) }
	}
	renameKey := func(from, to string) func([]byte) []byte {
		return func(b []byte) []byte { return bytes.Replace(b, []byte(`"`+from+`":`), []byte(`"`+to+`":`), 1) }
	}
	for _, e := range []struct {
		name string
		edit func([]byte) []byte
	}{
		{"duplicate _type", appendKey(`"_type":"` + job.ManifestType + `"`)},
		{"duplicate tee", appendKey(`"tee":"sim"`)},
		{"case-variant key", renameKey("workdir", "Workdir")},
		{"unknown key", appendKey(`"extra":1`)},
	} {
		add("manifest.json "+e.name, CheckManifest, verifytest.Hooks{Statement: byproductEdit(0, e.edit)}, nil)
	}
	for _, e := range []struct {
		name string
		edit func([]byte) []byte
	}{
		{"duplicate exitCode", appendKey(`"exitCode":0`)},
		{"duplicate sourceCommit", appendKey(`"sourceCommit":"` + verifytest.SourceCommit + `"`)},
		{"case-variant key", renameKey("exitCode", "ExitCode")},
		{"unknown key", appendKey(`"extra":1`)},
	} {
		add("result.json "+e.name, CheckResult, verifytest.Hooks{Statement: byproductEdit(1, e.edit)}, nil)
	}
	for _, e := range []struct {
		name string
		edit func([]byte) []byte
	}{
		{"duplicate predicateType", appendKey(`"predicateType":"` + reference.PredicateType + `"`)},
		{"case-variant key", renameKey("subject", "Subject")},
		{"unknown key", appendKey(`"extra":1`)},
		{"duplicate toolVersion", func(b []byte) []byte {
			return bytes.Replace(b, []byte(`"toolVersion":`), []byte(`"toolVersion":"9.9.9","toolVersion":`), 1)
		}},
	} {
		add("reference-values statement "+e.name, CheckReference, verifytest.Hooks{ReferenceStatement: e.edit}, nil)
	}

	// Reference values documents.
	ref := func(name, want string, edit func(d *reference.Document)) {
		add("reference values "+name, want, verifytest.Hooks{Reference: edit}, nil)
	}
	ref("list another measurement", CheckMeasurement, func(d *reference.Document) { d.Values[0].Measurement = hex96 })
	ref("list another vCPU count", CheckMeasurement, func(d *reference.Document) { d.Values[0].VCPUs = 4 })
	ref("list another memory size", CheckMeasurement, func(d *reference.Document) { d.Values[0].MemoryMiB = 4096 })
	ref("list the measurement for snp only", CheckMeasurement, func(d *reference.Document) {
		d.Values[0] = reference.Value{TEE: attest.TEESNP, VCPUs: 2, Measurement: d.Values[0].Measurement, VCPUType: "EPYC-v4", GuestFeatures: "0x1",
			Firmware: &reference.File{Name: "OVMF.fd", SHA256: hex64x("8"), Size: 1}}
	})
	ref("name another kernel", CheckGuestImage, func(d *reference.Document) { d.GuestImage.Kernel.SHA256 = hex64x("a") })
	ref("name another initrd", CheckGuestImage, func(d *reference.Document) { d.GuestImage.Initrd.SHA256 = hex64x("b") })
	ref("name another cmdline", CheckGuestImage, func(d *reference.Document) { d.GuestImage.Cmdline = "console=hvc0" })
	ref("name another recipe", CheckGuestImage, func(d *reference.Document) { d.GuestImage.Recipe = hex64x("c") })
	add("reference values signed by another key", CheckReference, verifytest.Hooks{}, func(o *Options, f *verifytest.Fixture) { o.Reference.Key = k.HostKey })
	add("reference values signed by the host's own provenance key", CheckReference, verifytest.Hooks{}, func(o *Options, f *verifytest.Fixture) {
		b, err := reference.Sign(context.Background(), k.Host, f.Reference)
		if err != nil {
			panic(err)
		}
		os.WriteFile(f.ReferencePath, b, 0o644)
		o.Reference.Key = k.HostKey
	})
	add("reference values file corrupted", CheckReference, verifytest.Hooks{}, func(o *Options, f *verifytest.Fixture) { os.WriteFile(f.ReferencePath, []byte("{}"), 0o644) })
	add("reference values file missing", CheckReference, verifytest.Hooks{}, func(o *Options, f *verifytest.Fixture) { o.Reference.BundlePath = f.ReferencePath + ".missing" })
	add("reference values version pinned as other", CheckBuilderID, verifytest.Hooks{}, func(o *Options, f *verifytest.Fixture) {
		o.ExpectedBuilderID = "https://cloche.dev/builders/sim@v0.2.0"
	})

	// Flags and roots.
	opt := func(name, want string, edit func(o *Options, f *verifytest.Fixture)) {
		add("options "+name, want, verifytest.Hooks{}, edit)
	}
	opt("no measurement source", CheckMeasurement, func(o *Options, f *verifytest.Fixture) { o.Reference = ReferenceOptions{} })
	opt("skip contradicts a source", CheckOptions, func(o *Options, f *verifytest.Fixture) { o.InsecureSkipMeasurement = true })
	opt("pinned measurement differs", CheckMeasurement, func(o *Options, f *verifytest.Fixture) { o.ExpectedMeasurements = [][]byte{make([]byte, 48)} })
	opt("pinned measurement of TDX size for sim", CheckMeasurement, func(o *Options, f *verifytest.Fixture) { o.ExpectedMeasurements = [][]byte{make([]byte, 192)} })
	opt("pinned measurement of odd size", CheckOptions, func(o *Options, f *verifytest.Fixture) { o.ExpectedMeasurements = [][]byte{make([]byte, 47)} })
	opt("no bundle", CheckOptions, func(o *Options, f *verifytest.Fixture) { o.BundlePath = "" })
	opt("no key", CheckOptions, func(o *Options, f *verifytest.Fixture) { o.PublicKey = nil })
	opt("wrong key", CheckSignature, func(o *Options, f *verifytest.Fixture) {
		other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		o.PublicKey = other.Public()
	})
	opt("simulated not allowed", CheckSimulated, func(o *Options, f *verifytest.Fixture) { o.AllowSimulated = false; o.SimRoots = nil })
	opt("allowed without a root", CheckOptions, func(o *Options, f *verifytest.Fixture) { o.SimRoots = nil })
	for _, role := range []string{"VCEK", "ASK"} {
		role := role
		opt("sim root is the "+role, CheckOptions, func(o *Options, f *verifytest.Fixture) {
			der := k.SP.Chain().VCEK
			if role == "ASK" {
				der = k.SP.Chain().ASK
			}
			c, _ := x509.ParseCertificate(der)
			o.SimRoots = []*x509.Certificate{c}
		})
	}
	opt("sim root of another secure processor", CheckChain, func(o *Options, f *verifytest.Fixture) {
		other, err := verifytest.NewKit(filepath.Join(f.Dir, "other"))
		if err != nil {
			panic(err)
		}
		o.SimRoots = []*x509.Certificate{other.SimRoot()}
	})
	opt("source tree", CheckSourceTree, func(o *Options, f *verifytest.Fixture) { o.ExpectedSourceTree = hex64x("0")[:40] })
	opt("source commit", CheckSourceCommit, func(o *Options, f *verifytest.Fixture) { o.ExpectedSourceCommit = hex64x("0")[:40] })
	opt("builder of another TEE", CheckBuilderID, func(o *Options, f *verifytest.Fixture) { o.ExpectedBuilderID = "https://cloche.dev/builders/snp" })
	opt("toolchain pin", CheckPinToolchain, func(o *Options, f *verifytest.Fixture) { o.Pins.ToolchainDigest = hex64x("0") })
	opt("toolchain pin on the host-claimed image SHA-256", CheckPinToolchain, func(o *Options, f *verifytest.Fixture) {
		o.Pins.ToolchainDigest = f.Manifest.Toolchain.ImageSHA256
	})
	opt("ACPI tables pin", CheckPinACPI, func(o *Options, f *verifytest.Fixture) { o.Pins.ACPITables = hex64x("a") })
	opt("ACPI tables pin malformed", CheckOptions, func(o *Options, f *verifytest.Fixture) { o.Pins.ACPITables = "abc" })
	opt("toolchain pin malformed", CheckOptions, func(o *Options, f *verifytest.Fixture) { o.Pins.ToolchainDigest = "xyz" })
	opt("RTMR0 events pinned on sim evidence", CheckRTMR0, func(o *Options, f *verifytest.Fixture) { o.Pins.RTMR0Events = []string{hex64x("a") + hex64x("a")[:32]} })
	opt("RTMR0 event pin malformed", CheckOptions, func(o *Options, f *verifytest.Fixture) { o.Pins.RTMR0Events = []string{"abc"} })
	opt("RTMR0 pinned and skipped", CheckOptions, func(o *Options, f *verifytest.Fixture) {
		o.EvidencePolicy.TDX.RTMR[0] = make([]byte, 48)
		o.UnsafeAllowAnyRTMR0 = true
	})
	opt("command pin", CheckPinCommand, func(o *Options, f *verifytest.Fixture) { o.Pins.Command = []string{"make", "all"} })
	opt("command pin prefix", CheckPinCommand, func(o *Options, f *verifytest.Fixture) { o.Pins.Command = []string{"mak"} })
	opt("env pin value", CheckPinEnv, func(o *Options, f *verifytest.Fixture) { o.Pins.Env = map[string]string{"CC": "clang"} })
	opt("env pin missing", CheckPinEnv, func(o *Options, f *verifytest.Fixture) { o.Pins.Env = map[string]string{"CFLAGS": "-O2"} })
	opt("env exact", CheckPinEnv, func(o *Options, f *verifytest.Fixture) { o.Pins.Env = map[string]string{}; o.Pins.EnvExact = true })
	opt("platform allow-list", CheckPlatform, func(o *Options, f *verifytest.Fixture) {
		o.EvidencePolicy.AllowedPlatforms = []string{hex64x("0") + hex64x("0")}
	})
	opt("minimum TCB above", CheckTCB, func(o *Options, f *verifytest.Fixture) {
		o.EvidencePolicy.MinimumTCB = &verifier.SNPTCB{Microcode: 255}
	})
	opt("reference values and guest image", CheckOptions, func(o *Options, f *verifytest.Fixture) { o.Reference.GuestImageDir = f.Dir })
	opt("signer workflow short ref", CheckOptions, func(o *Options, f *verifytest.Fixture) {
		o.Identity = &Identity{SourceURI: "github.com/example/hello", SignerWorkflow: "example/hello/.github/workflows/r.yml@v1"}
	})
	opt("source repository", CheckSourceRepository, func(o *Options, f *verifytest.Fixture) { o.Identity = &Identity{SourceURI: "github.com/evil/hello"} })
	// A key-signed bundle binds no repository: the manifest's own is refused too.
	opt("source repository of a key-signed bundle", CheckSourceRepository, func(o *Options, f *verifytest.Fixture) {
		o.Identity = &Identity{SourceURI: "github.com/example/hello"}
	})
	opt("source tag", CheckSourceTag, func(o *Options, f *verifytest.Fixture) { o.ExpectedSourceTag = "v2" })
	opt("source tag case", CheckSourceTag, func(o *Options, f *verifytest.Fixture) { o.ExpectedSourceTag = "V1" })
	opt("source commit of another tree", CheckSourceCommit, func(o *Options, f *verifytest.Fixture) {
		o.ExpectedSourceCommit = source.FormatSHA1.ObjectID("commit", bytes.Replace(verifytest.CommitObject, []byte(verifytest.SourceTree), []byte(hex64x("4")[:40]), 1))
	})
	opt("embedded references: only a nil entry", CheckMeasurement, func(o *Options, f *verifytest.Fixture) {
		o.Reference = ReferenceOptions{}
		o.EmbeddedReferences = []*reference.Document{nil}
	})
	opt("embedded references without the measurement", CheckMeasurement, func(o *Options, f *verifytest.Fixture) {
		d := *f.Reference
		d.Values = []reference.Value{d.Values[0]}
		d.Values[0].Measurement = hex96
		o.Reference = ReferenceOptions{}
		o.EmbeddedReferences = []*reference.Document{&d}
	})
	return c
}

const hex96 = "111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111"

func hex64x(digit string) string { return string(bytes.Repeat([]byte(digit), 64)) }

// mbzOffsets are reserved report bytes (VERSION 3 layout) that must be zero.
func mbzOffsets() []int {
	var out []int
	for off := 0x4C; off < 0x50; off++ {
		out = append(out, off)
	}
	for off := 0x18B; off < 0x1A0; off += 2 {
		out = append(out, off)
	}
	out = append(out, 0x1EB, 0x1EF)
	for off := 0x208; off < 0x2A0; off += 8 {
		out = append(out, off)
	}
	return out
}

// byproductEdit edits the content of byproduct i (0 manifest, 1 result record).
func byproductEdit(i int, edit func([]byte) []byte) func([]byte) []byte {
	return func(b []byte) []byte {
		var doc map[string]any
		if err := json.Unmarshal(b, &doc); err != nil {
			panic(err)
		}
		bp := doc["predicate"].(map[string]any)["runDetails"].(map[string]any)["byproducts"].([]any)[i].(map[string]any)
		raw, _ := base64.StdEncoding.DecodeString(bp["content"].(string))
		bp["content"] = base64.StdEncoding.EncodeToString(edit(raw))
		out, _ := json.Marshal(doc)
		return out
	}
}

// guestEdit edits the guest-image resolved dependency of the statement.
func guestEdit(v any, path ...any) func([]byte) []byte {
	return func(b []byte) []byte {
		var doc map[string]any
		if err := json.Unmarshal(b, &doc); err != nil {
			panic(err)
		}
		deps := doc["predicate"].(map[string]any)["buildDefinition"].(map[string]any)["resolvedDependencies"].([]any)
		for i, d := range deps {
			if d.(map[string]any)["name"] == "guest-image" {
				full := append([]any{"predicate", "buildDefinition", "resolvedDependencies", i}, path...)
				return editJSON(full, v, false)(b)
			}
		}
		panic("no guest-image dependency")
	}
}

// TestTamperCorpus: every mutation fails with its own check; none is accepted.
func TestTamperCorpus(t *testing.T) {
	k := testKit(t)
	base, err := k.Build(t.TempDir(), verifytest.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := Verify(context.Background(), kitOptions(k, base)); err != nil {
		t.Fatalf("the untampered fixture fails: %v", err)
	} else if res.BuilderID != "https://cloche.dev/builders/sim@v0.1.0" || res.ReferenceMatch == "" {
		t.Fatalf("untampered result %+v", res)
	}
	corpus := tamperCorpus(t, k)
	if len(corpus) < 300 {
		t.Fatalf("the corpus has %d mutations, want at least 300", len(corpus))
	}
	names := map[string]bool{}
	accepted := 0
	for _, c := range corpus {
		if names[c.name] {
			t.Fatalf("mutation %q twice", c.name)
		}
		names[c.name] = true
		t.Run(c.name, func(t *testing.T) {
			f, err := k.Build(t.TempDir(), c.hooks)
			if err != nil {
				t.Fatalf("building the fixture: %v", err)
			}
			o := kitOptions(k, f)
			if c.opts != nil {
				c.opts(&o, f)
			}
			res, err := Verify(context.Background(), o)
			if err == nil {
				accepted++
				t.Fatalf("ACCEPTED: %s", res.Summary())
			}
			var ve *Error
			if !errors.As(err, &ve) || ve.Check != c.want {
				t.Fatalf("failed check %v, want %q", err, c.want)
			}
			if last := res.Checks[len(res.Checks)-1]; last.Name != c.want || last.Outcome != Failed {
				t.Fatalf("last recorded check %+v, want %s failed", last, c.want)
			}
		})
	}
	t.Logf("%d mutations, %d accepted", len(corpus), accepted)
}

// TestStatementBuilderVersionUnbound: with only a pinned measurement nothing binds the
// release, so a statement claiming any version passes with that version listed as unbound
// and absent from the verified builder; the statement's TEE is still checked.
func TestStatementBuilderVersionUnbound(t *testing.T) {
	k := testKit(t)
	claim := verifytest.Hooks{Statement: func(b []byte) []byte {
		b = editJSON([]any{"predicate", "runDetails", "builder", "id"}, "https://cloche.dev/builders/sim@v9.9.9", false)(b)
		return editJSON([]any{"predicate", "runDetails", "builder", "version"}, map[string]any{"cloche": "9.9.9"}, false)(b)
	}}
	f, err := k.Build(t.TempDir(), claim)
	if err != nil {
		t.Fatal(err)
	}
	o := kitOptions(k, f)
	o.Reference = ReferenceOptions{}
	o.ExpectedMeasurements = [][]byte{f.Measurement[:]}
	res, err := Verify(context.Background(), o)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if res.BuilderID != "https://cloche.dev/builders/sim" || res.StatementBuilderID != "https://cloche.dev/builders/sim@v9.9.9" {
		t.Errorf("builder %q, statement's %q", res.BuilderID, res.StatementBuilderID)
	}
	found := false
	for _, u := range res.Unbound {
		found = found || strings.HasPrefix(u, "runDetails.builder.id version")
	}
	if !found {
		t.Errorf("the statement's builder version is not listed as unbound: %v", res.Unbound)
	}
	o.ExpectedBuilderID = "https://cloche.dev/builders/sim@v9.9.9"
	if _, err := Verify(context.Background(), o); err == nil {
		t.Fatal("an unbound builder version was accepted as pinned")
	}
}
