package provenance

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/job"
)

// fixture is one finished build: real artifact files on disk, the job documents describing
// them, and real vendor evidence (go-sev-guest's Milan report and VCEK) as the evidence.
type fixture struct {
	manifest, result, evidence []byte
	m                          *job.Manifest
	r                          *job.Result
	in                         Input
}

func sha256Hex(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// goModCache locates the module cache, where the vendor test evidence ships.
func goModCache(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatalf("go env GOMODCACHE: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// realEvidence builds evidence JSON in attest.Evidence's shape around go-sev-guest's real
// Milan attestation report and VCEK certificate.
func realEvidence(t testing.TB) []byte {
	t.Helper()
	dir := filepath.Join(goModCache(t), "github.com/google/go-sev-guest@v0.15.0/verify/testdata")
	report, err := os.ReadFile(filepath.Join(dir, "attestation.bin"))
	if err != nil {
		t.Fatalf("reading vendor report: %v", err)
	}
	vcek, err := os.ReadFile(filepath.Join(dir, "vcek.testcer"))
	if err != nil {
		t.Fatalf("reading vendor VCEK: %v", err)
	}
	type certs struct {
		VCEK []byte `json:"vcek"`
	}
	ev, err := json.Marshal(struct {
		TEE    string `json:"tee"`
		Report []byte `json:"report"`
		Certs  certs  `json:"certs"`
	}{"snp", report, certs{vcek}})
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	dir := t.TempDir()
	files := map[string][]byte{
		"out/hello":      []byte("\x7fELF pretend binary built by make\n"),
		"out/README.txt": []byte("hello, attested world\n"),
		"out/NOTICE.txt": []byte("built inside a confidential VM\n"),
	}
	var artifacts []job.Artifact
	for _, name := range []string{"out/NOTICE.txt", "out/README.txt", "out/hello"} {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, files[name], 0o644); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		artifacts = append(artifacts, job.Artifact{Path: name, SHA256: sha256Hex(data), Size: int64(len(data))})
	}
	archive := bytes.Repeat([]byte("deterministic source archive "), 100)
	commit := sha1.Sum([]byte("commit"))
	tree := sha1.Sum([]byte("tree"))
	tagObject := sha1.Sum([]byte("tag"))
	image := bytes.Repeat([]byte{0x5a}, 4096)
	root := sha256.Sum256([]byte("verity root"))

	m := &job.Manifest{
		Type:         job.ManifestType,
		InvocationID: "https://github.com/cloche-dev/hello/actions/runs/42/attempts/1",
		TEE:          "sim",
		Source: job.Source{
			Repository:    "https://github.com/cloche-dev/hello",
			Ref:           "refs/tags/v1.0.0",
			ArchiveSHA256: sha256Hex(archive),
			ArchiveSize:   int64(len(archive)),
		},
		Toolchain: job.Toolchain{
			Name:           "debian-12-gcc",
			ImageSHA256:    sha256Hex(image),
			ImageSize:      12 * 4096,
			VerityRootHash: hex.EncodeToString(root[:]),
			VeritySalt:     "0011223344556677",
			DataBlocks:     10,
			HashOffset:     10 * 4096,
		},
		Command:         []string{"make", "-C", "src", "hello"},
		Workdir:         ".",
		Env:             map[string]string{"CFLAGS": "-O2", "LC_ALL": "C"},
		Artifacts:       []string{"out/hello", "out/*.txt"},
		SourceDateEpoch: 1700000000,
		TimeoutSeconds:  600,
		MaxOutputBytes:  1 << 30,
	}
	manifest, err := job.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	log := []byte("make: Entering directory 'src'\n")
	r := &job.Result{
		Type:            job.ResultType,
		ManifestSHA256:  sha256Hex(manifest),
		SourceTree:      hex.EncodeToString(tree[:]),
		SourceCommit:    hex.EncodeToString(commit[:]),
		SourceTag:       "v1.0.0",
		SourceTagObject: hex.EncodeToString(tagObject[:]),
		Artifacts:       artifacts,
		Log:             job.Digest{SHA256: sha256Hex(log), Size: int64(len(log))},
		DurationMillis:  1234,
	}
	result, err := job.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	// Parse back so the fixture's documents are exactly what a verifier would get.
	if m, err = job.ParseManifest(manifest); err != nil {
		t.Fatal(err)
	}
	if r, err = job.ParseResult(result); err != nil {
		t.Fatal(err)
	}
	evidence := realEvidence(t)
	measurement := sha512.Sum384([]byte("launch measurement"))
	started := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	return &fixture{
		manifest: manifest, result: result, evidence: evidence, m: m, r: r,
		in: Input{
			Manifest: manifest,
			Result:   result,
			Evidence: evidence,
			Guest: GuestImage{
				KernelSHA256: sha256Hex([]byte("vmlinuz")),
				InitrdSHA256: sha256Hex([]byte("initrd")),
				Cmdline:      "console=ttyS0 panic=-1",
				Measurement:  hex.EncodeToString(measurement[:]),
				VCPUs:        2,
				MemoryMiB:    2048,
			},
			BuilderVersion: "0.1.0",
			StartedOn:      started,
			FinishedOn:     started.Add(95 * time.Second),
		},
	}
}

func (f *fixture) statement(t testing.TB) []byte {
	t.Helper()
	st, err := NewStatement(f.in)
	if err != nil {
		t.Fatalf("NewStatement: %v", err)
	}
	return st
}

// mutate decodes a statement generically, lets edit change it, and encodes it again;
// numbers keep their text.
func mutate(t testing.TB, stmt []byte, edit func(st map[string]any)) []byte {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(stmt))
	dec.UseNumber()
	var st map[string]any
	if err := dec.Decode(&st); err != nil {
		t.Fatal(err)
	}
	edit(st)
	out, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Accessors into a generically decoded statement.
func obj(v any, key string) map[string]any { return v.(map[string]any)[key].(map[string]any) }
func arr(v any, key string) []any          { return v.(map[string]any)[key].([]any) }
func pred(st map[string]any) map[string]any {
	return obj(st, "predicate")
}
func buildDef(st map[string]any) map[string]any   { return obj(pred(st), "buildDefinition") }
func runDetails(st map[string]any) map[string]any { return obj(pred(st), "runDetails") }
func external(st map[string]any) map[string]any   { return obj(buildDef(st), "externalParameters") }

// named finds the element of a resource descriptor list with the given name.
func named(list []any, name string) map[string]any {
	for _, e := range list {
		if m := e.(map[string]any); m["name"] == name {
			return m
		}
	}
	return nil
}
