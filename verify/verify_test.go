package verify

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/attest/simsp"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/verify/verifytest"
)

// One simulated secure processor per test binary: generating its RSA chain takes seconds.
var (
	spOnce sync.Once
	spDir  string
	sp     *simsp.SP
	spErr  error
)

func simSP(t *testing.T) *simsp.SP {
	t.Helper()
	spOnce.Do(func() {
		spDir, spErr = os.MkdirTemp("", "verify-test-sim-")
		if spErr == nil {
			sp, spErr = simsp.LoadOrCreate(spDir)
		}
	})
	if spErr != nil {
		t.Fatal(spErr)
	}
	return sp
}

func TestMain(m *testing.M) {
	code := m.Run()
	if spDir != "" {
		os.RemoveAll(spDir)
	}
	os.Exit(code)
}

// fixture is a complete, valid provenance made in-process exactly as build.Run makes it,
// with the simulated secure processor signing the report.
type fixture struct {
	dir, artifact, bundle string
	opts                  Options
	measurement           [48]byte
	signer                *provenance.KeySigner
}

type tweak struct {
	manifest    func(*job.Manifest)
	result      func(*job.Result)
	guestMeas   string // overrides the guest-image measurement in the statement
	reportLabel attest.TEE
}

func newFixture(t *testing.T, tw tweak) *fixture {
	t.Helper()
	s := simSP(t)
	dir := t.TempDir()
	artifact := filepath.Join(dir, "hello")
	content := []byte("#!/bin/true\nhello\n")
	if err := os.WriteFile(artifact, content, 0o755); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(content)

	m := &job.Manifest{Type: job.ManifestType, InvocationID: "test:" + t.Name(), TEE: "sim",
		Source:    job.Source{Repository: "https://github.com/example/hello", Ref: "refs/tags/v1", CommitObject: verifytest.CommitObject, ArchiveSHA256: strings.Repeat("a", 64), ArchiveSize: 10240},
		Toolchain: job.Toolchain{Name: "busybox", ImageSHA256: strings.Repeat("b", 64), ImageSize: 3 * 4096, VerityRootHash: strings.Repeat("d", 64), VeritySalt: "00", DataBlocks: 2, HashOffset: 8192},
		Command:   []string{"make"}, Workdir: ".", Artifacts: []string{}, TimeoutSeconds: 60, MaxOutputBytes: 1 << 20}
	if tw.manifest != nil {
		tw.manifest(m)
	}
	mb, err := job.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	md := job.ManifestDigest(mb)
	r := &job.Result{Type: job.ResultType, ManifestSHA256: hex.EncodeToString(md[:]), SourceTree: verifytest.SourceTree, SourceCommit: verifytest.SourceCommit,
		Artifacts: []job.Artifact{{Path: "hello", SHA256: hex.EncodeToString(sum[:]), Size: int64(len(content))}},
		Log:       job.Digest{SHA256: strings.Repeat("f", 64), Size: 3}, DurationMillis: 5}
	if tw.result != nil {
		tw.result(r)
	}
	rb, err := job.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var meas [48]byte
	copy(meas[:], []byte("cloche verify test measurement, 48 bytes long!!!"))
	report, err := s.Report(simsp.Launch{Measurement: meas, HostData: md}, job.ReportData(rb))
	if err != nil {
		t.Fatal(err)
	}
	label := attest.TEESim
	if tw.reportLabel != "" {
		label = tw.reportLabel
	}
	ev := &attest.Evidence{TEE: label, Report: report}
	if err := s.Complete(ev); err != nil && label == attest.TEESim {
		t.Fatal(err)
	}
	evb, err := ev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	gm := hex.EncodeToString(meas[:])
	if tw.guestMeas != "" {
		gm = tw.guestMeas
	}
	stmt, err := provenance.NewStatement(provenance.Input{Manifest: mb, Result: rb, Evidence: evb,
		Guest:          provenance.GuestImage{KernelSHA256: strings.Repeat("1", 64), InitrdSHA256: strings.Repeat("2", 64), Cmdline: "console=ttyS0", Measurement: gm, VCPUs: 2, MemoryMiB: 2048},
		BuilderVersion: "0.1.0", StartedOn: time.Unix(1e9, 0), FinishedOn: time.Unix(1e9+5, 0)})
	if err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "key.pem")
	if err := provenance.GenerateKey(key, key+".pub"); err != nil {
		t.Fatal(err)
	}
	signer, err := provenance.LoadKeySigner(key)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := signer.SignStatement(context.Background(), stmt)
	if err != nil {
		t.Fatal(err)
	}
	bp := filepath.Join(dir, "provenance.sigstore.json")
	if err := os.WriteFile(bp, bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	pub, err := provenance.LoadPublicKey(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	root, err := x509.ParseCertificate(s.Chain().ARK)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{dir: dir, artifact: artifact, bundle: bp, measurement: meas, signer: signer,
		opts: Options{BundlePath: bp, PublicKey: pub, Artifacts: []string{artifact}, AllowSimulated: true, SimRoots: []*x509.Certificate{root},
			ExpectedMeasurements: [][]byte{meas[:]}, ExpectedSourceTree: verifytest.SourceTree, Pins: Pins{ToolchainDigest: m.Toolchain.VerityRootHash}}}
}

func wantCheck(t *testing.T, err error, check string, sentinel error, text string) {
	t.Helper()
	t.Logf("got: %v", err)
	var ve *Error
	if !errors.As(err, &ve) {
		t.Fatalf("err = %v, want a *verify.Error for check %q", err, check)
	}
	if ve.Check != check {
		t.Fatalf("failed check %q (%v), want %q", ve.Check, ve.Err, check)
	}
	if sentinel != nil && !errors.Is(err, sentinel) {
		t.Fatalf("err = %v, want it to wrap %v", err, sentinel)
	}
	if !strings.Contains(err.Error(), text) {
		t.Fatalf("err = %v, want it to contain %q", err, text)
	}
}

func TestVerifyPasses(t *testing.T) {
	f := newFixture(t, tweak{})
	res, err := Verify(context.Background(), f.opts)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Simulated || res.TEE != attest.TEESim || res.Measurement != hex.EncodeToString(f.measurement[:]) {
		t.Fatalf("result = %+v", res)
	}
	if s := res.Summary(); !strings.Contains(s, "SIMULATED") || !strings.Contains(s, "[hello]") {
		t.Fatalf("summary %q must name the artifact and say SIMULATED", s)
	}
}

func TestVerifyOptionErrors(t *testing.T) {
	f := newFixture(t, tweak{})
	for name, mutate := range map[string]func(*Options){
		"no bundle":           func(o *Options) { o.BundlePath = "" },
		"no key":              func(o *Options) { o.PublicKey = nil },
		"no artifacts":        func(o *Options) { o.Artifacts = nil },
		"opt-in without root": func(o *Options) { o.SimRoots = nil },
	} {
		t.Run(name, func(t *testing.T) {
			o := f.opts
			mutate(&o)
			_, err := Verify(context.Background(), o)
			wantCheck(t, err, CheckOptions, nil, "")
		})
	}
}

func TestVerifyRejects(t *testing.T) {
	other := newFixture(t, tweak{})
	cases := []struct {
		name     string
		tw       tweak
		opts     func(f *fixture, o *Options)
		check    string
		sentinel error
		text     string
	}{
		{name: "missing artifact file", opts: func(f *fixture, o *Options) { o.Artifacts = []string{filepath.Join(f.dir, "nope")} }, check: CheckArtifact, text: "nope"},
		{name: "artifact is a directory", opts: func(f *fixture, o *Options) { o.Artifacts = []string{f.dir} }, check: CheckArtifact, text: "not a regular file"},
		{name: "unreadable bundle", opts: func(f *fixture, o *Options) { o.BundlePath = filepath.Join(f.dir, "missing.json") }, check: CheckBundle, text: "missing.json"},
		{name: "bundle of another build", opts: func(f *fixture, o *Options) { o.BundlePath = other.bundle }, check: CheckSignature, text: ""},
		{name: "extra artifact not a subject", opts: func(f *fixture, o *Options) {
			p := filepath.Join(f.dir, "extra")
			os.WriteFile(p, []byte("x"), 0o644)
			o.Artifacts = append(o.Artifacts, p)
		}, check: CheckSubject, sentinel: ErrMismatchHash, text: "extra"},
		{name: "simulated without opt-in", opts: func(f *fixture, o *Options) { o.AllowSimulated = false; o.SimRoots = nil }, check: CheckSimulated, sentinel: attest.ErrSimulatedNotAllowed},
		{name: "simulated with a foreign root", opts: func(f *fixture, o *Options) {
			// The sim ARK of another state directory: generated separately, so it must not verify.
			d := t.TempDir()
			sp2, err := simsp.LoadOrCreate(d)
			if err != nil {
				t.Fatal(err)
			}
			root, _ := x509.ParseCertificate(sp2.Chain().ARK)
			o.SimRoots = []*x509.Certificate{root}
		}, check: CheckChain, sentinel: attest.ErrCertChain},
		{name: "measurement not allowed", opts: func(f *fixture, o *Options) { o.ExpectedMeasurements = [][]byte{make([]byte, 48)} }, check: CheckMeasurement, sentinel: attest.ErrMeasurement},
		{name: "source tree differs", opts: func(f *fixture, o *Options) { o.ExpectedSourceTree = strings.Repeat("0", 40) }, check: CheckSourceTree, sentinel: ErrMismatchSource, text: strings.Repeat("e", 40)},
		{name: "source commit differs", opts: func(f *fixture, o *Options) { o.ExpectedSourceCommit = strings.Repeat("0", 40) }, check: CheckSourceCommit, sentinel: ErrMismatchSource, text: verifytest.SourceCommit},
		{name: "no commit attested", tw: tweak{manifest: func(m *job.Manifest) { m.Source.CommitObject = nil }, result: func(r *job.Result) { r.SourceCommit = "" }}, opts: func(f *fixture, o *Options) { o.ExpectedSourceCommit = verifytest.SourceCommit }, check: CheckSourceCommit, sentinel: ErrMismatchSource, text: "attested none"},
		{name: "no tag attested", opts: func(f *fixture, o *Options) { o.ExpectedSourceTag = "v1" }, check: CheckSourceTag, sentinel: ErrMismatchSource, text: "lightweight"},
		{name: "guest-image dependency names another measurement", tw: tweak{guestMeas: strings.Repeat("ab", 48)}, check: CheckConsistency, sentinel: ErrMismatchBinding, text: "guest-image"},
		{name: "manifest claims snp for simulated evidence", tw: tweak{manifest: func(m *job.Manifest) { m.TEE = "snp" }}, check: CheckEvidenceTEE, sentinel: ErrMismatchBinding, text: `"snp"`},
		{name: "simulated report relabelled snp", tw: tweak{reportLabel: attest.TEESNP}, check: CheckChain, sentinel: attest.ErrCertChain},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, c.tw)
			o := f.opts
			if c.opts != nil {
				c.opts(f, &o)
			}
			_, err := Verify(context.Background(), o)
			wantCheck(t, err, c.check, c.sentinel, c.text)
		})
	}
}

