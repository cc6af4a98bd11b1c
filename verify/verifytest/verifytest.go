// Package verifytest is cloche's test kit for code that consumes cloche provenance, in the
// spirit of sigstore-go's VirtualSigstore and go-sev-guest's testing package: it builds a
// complete, valid provenance in-process, without QEMU or hardware, so a program's own tests
// can run it through package verify (or attest/verifier) and through their own policy.
//
// A Kit holds the expensive, reusable parts: a simulated secure processor (attest/simsp)
// with its own RSA-4096 chain, the host's signing key and the release key that signs
// reference values. Kit.Build writes one Fixture: an artifact, the job manifest and result
// record, a simulated-TEE report over them signed by the kit's processor, the SLSA statement
// in a key-signed Sigstore bundle, and signed reference values listing the measurement. A
// verifier trusts it with the kit's keys and sim root (see Kit.Trust and the example).
//
// Each step has a hook, so a test can play the attacker at any point: the runner host
// (which writes the manifest and statement and holds the signing key) or a lying secure
// processor (which signs whatever report it is given). Evidence from the kit is simulated:
// it passes only a verifier that explicitly allows simulated evidence and trusts the kit's
// sim root, never one that demands hardware.
package verifytest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/attest/simsp"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/reference"
	"github.com/cloche-dev/cloche/source"
)

// Kit holds what is expensive to make and shared by many fixtures: the simulated secure
// processor (RSA-4096 chain), the host's signing key and the release key that signs
// reference values.
type Kit struct {
	SP *simsp.SP
	// Host signs provenance; Release signs reference values.
	Host, Release       *provenance.KeySigner
	HostKey, ReleaseKey crypto.PublicKey
	HostKeyPath         string
	ReleaseKeyPath      string
	dir                 string
}

// NewKit creates a kit with its state (keys, the simulated processor's chain) in dir. It
// takes a few seconds (RSA-4096 keys): share one kit across a test binary.
func NewKit(dir string) (*Kit, error) {
	sp, err := simsp.LoadOrCreate(filepath.Join(dir, "sim"))
	if err != nil {
		return nil, err
	}
	k := &Kit{SP: sp, dir: dir}
	if k.Host, k.HostKey, k.HostKeyPath, err = newKey(dir, "host"); err != nil {
		return nil, err
	}
	if k.Release, k.ReleaseKey, k.ReleaseKeyPath, err = newKey(dir, "release"); err != nil {
		return nil, err
	}
	return k, nil
}

func newKey(dir, name string) (*provenance.KeySigner, crypto.PublicKey, string, error) {
	p := filepath.Join(dir, name+"-key.pem")
	if err := provenance.GenerateKey(p, p+".pub"); err != nil {
		return nil, nil, "", err
	}
	s, err := provenance.LoadKeySigner(p)
	if err != nil {
		return nil, nil, "", err
	}
	pub, err := provenance.LoadPublicKey(p + ".pub")
	return s, pub, p + ".pub", err
}

// SimRoot is the trusted sim ARK.
func (k *Kit) SimRoot() *x509.Certificate { return k.SP.Root() }

// Hooks let a test change each document before it is bound, signed or sealed. Each may
// be nil.
type Hooks struct {
	Manifest func(*job.Manifest)
	Result   func(*job.Result)
	// Report edits the report bytes before the (lying) secure processor signs them;
	// ReportAfterSigning edits them after.
	Report             func([]byte)
	ReportAfterSigning func([]byte)
	Evidence           func(*attest.Evidence)
	// EvidenceJSON edits the serialised evidence.json.
	EvidenceJSON func([]byte) []byte
	Input        func(*provenance.Input)
	// Statement edits the statement JSON before the host signs it.
	Statement func([]byte) []byte
	// Reference edits the reference values document before the release key signs it;
	// ReferenceStatement edits its statement JSON (then signed with the release key as is).
	Reference          func(*reference.Document)
	ReferenceStatement func([]byte) []byte
	// Bundle edits the signed bundle bytes.
	Bundle func([]byte) []byte
}

