package rebuild

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/internal/host"
	"github.com/cloche-dev/cloche/internal/image/toolchain"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/source"
	"github.com/cloche-dev/cloche/verify"
	"github.com/cloche-dev/cloche/verify/verifytest"
)

func TestCompare(t *testing.T) {
	a, b, c := strings.Repeat("a", 64), strings.Repeat("b", 64), strings.Repeat("c", 64)
	for _, tc := range []struct {
		name      string
		want, got map[string]string
		lines     []string
		matched   bool
	}{
		{"match", map[string]string{"hello": a, "SHA256SUMS": b}, map[string]string{"SHA256SUMS": b, "hello": a},
			[]string{"MATCH SHA256SUMS sha256:" + b, "MATCH hello sha256:" + a}, true},
		{"differ", map[string]string{"hello": a}, map[string]string{"hello": c},
			[]string{"DIFFER hello want sha256:" + a + " got sha256:" + c}, false},
		{"missing", map[string]string{"hello": a, "lib/x.so": b}, map[string]string{"hello": a},
			[]string{"MATCH hello sha256:" + a, "MISSING lib/x.so want sha256:" + b}, false},
		{"extra", map[string]string{"hello": a}, map[string]string{"hello": a, "stamp": c},
			[]string{"MATCH hello sha256:" + a, "EXTRA stamp got sha256:" + c}, false},
		{"odd name quoted", map[string]string{"a b\nMATCH x": a}, map[string]string{"a b\nMATCH x": a},
			[]string{`MATCH "a b\nMATCH x" sha256:` + a}, true},
		{"nothing at all", map[string]string{}, map[string]string{}, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Compare(tc.want, tc.got)
			var lines []string
			for _, l := range r.Lines {
				lines = append(lines, l.String())
			}
			if strings.Join(lines, "\n") != strings.Join(tc.lines, "\n") {
				t.Fatalf("lines:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(tc.lines, "\n"))
			}
			if r.Matched() != tc.matched {
				t.Fatalf("Matched() = %v, want %v", r.Matched(), tc.matched)
			}
			err := r.Err()
			if tc.matched {
				if err != nil || r.Summary() != "REBUILD MATCHED" {
					t.Fatalf("Err() = %v, Summary() = %q; want nil and REBUILD MATCHED", err, r.Summary())
				}
				return
			}
			if !errors.Is(err, ErrRebuildMismatch) || r.Summary() != "REBUILD DIFFERED" {
				t.Fatalf("Err() = %v, Summary() = %q; want ErrRebuildMismatch and REBUILD DIFFERED", err, r.Summary())
			}
		})
	}
}

var (
	kitOnce sync.Once
	kit     *verifytest.Kit
	kitErr  error
)

