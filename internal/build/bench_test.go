package build

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/benchpair"
	"github.com/cloche-dev/cloche/internal/image/guestimage"
	"github.com/cloche-dev/cloche/internal/testfixture"
	"github.com/cloche-dev/cloche/internal/vmm"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
	"github.com/cloche-dev/cloche/source"
)

// markerClock records when a marker first appears on a console stream.
type markerClock struct {
	mu     sync.Mutex
	marker []byte
	start  time.Time
	seen   time.Duration
	buf    []byte
}

func (m *markerClock) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.seen == 0 {
		m.buf = append(m.buf, p...)
		if bytes.Contains(m.buf, m.marker) {
			m.seen = time.Since(m.start)
		}
		if len(m.buf) > 1<<16 {
			m.buf = m.buf[len(m.buf)-len(m.marker):]
		}
	}
	return len(p), nil
}

// BenchmarkBootToWorkload boots, in each iteration, a bare busybox initramfs (the floor: same
// kernel, same QEMU, TCG) and the cloche guest running a trivial job, and reports the time
// from launch until the workload starts for both, and their ratio. The cloche figure also
// includes what the guest does before the command: its own report request, manifest and
// archive checks, dm-verity setup, overlay and unpacking.
func BenchmarkBootToWorkload(b *testing.B) {
	testfixture.RequireQEMU(b)
	gdir := testfixture.GuestImage(b)
	img, err := guestimage.Load(gdir)
	if err != nil {
		b.Fatal(err)
	}
	floorInitrd := filepath.Join(b.TempDir(), "busybox-initrd.img")
	if err := guestimage.MakeBusyboxInitramfs(floorInitrd); err != nil {
		b.Fatal(err)
	}
	tc := testfixture.BusyboxToolchain(b)
	dir := b.TempDir()
	key := filepath.Join(dir, "key.pem")
	if err := provenance.GenerateKey(key, key+".pub"); err != nil {
		b.Fatal(err)
	}
	signer, err := provenance.LoadKeySigner(key)
	if err != nil {
		b.Fatal(err)
	}
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "a"), []byte("a"), 0o644)

	var pairs benchpair.Pairs
	for i := 0; i < b.N; i++ {
		fc := &markerClock{marker: []byte("BUSYBOX-READY"), start: time.Now()}
		_, err := vmm.Run(context.Background(), vmm.Config{
			Accel: "tcg", Kernel: filepath.Join(img.Dir, img.Kernel.Path), Initrd: floorInitrd,
			Cmdline: "console=ttyS0 quiet panic=-1 no_timer_check", VCPUs: 2, MemoryMiB: 2048,
			TEE: "", Console: fc, Timeout: 2 * time.Minute, RunDir: b.TempDir(),
			Log: slog.New(slog.DiscardHandler), // log lines would split the benchmark's result line
		})
		if err != nil || fc.seen == 0 {
			b.Fatalf("busybox floor boot: %v (marker seen after %s)", err, fc.seen)
		}

		gc := &markerClock{marker: []byte("CLOCHE-WORKLOAD-START"), start: time.Now()}
		_, err = Run(context.Background(), Options{
			Spec:      job.Spec{Command: []string{"sh", "-c", "echo CLOCHE-WORKLOAD-START; touch out"}, TEE: attest.TEESim, TimeoutSeconds: 60},
			SourceDir: src, OutDir: filepath.Join(b.TempDir(), "out"),
			GuestImageDir: gdir, ToolchainImage: tc, SimDir: filepath.Join(testfixture.CacheDir(b), "sim-tee"),
			Signer: signer, Version: "0.1.0-test", Accel: "tcg", Console: gc,
		})
		if err != nil || gc.seen == 0 {
			b.Fatalf("cloche guest boot: %v (marker seen after %s)", err, gc.seen)
		}
		pairs.Add(fc.seen, gc.seen)
	}
	pairs.Report(b, "boot")
}

// BenchmarkHostOverhead measures the host-side work per MB of source — pack (deterministic
// tar + SHA-256), input-disk write, statement signing and bundle verification — against a
// baseline of reading the same files once, in the same process.
func BenchmarkHostOverhead(b *testing.B) {
	for _, mb := range []int{1, 16} {
		b.Run(fmt.Sprintf("%dMB", mb), func(b *testing.B) {
			src := b.TempDir()
			for i := 0; i < mb*4; i++ { // 256 KiB files
				buf := make([]byte, 256<<10)
				rand.Read(buf)
				os.WriteFile(filepath.Join(src, fmt.Sprintf("f%03d.bin", i)), buf, 0o644)
			}
			dir := b.TempDir()
			key := filepath.Join(dir, "key.pem")
			if err := provenance.GenerateKey(key, key+".pub"); err != nil {
				b.Fatal(err)
			}
			signer, _ := provenance.LoadKeySigner(key)
			pub, _ := provenance.LoadPublicKey(key + ".pub")
			stmt := benchStatement(b)

			var base, pack, sign, verify time.Duration
			b.SetBytes(int64(mb) << 20)
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				entries, _ := os.ReadDir(src)
				h := sha256.New()
				for _, e := range entries {
					f, _ := os.Open(filepath.Join(src, e.Name()))
					io.Copy(h, f)
					f.Close()
				}
				t1 := time.Now()
				if _, _, err := source.Pack(context.Background(), src, 0, io.Discard); err != nil {
					b.Fatal(err)
				}
				t2 := time.Now()
				bundle, err := signer.SignStatement(context.Background(), stmt)
				if err != nil {
					b.Fatal(err)
				}
				t3 := time.Now()
				if _, err := provenance.VerifyBundle(bundle, provenance.VerifyOptions{PublicKey: pub}); err != nil {
					b.Fatal(err)
				}
				t4 := time.Now()
				base += t1.Sub(t0)
				pack += t2.Sub(t1)
				sign += t3.Sub(t2)
				verify += t4.Sub(t3)
			}
			perMB := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(b.N) / float64(mb) }
			b.ReportMetric(perMB(base), "µs-read+hash/MB")
			b.ReportMetric(perMB(pack), "µs-pack/MB")
			b.ReportMetric(pack.Seconds()/base.Seconds(), "x-pack-vs-read")
			b.ReportMetric(float64(sign.Microseconds())/float64(b.N), "µs-sign/op")
			b.ReportMetric(float64(verify.Microseconds())/float64(b.N), "µs-verify/op")
		})
	}
}