// Fixture is one complete provenance on disk.
type Fixture struct {
	// Dir holds the files: the artifacts (Artifacts, in name order; Artifact is the first),
	// BundlePath (the signed provenance) and ReferencePath (the signed reference values).
	Dir, Artifact, BundlePath, ReferencePath string
	Artifacts                                []string
	Manifest                                 *job.Manifest
	Measurement                              [48]byte
	// Statement is the signed in-toto statement; Evidence the evidence.json it carries.
	Statement []byte
	Evidence  []byte
	Reference *reference.Document
}

// Trust is what a verifier of the kit's fixtures trusts: the host's provenance key, the
// release key of the reference values and the simulated TEE's root, in memory and as the
// files the CLI takes (--key, --reference-key, --trusted-sim-root).
type Trust struct {
	HostKey, ReleaseKey         crypto.PublicKey
	HostKeyPath, ReleaseKeyPath string
	SimRoot                     *x509.Certificate
	SimRootPath                 string
}

// Trust returns the kit's trust anchors.
func (k *Kit) Trust() Trust {
	return Trust{HostKey: k.HostKey, ReleaseKey: k.ReleaseKey, HostKeyPath: k.HostKeyPath, ReleaseKeyPath: k.ReleaseKeyPath,
		SimRoot: k.SP.Root(), SimRootPath: k.SP.RootPath()}
}

// Guest is the guest image the fixtures claim.
var Guest = provenance.GuestImage{KernelSHA256: strings.Repeat("1", 64), InitrdSHA256: strings.Repeat("2", 64),
	Cmdline: "console=ttyS0", VCPUs: 2, MemoryMiB: 2048, Recipe: strings.Repeat("3", 64)}

// ArtifactContent is the content of the fixture's artifact "hello".
var ArtifactContent = []byte("#!/bin/true\nhello\n")

// Build writes a fixture into dir (created), with the hooks applied. Its build produced one
// artifact, "hello" (ArtifactContent).
func (k *Kit) Build(dir string, h Hooks) (*Fixture, error) {
	return k.BuildArtifacts(dir, map[string][]byte{"hello": ArtifactContent}, h)
}

// BuildArtifacts writes a fixture whose build produced artifacts (slash-separated path
// relative to the source tree, to content), written under dir as the verifier is given
// them, with the hooks applied.
func (k *Kit) BuildArtifacts(dir string, artifacts map[string][]byte, h Hooks) (*Fixture, error) {
	arts, err := artifactList(artifacts)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f := &Fixture{Dir: dir, BundlePath: filepath.Join(dir, "provenance.sigstore.json"),
		ReferencePath: filepath.Join(dir, reference.BundleFileName)}
	copy(f.Measurement[:], "cloche verify test measurement, 48 bytes long!!!")
	if err := f.writeArtifacts(arts); err != nil {
		return nil, err
	}
	mb, rb, err := f.documents(h, arts)
	if err != nil {
		return nil, err
	}
	evb, err := k.evidence(f, h, mb, rb)
	if err != nil {
		return nil, err
	}
	if err := k.statement(f, h, mb, rb, evb); err != nil {
		return nil, err
	}
	return f, k.referenceValues(f, h)
}

// artifact is one file the fixture's build produced.
type artifact struct {
	name    string
	content []byte
}

// artifactList checks the names and orders the artifacts by name, as the guest lists them.
func artifactList(artifacts map[string][]byte) ([]artifact, error) {
	if len(artifacts) == 0 {
		return nil, errors.New("verifytest: no artifacts")
	}
	arts := make([]artifact, 0, len(artifacts))
	for name, content := range artifacts {
		if !filepath.IsLocal(filepath.FromSlash(name)) || path.Clean(name) != name {
			return nil, fmt.Errorf("verifytest: artifact name %q: expected a clean relative path inside the source tree", name)
		}
		arts = append(arts, artifact{name: name, content: content})
	}
	sort.Slice(arts, func(i, j int) bool { return arts[i].name < arts[j].name })
	return arts, nil
}