// The source and the toolchain are the host's choices: a verification that names neither
// expectation fails before reading anything, and only the unsafe opt-outs, which then warn,
// accept any.
func TestVerifyRequiresSourceAndToolchainExpectations(t *testing.T) {
	f := newFixture(t, tweak{})
	for _, c := range []struct {
		name   string
		mutate func(*Options)
		check  string
	}{
		{"no source expectation", func(o *Options) { o.ExpectedSourceTree = "" }, CheckExpectSource},
		{"no toolchain pin", func(o *Options) { o.Pins.ToolchainDigest = "" }, CheckExpectToolchain},
		// The host can write an annotated tag object of any name for any commit.
		{"a tag name alone", func(o *Options) { o.ExpectedSourceTree, o.ExpectedSourceTag = "", "v1" }, CheckExpectSource},
		{"unsafe source with a source pin", func(o *Options) { o.UnsafeAllowAnySource = true }, CheckOptions},
		{"unsafe toolchain with a toolchain pin", func(o *Options) { o.UnsafeAllowAnyToolchain = true }, CheckOptions},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := f.opts
			o.BundlePath = filepath.Join(f.dir, "never-read.json") // the check runs before anything is read
			c.mutate(&o)
			res, err := Verify(context.Background(), o)
			sentinel := ErrNoExpectation
			if c.check == CheckOptions {
				sentinel = nil
			}
			wantCheck(t, err, c.check, sentinel, "")
			if len(res.Checks) != 1 || res.Checks[0].Name != c.check {
				t.Errorf("checks = %+v, want only the failed %s", res.Checks, c.check)
			}
		})
	}
	t.Run("unsafe opt-outs pass with warnings", func(t *testing.T) {
		o := f.opts
		o.ExpectedSourceTree, o.Pins.ToolchainDigest = "", ""
		o.UnsafeAllowAnySource, o.UnsafeAllowAnyToolchain = true, true
		res, err := Verify(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		w := strings.Join(res.Warnings, "\n")
		if !strings.Contains(w, "source NOT pinned") || !strings.Contains(w, "toolchain NOT pinned") {
			t.Errorf("warnings %q must say the source and toolchain were not pinned", w)
		}
		if !slices.Contains(res.Reported, "toolchain") || !slices.Contains(res.Reported, "source tree") {
			t.Errorf("reported %v must list the toolchain and source tree", res.Reported)
		}
	})
	t.Run("a commit or tag expectation is one", func(t *testing.T) {
		for _, mutate := range []func(*Options){
			func(o *Options) { o.ExpectedSourceTree, o.ExpectedSourceCommit = "", verifytest.SourceCommit },
		} {
			o := f.opts
			mutate(&o)
			if _, err := Verify(context.Background(), o); err != nil {
				t.Fatal(err)
			}
		}
	})
}