// sharedKit is one verifytest kit per test binary (its RSA-4096 chain takes seconds).
func sharedKit(t *testing.T) *verifytest.Kit {
	t.Helper()
	kitOnce.Do(func() {
		dir, err := os.MkdirTemp("", "rebuild-kit-")
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

// fakeToolchain writes a toolchain image file and its metadata as Load reads them (three
// blocks of random data: the rebuild checks digests, nothing mounts it).
func fakeToolchain(t *testing.T, path string) *job.Toolchain {
	t.Helper()
	data := make([]byte, 3*4096)
	rand.Read(data)
	root := make([]byte, 32)
	rand.Read(root)
	sum := sha256.Sum256(data)
	tc := &job.Toolchain{Name: "fake", ImageSHA256: hex.EncodeToString(sum[:]), ImageSize: int64(len(data)),
		VerityRootHash: hex.EncodeToString(root), VeritySalt: strings.Repeat("5", 64), DataBlocks: 2, HashOffset: 8192}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	meta, err := json.Marshal(tc)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".json", meta, 0o644); err != nil {
		t.Fatal(err)
	}
	return tc
}

// fixture is a provenance of a build of src with toolchain tc, signed by the kit's host
// key, and the Options a rebuild of it takes.
type fixture struct {
	f   *verifytest.Fixture
	src string
	tc  *job.Toolchain
	o   Options
}

const epoch = 1700000000

func newFixture(t *testing.T, h verifytest.Hooks) *fixture {
	t.Helper()
	return newFixtureOf(t, testfixture.WriteTree(t, sourceFiles), h)
}

var sourceFiles = map[string]string{"Makefile": "hello:\n\techo hi > hello\n", "go.mod": "module x\n", "go.sum": ""}

// newFixtureOf is newFixture of the source directory src, as it is now.
func newFixtureOf(t *testing.T, src string, h verifytest.Hooks) *fixture {
	t.Helper()
	k := sharedKit(t)
	sum, size, err := source.Pack(context.Background(), src, epoch, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	tcPath := filepath.Join(state, "toolchains", "k1", toolchain.ImageFile)
	tc := fakeToolchain(t, tcPath)
	hook := h.Manifest
	h.Manifest = func(m *job.Manifest) {
		// The kit's fixture names a commit of a tree this source is not.
		m.Source = job.Source{ArchiveSHA256: sum, ArchiveSize: size}
		m.Toolchain = *tc
		m.SourceDateEpoch = epoch
		m.Env = map[string]string{"CC": "gcc", "LANGUAGE": "C"}
		m.Rlimits = job.Rlimits{OpenFiles: 1024}
		if hook != nil {
			hook(m)
		}
	}
	tree, err := source.TreeID(src)
	if err != nil {
		t.Fatal(err)
	}
	resultHook := h.Result
	h.Result = func(r *job.Result) {
		r.SourceTree, r.SourceCommit, r.SourceTag, r.SourceTagObject = tree, "", "", ""
		if resultHook != nil {
			resultHook(r)
		}
	}
	f, err := k.Build(filepath.Join(t.TempDir(), "orig"), h)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{f: f, src: src, tc: tc, o: Options{Bundle: f.BundlePath, SourceDir: src, OutDir: filepath.Join(t.TempDir(), "rebuilt"),
		Host: host.Config{StateDir: state}}}
}

// The recorded inputs are accepted, and the plan is the recorded job: the manifest's
// command, environment, limits and epoch, the statement's vCPUs and memory, the cached
// toolchain with the recorded root hash.
func TestPrepareAcceptsTheRecordedInputs(t *testing.T) {
	fx := newFixture(t, verifytest.Hooks{})
	p, err := Prepare(context.Background(), fx.o)
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	s, m := p.Spec, p.Expect.Manifest
	if strings.Join(s.Command, " ") != "make" || s.Env["LANGUAGE"] != "C" || s.Rlimits != m.Rlimits || s.SourceDateEpoch != epoch ||
		s.TimeoutSeconds != m.TimeoutSeconds || s.MaxOutputBytes != m.MaxOutputBytes || s.VCPUs != verifytest.Guest.VCPUs ||
		s.MemoryMiB != verifytest.Guest.MemoryMiB || s.Deps != "" || s.Git != nil || s.TEE != "" {
		t.Fatalf("spec %+v is not the recorded job (manifest %+v)", s, m)
	}
	if p.Toolchain.VerityRootHash != fx.tc.VerityRootHash || filepath.Base(filepath.Dir(p.ToolchainPath)) != "k1" {
		t.Fatalf("toolchain %s (%+v), want the cached k1 image", p.ToolchainPath, p.Toolchain)
	}
	if p.Expect.SignatureChecked {
		t.Fatal("no key given, yet SignatureChecked")
	}
	// With the host's key, the signature is checked too.
	o := fx.o
	o.BundleKey = sharedKit(t).Trust().HostKey
	if p, err := Prepare(context.Background(), o); err != nil || !p.Expect.SignatureChecked {
		t.Fatalf("Prepare with the signing key: %v", err)
	}
}

func wantInputError(t *testing.T, err error, field string, says ...string) {
	t.Helper()
	var ie *InputError
	if !errors.As(err, &ie) || !errors.Is(err, ErrInput) {
		t.Fatalf("err = %v, want an *InputError", err)
	}
	if ie.Field != field {
		t.Fatalf("err = %v names field %s, want %s", err, ie.Field, field)
	}
	for _, s := range says {
		if !strings.Contains(err.Error(), s) {
			t.Fatalf("err = %v, want it to say %q", err, s)
		}
	}
}

// A source that is not the recorded tree is refused before anything else is touched,
// naming the manifest field and both digests (and the trees).
func TestPrepareRefusesAnotherSource(t *testing.T) {
	fx := newFixture(t, verifytest.Hooks{})
	if err := os.WriteFile(filepath.Join(fx.src, "Makefile"), []byte("hello:\n\techo ho > hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, _, err := source.Pack(context.Background(), fx.src, epoch, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Prepare(context.Background(), fx.o)
	wantInputError(t, err, "SourceDir", "source.archiveSha256", "sha256:"+got, "sha256:"+fx.f.Manifest.Source.ArchiveSHA256, "its git tree is ")

	// An empty directory more: git's tree is the same, the archive is not.
	fx = newFixture(t, verifytest.Hooks{})
	if err := os.Mkdir(filepath.Join(fx.src, "build"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = Prepare(context.Background(), fx.o)
	wantInputError(t, err, "SourceDir", "source.archiveSha256", "is the recorded one")
}

// A toolchain image other than the recorded one is refused naming the field and both
// digests; without --toolchain, one not in the cache is refused naming the root hash.
func TestPrepareRefusesAnotherToolchain(t *testing.T) {
	fx := newFixture(t, verifytest.Hooks{})
	other := filepath.Join(t.TempDir(), "other.img")
	otc := fakeToolchain(t, other)
	o := fx.o
	o.Toolchain = other
	_, err := Prepare(context.Background(), o)
	wantInputError(t, err, "Toolchain", "toolchain.verityRootHash", "sha256:"+otc.VerityRootHash, "sha256:"+fx.tc.VerityRootHash)

	// The recorded image given by path is accepted.
	o.Toolchain = filepath.Join(fx.o.Host.StateDir, "toolchains", "k1", toolchain.ImageFile)
	if _, err := Prepare(context.Background(), o); err != nil {
		t.Fatalf("Prepare with the recorded image: %v", err)
	}

	// An image whose bytes changed after its metadata was written.
	b, _ := os.ReadFile(o.Toolchain)
	b[0] ^= 1
	if err := os.WriteFile(o.Toolchain, b, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Prepare(context.Background(), o)
	wantInputError(t, err, "Toolchain", "does not match its recorded digest")
	if !errors.Is(err, toolchain.ErrModified) {
		t.Fatalf("err = %v, want toolchain.ErrModified", err)
	}

	// Nothing in the cache has the recorded root hash.
	fx = newFixture(t, verifytest.Hooks{})
	if err := os.RemoveAll(filepath.Join(fx.o.Host.StateDir, "toolchains")); err != nil {
		t.Fatal(err)
	}
	fakeToolchain(t, filepath.Join(fx.o.Host.StateDir, "toolchains", "k2", toolchain.ImageFile))
	_, err = Prepare(context.Background(), fx.o)
	wantInputError(t, err, "Toolchain", "toolchain.verityRootHash "+fx.tc.VerityRootHash, "not in the image cache")
	if !errors.Is(err, toolchain.ErrNotCached) {
		t.Fatalf("err = %v, want toolchain.ErrNotCached", err)
	}
}

// A bundle that is not a well-formed, self-consistent cloche provenance is refused at
// once, naming the check: unreadable, not a bundle, a statement that says other than its
// result record, or signed by another key than the one given.
func TestPrepareRefusesMalformedBundles(t *testing.T) {
	fx := newFixture(t, verifytest.Hooks{})
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good, err := os.ReadFile(fx.f.BundlePath)
	if err != nil {
		t.Fatal(err)
	}
	// A subject digest altered in the statement, re-signed: the result record says other.
	lying := newFixture(t, verifytest.Hooks{Statement: func(stmt []byte) []byte {
		return []byte(strings.Replace(string(stmt), `"sha256":"`+sha256Hex(verifytest.ArtifactContent), `"sha256":"`+strings.Repeat("0", 64), 1))
	}})
	otherKey, err := provenance.LoadPublicKey(sharedKit(t).Trust().ReleaseKeyPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, bundle string
		key          any
		check        string
	}{
		{"no such file", filepath.Join(dir, "missing.json"), nil, verify.CheckBundle},
		{"not JSON", write("garbage.json", []byte("not a bundle")), nil, verify.CheckBundle},
		{"truncated", write("truncated.json", good[:len(good)/2]), nil, verify.CheckBundle},
		{"statement disagrees with its result record", lying.f.BundlePath, nil, verify.CheckConsistency},
		{"signed by another key", fx.f.BundlePath, otherKey, verify.CheckSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := fx.o
			o.Bundle = tc.bundle
			if tc.key != nil {
				o.BundleKey = tc.key
			}
			start := time.Now()
			_, err := Prepare(context.Background(), o)
			if d := time.Since(start); d > time.Second {
				t.Errorf("refused after %s, want within a second", d)
			}
			wantInputError(t, err, "Bundle")
			var ve *verify.Error
			if !errors.As(err, &ve) || ve.Check != tc.check {
				t.Fatalf("err = %v, want verify check %s", err, tc.check)
			}
		})
	}
}

// The output directory may not hold the bundle: the rebuild would overwrite it.
func TestPrepareRefusesTheBundlesDirectoryAsOutput(t *testing.T) {
	fx := newFixture(t, verifytest.Hooks{})
	for _, out := range []string{fx.f.Dir, filepath.Dir(fx.f.Dir)} {
		o := fx.o
		o.OutDir = out
		_, err := Prepare(context.Background(), o)
		wantInputError(t, err, "OutDir", "holds the bundle")
	}
}

// Recorded Go dependencies: the plan fetches them again (Spec.Deps) for the working
// directory's go.sum, the lockfile the manifest names (job validation holds it there).
func TestPrepareDeps(t *testing.T) {
	fx := newFixture(t, verifytest.Hooks{Manifest: func(m *job.Manifest) {
		m.Deps = &job.Deps{Kind: job.DepsGo, Lockfile: "go.sum", ArchiveSHA256: strings.Repeat("9", 64), ArchiveSize: 10240}
	}})
	p, err := Prepare(context.Background(), fx.o)
	if err != nil || p.Spec.Deps != job.DepsGo {
		t.Fatalf("Prepare: %v, want a plan with deps go", err)
	}
	// The lockfile the deps path fetches for must be in the source.
	if err := os.Remove(filepath.Join(fx.src, "go.sum")); err != nil {
		t.Fatal(err)
	}
	_, err = Prepare(context.Background(), fx.o)
	wantInputError(t, err, "SourceDir", "go.sum")
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// The recorded commit is sent again, and a source that packs to the recorded archive but is
// not the commit's tree is refused before any VM, as cloche run --commit refuses it.
func TestPrepareChecksTheRecordedCommit(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("no git")
	}
	src := testfixture.WriteTree(t, sourceFiles)
	for _, args := range [][]string{{"init", "-q"}, {"add", "."}, {"-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "one"}} {
		if out, err := exec.Command("git", append([]string{"-C", src}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	git, err := source.ReadGitObjects(context.Background(), src, "HEAD", "")
	if err != nil {
		t.Fatal(err)
	}
	withCommit := verifytest.Hooks{Manifest: func(m *job.Manifest) { m.Source.SetGitObjects(git) }}
	p, err := Prepare(context.Background(), newFixtureOf(t, src, withCommit).o)
	if err != nil {
		t.Fatalf("Prepare of the committed tree: %v", err)
	}
	if p.Spec.Git == nil || string(p.Spec.Git.Commit) != string(git.Commit) {
		t.Fatalf("plan's git objects %+v, want the recorded commit", p.Spec.Git)
	}

	// A change on top of the commit, recorded as the archive: the archive matches, the
	// commit does not.
	if err := os.WriteFile(filepath.Join(src, "Makefile"), []byte("hello:\n\techo ho > hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Prepare(context.Background(), newFixtureOf(t, src, withCommit).o)
	wantInputError(t, err, "SourceDir", "differs from commit")
}