// writeArtifacts writes the artifacts under f.Dir and records their paths.
func (f *Fixture) writeArtifacts(arts []artifact) error {
	for _, a := range arts {
		p := filepath.Join(f.Dir, filepath.FromSlash(a.name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, a.content, 0o755); err != nil {
			return err
		}
		f.Artifacts = append(f.Artifacts, p)
	}
	f.Artifact = f.Artifacts[0]
	return nil
}

// resign replaces the bundle's DSSE payload and signs it with the host key, as a host
// that holds the key can.
func (k *Kit) resign(bundle, payload []byte) ([]byte, error) {
	return resignWith(k.HostKeyPath, bundle, payload)
}

// resignWith replaces the bundle's DSSE payload and signs it with the key whose public
// half is at pubPath.
func resignWith(pubPath string, bundle, payload []byte) ([]byte, error) {
	b, err := os.ReadFile(strings.TrimSuffix(pubPath, ".pub"))
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("host key is not PEM")
	}
	key, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	ek, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("host key is not ECDSA")
	}
	var doc map[string]any
	if err := json.Unmarshal(bundle, &doc); err != nil {
		return nil, err
	}
	env := doc["dsseEnvelope"].(map[string]any)
	pt := env["payloadType"].(string)
	digest := sha256.Sum256(fmt.Appendf(nil, "DSSEv1 %d %s %d %s", len(pt), pt, len(payload), payload))
	sig, err := ecdsa.SignASN1(rand.Reader, ek, digest[:])
	if err != nil {
		return nil, err
	}
	env["payload"] = base64.StdEncoding.EncodeToString(payload)
	env["signatures"].([]any)[0].(map[string]any)["sig"] = base64.StdEncoding.EncodeToString(sig)
	return json.Marshal(doc)
}

// The fixture's source: a commit object of tree SourceTree, and an annotated tag v1 of it,
// as a guest that checked them attests them.
var (
	SourceTree   = strings.Repeat("e", 40)
	CommitObject = []byte("tree " + SourceTree + "\nauthor t <t@example.invalid> 1 +0000\ncommitter t <t@example.invalid> 1 +0000\n\nhello\n")
	SourceCommit = source.FormatSHA1.ObjectID("commit", CommitObject)
	TagObject    = []byte("object " + SourceCommit + "\ntype commit\ntag v1\ntagger t <t@example.invalid> 1 +0000\n\nrelease 1\n")
	// ToolchainDigest is the verity root hash of the fixture's toolchain, what a verifier
	// pins (verify.Pins.ToolchainDigest).
	ToolchainDigest = strings.Repeat("d", 64)
)

// Documents returns the manifest and result record a fixture built with h carries.
func Documents(h Hooks) (manifest, result []byte, err error) {
	return (&Fixture{}).documents(h, []artifact{{name: "hello", content: ArtifactContent}})
}

func (f *Fixture) documents(h Hooks, arts []artifact) (mb, rb []byte, err error) {
	results := make([]job.Artifact, len(arts))
	for i, a := range arts {
		sum := sha256.Sum256(a.content)
		results[i] = job.Artifact{Path: a.name, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(a.content))}
	}
	m := &job.Manifest{Type: job.ManifestType, InvocationID: "test:verifytest", TEE: "sim",
		Source: job.Source{Repository: "https://github.com/example/hello", Ref: "refs/tags/v1", CommitObject: CommitObject, TagObject: TagObject,
			ArchiveSHA256: strings.Repeat("a", 64), ArchiveSize: 10240},
		Toolchain: job.Toolchain{Name: "busybox", ImageSHA256: strings.Repeat("b", 64), ImageSize: 3 * 4096, VerityRootHash: ToolchainDigest, VeritySalt: "00", DataBlocks: 2, HashOffset: 8192},
		Command:   []string{"make"}, Workdir: ".", Env: map[string]string{"CC": "gcc"}, Artifacts: []string{}, TimeoutSeconds: 60, MaxOutputBytes: 1 << 20}
	if h.Manifest != nil {
		h.Manifest(m)
	}
	f.Manifest = m
	if mb, err = job.Marshal(m); err != nil {
		return nil, nil, err
	}
	md := job.ManifestDigest(mb)
	r := &job.Result{Type: job.ResultType, ManifestSHA256: hex.EncodeToString(md[:]), SourceTree: SourceTree,
		SourceCommit: SourceCommit, SourceTag: "v1", SourceTagObject: source.FormatSHA1.ObjectID("tag", TagObject),
		Artifacts: results,
		Log:       job.Digest{SHA256: strings.Repeat("f", 64), Size: 3}, DurationMillis: 5}
	if h.Result != nil {
		h.Result(r)
	}
	rb, err = job.Marshal(r)
	return mb, rb, err
}