// benchStatement builds a realistic statement from real job documents.
func benchStatement(b *testing.B) []byte {
	m := &job.Manifest{Type: job.ManifestType, InvocationID: "bench", TEE: "sim",
		Source:    job.Source{ArchiveSHA256: fmt.Sprintf("%064x", 1), ArchiveSize: 1},
		Toolchain: job.Toolchain{ImageSHA256: fmt.Sprintf("%064x", 2), ImageSize: 8192, VerityRootHash: fmt.Sprintf("%064x", 3), DataBlocks: 1, HashOffset: 4096},
		Command:   []string{"make"}, Workdir: ".", Artifacts: []string{}, TimeoutSeconds: 60, MaxOutputBytes: 1 << 20}
	mb, _ := job.Marshal(m)
	d := job.ManifestDigest(mb)
	r := &job.Result{Type: job.ResultType, ManifestSHA256: fmt.Sprintf("%x", d[:]), SourceTree: fmt.Sprintf("%040x", 4),
		Artifacts: []job.Artifact{{Path: "hello", SHA256: fmt.Sprintf("%064x", 5), Size: 1}}, Log: job.Digest{SHA256: fmt.Sprintf("%064x", 6)}}
	rb, _ := job.Marshal(r)
	stmt, err := provenance.NewStatement(provenance.Input{Manifest: mb, Result: rb, Evidence: []byte(`{"tee":"sim","report":""}`),
		Guest:          provenance.GuestImage{KernelSHA256: fmt.Sprintf("%064x", 8), InitrdSHA256: fmt.Sprintf("%064x", 9), Cmdline: "console=ttyS0", Measurement: fmt.Sprintf("%096x", 7), VCPUs: 2, MemoryMiB: 2048},
		BuilderVersion: "0.1.0", StartedOn: time.Unix(1e9, 0), FinishedOn: time.Unix(1e9+1, 0)})
	if err != nil {
		b.Fatal(err)
	}
	return stmt
}

// BenchmarkDepsPath measures what the dependency path adds to a build of examples/go-cli
// (four modules): fetching them on the host, packing them onto their disk and checking every
// module against go.sum in the guest. Each iteration runs the same trivial command on the
// same source twice, without and with Deps, and the ratio is the pair's. The modules come
// from the host's module cache (GOPROXY=file://), so the network is not what is measured.
func BenchmarkDepsPath(b *testing.B) {
	testfixture.RequireQEMU(b)
	src, err := filepath.Abs(filepath.Join("..", "..", "examples", "go-cli"))
	if err != nil {
		b.Fatal(err)
	}
	// Fill the module cache once through the normal proxy, then read only from it.
	dl := exec.Command("go", "mod", "download")
	dl.Dir = src
	if out, err := dl.CombinedOutput(); err != nil {
		b.Fatalf("go mod download: %v\n%s", err, out)
	}
	modcache, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		b.Fatal(err)
	}
	b.Setenv("GOPROXY", "file://"+filepath.Join(strings.TrimSpace(string(modcache)), "cache", "download"))
	b.Setenv("GOSUMDB", "off")
	dir := b.TempDir()
	key := filepath.Join(dir, "key.pem")
	if err := provenance.GenerateKey(key, key+".pub"); err != nil {
		b.Fatal(err)
	}
	signer, err := provenance.LoadKeySigner(key)
	if err != nil {
		b.Fatal(err)
	}
	run := func(deps string) time.Duration {
		start := time.Now()
		_, err := Run(context.Background(), Options{
			Spec:      job.Spec{Command: []string{"sh", "-c", "echo built > built"}, TEE: attest.TEESim, TimeoutSeconds: 120, Deps: deps},
			SourceDir: src, OutDir: filepath.Join(b.TempDir(), "out"),
			GuestImageDir: testfixture.GuestImage(b), ToolchainImage: testfixture.BusyboxToolchain(b),
			SimDir: filepath.Join(testfixture.CacheDir(b), "sim-tee"), Signer: signer, Version: "0.1.0-test", Accel: "tcg",
		})
		if err != nil {
			b.Fatalf("build with deps %q: %v", deps, err)
		}
		return time.Since(start)
	}
	var pairs benchpair.Pairs
	for range b.N {
		plain := run("")
		pairs.Add(plain, run(job.DepsGo))
	}
	pairs.Report(b, "deps")
}