func (k *Kit) evidence(f *Fixture, h Hooks, mb, rb []byte) ([]byte, error) {
	report, err := k.SP.Report(simsp.Launch{Measurement: f.Measurement, HostData: job.ManifestDigest(mb)}, job.ReportData(rb))
	if err != nil {
		return nil, err
	}
	if h.Report != nil {
		h.Report(report)
		if err := k.SP.Resign(report); err != nil {
			return nil, err
		}
	}
	if h.ReportAfterSigning != nil {
		h.ReportAfterSigning(report)
	}
	ev := &attest.Evidence{TEE: attest.TEESim, Report: report, Certs: k.SP.Chain()}
	if h.Evidence != nil {
		h.Evidence(ev)
	}
	evb, err := ev.Marshal()
	if err != nil {
		return nil, err
	}
	if h.EvidenceJSON != nil {
		evb = h.EvidenceJSON(evb)
	}
	f.Evidence = evb
	return evb, nil
}

func (k *Kit) statement(f *Fixture, h Hooks, mb, rb, evb []byte) error {
	g := Guest
	g.Measurement = hex.EncodeToString(f.Measurement[:])
	in := provenance.Input{Manifest: mb, Result: rb, Evidence: evb, Guest: g,
		BuilderVersion: "0.1.0", StartedOn: time.Unix(1e9, 0), FinishedOn: time.Unix(1e9+5, 0)}
	if h.Input != nil {
		h.Input(&in)
	}
	stmt, err := provenance.NewStatement(in)
	if err != nil {
		return fmt.Errorf("statement: %w", err)
	}
	bundle, err := k.Host.SignStatement(context.Background(), stmt)
	if err != nil {
		return err
	}
	if h.Statement != nil {
		// The host signs whatever it likes: no validation between edit and signature.
		stmt = h.Statement(stmt)
		if bundle, err = k.resign(bundle, stmt); err != nil {
			return err
		}
	}
	f.Statement = stmt
	if h.Bundle != nil {
		bundle = h.Bundle(bundle)
	}
	return os.WriteFile(f.BundlePath, bundle, 0o644)
}

// referenceValues writes signed reference values that list the fixture's launch.
func (k *Kit) referenceValues(f *Fixture, h Hooks) error {
	d := &reference.Document{ToolVersion: "0.1.0",
		GuestImage: reference.GuestImage{Kernel: reference.File{Name: "vmlinuz", SHA256: Guest.KernelSHA256, Size: 1},
			Initrd: reference.File{Name: "initrd.img", SHA256: Guest.InitrdSHA256, Size: 1}, Cmdline: Guest.Cmdline,
			KernelPackage: "linux-image-test", Recipe: Guest.Recipe},
		Values: []reference.Value{{TEE: attest.TEESim, VCPUs: Guest.VCPUs, MemoryMiB: Guest.MemoryMiB, Measurement: hex.EncodeToString(f.Measurement[:])}}}
	if h.Reference != nil {
		h.Reference(d)
	}
	f.Reference = d
	b, err := reference.Sign(context.Background(), k.Release, d)
	if err != nil {
		return err
	}
	if h.ReferenceStatement != nil {
		stmt, err := d.Statement()
		if err != nil {
			return err
		}
		if b, err = resignWith(k.ReleaseKeyPath, b, h.ReferenceStatement(stmt)); err != nil {
			return err
		}
	}
	return os.WriteFile(f.ReferencePath, b, 0o644)
}
