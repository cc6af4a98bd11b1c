package disk

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// newDisk creates a zeroed output disk image of size bytes and opens it.
func newDisk(t testing.TB, size int64) (*os.File, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "output.img")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, p
}

func addString(t *testing.T, w *OutputWriter, name, content string) {
	t.Helper()
	if err := w.AddFile(name, strings.NewReader(content), int64(len(content))); err != nil {
		t.Fatalf("AddFile %s: %v", name, err)
	}
}

func TestOutputRoundTrip(t *testing.T) {
	f, p := newDisk(t, 1<<20)
	w := NewOutputWriter(f, 1<<20)

	src := t.TempDir()
	exe := filepath.Join(src, "tool")
	if err := os.WriteFile(exe, bytes.Repeat([]byte{0x7f, 'E', 'L', 'F'}, 5000), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(exe, 0o755)
	ef, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer ef.Close()

	longName := "dist/" + strings.Repeat("n", 150) + "/ünïcode.bin"
	addString(t, w, ResultName, `{"_type":"https://cloche.dev/result-record/v1"}`)
	addString(t, w, LogName, "building...\ndone\n")
	if err := w.AddFile(ArtifactsDir+"bin/tool", ef, 20000); err != nil {
		t.Fatal(err)
	}
	addString(t, w, ArtifactsDir+"dist/app.tar.gz", "gzip bytes")
	addString(t, w, ArtifactsDir+longName, "long")
	addString(t, w, ArtifactsDir+"empty", "")
	addString(t, w, EvidenceName, `{"report":"..."}`)
	addString(t, w, ErrorName, "no error really")
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}

	dest := t.TempDir()
	out, err := ReadOutput(p, dest, 1<<20)
	if err != nil {
		t.Fatalf("ReadOutput: %v", err)
	}
	if string(out.Result) != `{"_type":"https://cloche.dev/result-record/v1"}` || string(out.Evidence) != `{"report":"..."}` ||
		string(out.Log) != "building...\ndone\n" || out.Error != "no error really" {
		t.Errorf("documents differ: %+v", out)
	}
	wantArtifacts := []string{"bin/tool", "dist/app.tar.gz", longName, "empty"}
	if strings.Join(out.Artifacts, "|") != strings.Join(wantArtifacts, "|") {
		t.Errorf("artifacts %q, want %q", out.Artifacts, wantArtifacts)
	}
	modes := map[string]fs.FileMode{
		"artifacts/bin/tool":        0o755,
		"artifacts/dist/app.tar.gz": 0o644,
		"artifacts/" + longName:     0o644,
		"artifacts/empty":           0o644,
		"artifacts":                 fs.ModeDir | 0o755,
		"artifacts/dist":            fs.ModeDir | 0o755,
	}
	for name, mode := range modes {
		st, err := os.Lstat(filepath.Join(dest, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if st.Mode() != mode {
			t.Errorf("%s: mode %v, want %v", name, st.Mode(), mode)
		}
	}
	got, _ := os.ReadFile(filepath.Join(dest, "artifacts/bin/tool"))
	want, _ := os.ReadFile(exe)
	if !bytes.Equal(got, want) {
		t.Error("artifact content differs")
	}
	// Only artifacts/ was created in destDir.
	if ents, _ := os.ReadDir(dest); len(ents) != 1 || ents[0].Name() != "artifacts" {
		t.Errorf("destDir holds %v, want only artifacts/", ents)
	}
}

func TestOutputEmptyIsValid(t *testing.T) {
	f, p := newDisk(t, 2*BlockSize)
	w := NewOutputWriter(f, 2*BlockSize)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := ReadOutput(p, t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if out.Result != nil || len(out.Artifacts) != 0 {
		t.Errorf("empty output read as %+v", out)
	}
}

func TestOutputNoHeader(t *testing.T) {
	// A fresh disk, and one where the guest wrote files but died before Close.
	_, fresh := newDisk(t, 64*BlockSize)
	if _, err := ReadOutput(fresh, t.TempDir(), 1<<20); !errors.Is(err, ErrNoOutput) {
		t.Errorf("fresh disk: err = %v, want ErrNoOutput", err)
	}

	f, p := newDisk(t, 64*BlockSize)
	// A stale header from an earlier, complete run on the same image.
	w := NewOutputWriter(f, 64*BlockSize)
	addString(t, w, LogName, "old run")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	w = NewOutputWriter(f, 64*BlockSize)
	addString(t, w, ResultName, "{}")
	addString(t, w, LogName, "partial")
	// no Close: the guest died here
	if _, err := ReadOutput(p, t.TempDir(), 1<<20); !errors.Is(err, ErrNoOutput) {
		t.Errorf("unfinished disk: err = %v, want ErrNoOutput", err)
	}
}

func TestOutputWriterLimits(t *testing.T) {
	const size = BlockSize + 8192
	f, p := newDisk(t, size)
	w := NewOutputWriter(f, size)
	if got := w.Remaining(); got != 8192-1024 {
		t.Fatalf("Remaining = %d, want %d", got, 8192-1024)
	}
	// One byte too many: header 512 + 6657 padded to 7168 + trailer 1024 > 8192.
	big := strings.Repeat("x", 6657)
	if err := w.AddFile(LogName, strings.NewReader(big), int64(len(big))); !errors.Is(err, ErrOutputTooLarge) {
		t.Fatalf("oversized AddFile: err = %v, want ErrOutputTooLarge", err)
	}
	// Nothing was written: an exactly fitting file still goes in, and the disk reads back.
	exact := strings.Repeat("y", 6656)
	if err := w.AddFile(LogName, strings.NewReader(exact), int64(len(exact))); err != nil {
		t.Fatalf("exactly fitting AddFile: %v", err)
	}
	if w.Remaining() != 0 {
		t.Errorf("Remaining after filling = %d", w.Remaining())
	}
	if err := w.AddFile(ErrorName, strings.NewReader(""), 0); !errors.Is(err, ErrOutputTooLarge) {
		t.Errorf("AddFile on a full disk: %v, want ErrOutputTooLarge", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := ReadOutput(p, t.TempDir(), size)
	if err != nil || string(out.Log) != exact {
		t.Fatalf("ReadOutput after exact fill: %v", err)
	}

	// Documents over MaxDocumentSize are refused before anything is written.
	f2, _ := newDisk(t, 16<<20)
	w2 := NewOutputWriter(f2, 16<<20)
	if err := w2.AddFile(ResultName, strings.NewReader(""), MaxDocumentSize+1); !errors.Is(err, ErrOutputTooLarge) {
		t.Errorf("oversized result: %v, want ErrOutputTooLarge", err)
	}
	// A disk too small for even the trailer.
	f3, _ := newDisk(t, BlockSize+512)
	if err := NewOutputWriter(f3, BlockSize+512).Close(); !errors.Is(err, ErrOutputTooLarge) {
		t.Errorf("Close on a tiny disk: %v, want ErrOutputTooLarge", err)
	}
}

func TestOutputWriterRejects(t *testing.T) {
	f, _ := newDisk(t, 1<<20)
	w := NewOutputWriter(f, 1<<20)
	for _, name := range []string{"../x", "/abs", "artifacts/../x", "artifacts/", "artifacts//x", "artifacts/./x", "artifacts/x/", "other.txt", "artifacts/a\x00b"} {
		if err := w.AddFile(name, strings.NewReader("x"), 1); err == nil {
			t.Errorf("AddFile(%q) accepted", name)
		}
	}
	addString(t, w, ArtifactsDir+"a/b", "x")
	for _, name := range []string{ArtifactsDir + "a/b", ArtifactsDir + "a", ArtifactsDir + "a/b/c"} {
		if err := w.AddFile(name, strings.NewReader("x"), 1); err == nil {
			t.Errorf("AddFile(%q) after artifacts/a/b accepted", name)
		}
	}
	if err := w.AddFile(LogName, strings.NewReader("x"), -1); err == nil {
		t.Error("negative size accepted")
	}
	// A short reader breaks the stream: the writer stops, and the disk never gets a header.
	if err := w.AddFile(LogName, strings.NewReader("short"), 10); err == nil {
		t.Fatal("short reader accepted")
	}
	if err := w.AddFile(ErrorName, strings.NewReader("x"), 1); err == nil {
		t.Error("AddFile after a broken stream accepted")
	}
	if err := w.Close(); err == nil {
		t.Error("Close after a broken stream succeeded")
	}
	if _, err := ReadOutput(f.Name(), t.TempDir(), 1<<20); !errors.Is(err, ErrNoOutput) {
		t.Errorf("broken stream: ReadOutput err = %v, want ErrNoOutput", err)
	}
}

// rawOutput writes a disk image whose payload is exactly payload, with a correct header
// (or the given header fields when fix is false).
func rawOutput(t testing.TB, payload []byte, extra int) string {
	t.Helper()
	hdr := make([]byte, BlockSize)
	copy(hdr, OutputMagic)
	binary.LittleEndian.PutUint64(hdr[16:], uint64(len(payload)))
	sum := sha256.Sum256(payload)
	copy(hdr[24:56], sum[:])
	img := append(hdr, payload...)
	img = append(img, make([]byte, extra)...)
	p := filepath.Join(t.TempDir(), "out.img")
	if err := os.WriteFile(p, img, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

type tentry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func tarOf(t testing.TB, entries ...tentry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		mode := e.mode
		if mode == 0 {
			mode = 0o644
		}
		hdr := &tar.Header{Name: e.name, Typeflag: typ, Linkname: e.link, Mode: mode, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if typ == tar.TypeReg {
			hdr.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, e.body)
	}
	tw.Close()
	return buf.Bytes()
}

// readContained reads p into a dest below a fresh parent that also holds an empty
// "outside" directory, and fails when anything appears outside dest.
func readContained(t *testing.T, p string, maxBytes int64) (*Output, error) {
	t.Helper()
	parent := t.TempDir()
	dest := filepath.Join(parent, "dest")
	os.Mkdir(dest, 0o755)
	os.Mkdir(filepath.Join(parent, "outside"), 0o755)
	out, err := ReadOutput(p, dest, maxBytes)
	checkContained(t, parent)
	return out, err
}

func checkContained(t testing.TB, parent string) {
	t.Helper()
	ents, _ := os.ReadDir(parent)
	for _, e := range ents {
		if e.Name() != "dest" && e.Name() != "outside" {
			t.Fatalf("ReadOutput created %q outside destDir", e.Name())
		}
	}
	if out, _ := os.ReadDir(filepath.Join(parent, "outside")); len(out) != 0 {
		t.Fatalf("ReadOutput wrote into a directory outside destDir")
	}
	dest := filepath.Join(parent, "dest")
	filepath.Walk(dest, func(p string, info fs.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(dest, p)
		if rel != "." && rel != "artifacts" && !strings.HasPrefix(rel, "artifacts/") {
			t.Errorf("ReadOutput created %q outside destDir/artifacts", rel)
		}
		if m := info.Mode().Type(); m != 0 && m != fs.ModeDir {
			t.Errorf("ReadOutput created %q of type %v", rel, m)
		}
		return nil
	})
}

func TestReadOutputRejects(t *testing.T) {
	cases := []struct {
		name    string
		payload []byte
		want    error
		mention string
	}{
		{"dotdot", tarOf(t, tentry{name: "../x", body: "x"}), ErrMalformed, "../x"},
		{"artifact dotdot", tarOf(t, tentry{name: "artifacts/../../x", body: "x"}), ErrMalformed, `".."`},
		{"absolute", tarOf(t, tentry{name: "/etc/passwd", body: "x"}), ErrMalformed, "/etc/passwd"},
		{"absolute artifact", tarOf(t, tentry{name: "artifacts//etc/passwd", body: "x"}), ErrMalformed, "absolute"},
		{"unclean artifact", tarOf(t, tentry{name: "artifacts/a/./b", body: "x"}), ErrMalformed, "not clean"},
		{"unknown name", tarOf(t, tentry{name: "notes.txt", body: "x"}), ErrMalformed, "notes.txt"},
		{"symlink", tarOf(t, tentry{name: "artifacts/l", typ: tar.TypeSymlink, link: "/etc"}), ErrMalformed, "regular file"},
		{"symlink then through", tarOf(t, tentry{name: "artifacts/l", typ: tar.TypeSymlink, link: "../../outside"}, tentry{name: "artifacts/l/x", body: "x"}), ErrMalformed, "regular file"},
		{"directory", tarOf(t, tentry{name: "artifacts/d/", typ: tar.TypeDir}), ErrMalformed, "regular file"},
		{"hardlink", tarOf(t, tentry{name: "artifacts/a", body: "x"}, tentry{name: "artifacts/h", typ: tar.TypeLink, link: "artifacts/a"}), ErrMalformed, "regular file"},
		{"fifo", tarOf(t, tentry{name: "artifacts/p", typ: tar.TypeFifo}), ErrMalformed, "regular file"},
		{"duplicate document", tarOf(t, tentry{name: ResultName, body: "1"}, tentry{name: ResultName, body: "2"}), ErrMalformed, "twice"},
		{"duplicate artifact", tarOf(t, tentry{name: "artifacts/a", body: "1"}, tentry{name: "artifacts/a", body: "2"}), ErrMalformed, "twice"},
		{"artifact below artifact", tarOf(t, tentry{name: "artifacts/a", body: "1"}, tentry{name: "artifacts/a/b", body: "2"}), ErrMalformed, "not a directory"},
		{"artifact over directory", tarOf(t, tentry{name: "artifacts/a/b", body: "1"}, tentry{name: "artifacts/a", body: "2"}), ErrMalformed, "artifacts/a"},
		{"document too large", tarOf(t, tentry{name: EvidenceName, body: strings.Repeat("e", MaxDocumentSize+1)}), ErrOutputTooLarge, EvidenceName},
		{"garbage", bytes.Repeat([]byte{0xAA}, 1024), ErrMalformed, "tar"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := rawOutput(t, tc.payload, 0)
			_, err := readContained(t, p, 16<<20)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
		})
	}
}

func TestReadOutputHeaderChecks(t *testing.T) {
	good := tarOf(t, tentry{name: LogName, body: "log line\n"}, tentry{name: "artifacts/a", body: "artifact"})
	patch := func(p string, off int64, b []byte) {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	u64 := func(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

	// Sanity: the unpatched image reads.
	if _, err := readContained(t, rawOutput(t, good, 100), 1<<20); err != nil {
		t.Fatalf("unpatched image: %v", err)
	}

	cases := []struct {
		name     string
		mutate   func(p string)
		maxBytes int64
		want     error
		mention  string
	}{
		{"flipped payload byte", func(p string) { patch(p, BlockSize+600, []byte{'L' ^ 0x20}) }, 1 << 20, ErrMalformed, "SHA-256"},
		{"flipped digest byte", func(p string) { patch(p, 30, []byte{0xff}) }, 1 << 20, ErrMalformed, "SHA-256"},
		{"bad magic", func(p string) { patch(p, 0, []byte("CLOCHE-INPUT-V1\x00")) }, 1 << 20, ErrMalformed, "magic"},
		{"dirty header tail", func(p string) { patch(p, 100, []byte{1}) }, 1 << 20, ErrMalformed, "non-zero"},
		{"length past end", func(p string) { patch(p, 16, u64(uint64(len(good)+101))) }, 1 << 30, ErrMalformed, "past the end"},
		{"huge length", func(p string) { patch(p, 16, u64(^uint64(0))) }, 1 << 30, ErrMalformed, "past the end"},
		{"over maxBytes", func(string) {}, int64(len(good)) - 1, ErrOutputTooLarge, "limit"},
		{"negative maxBytes", func(string) {}, -1, ErrOutputTooLarge, "limit"},
		{"truncated image", func(p string) { os.Truncate(p, BlockSize+512) }, 1 << 20, ErrMalformed, "past the end"},
		{"tiny image", func(p string) { os.Truncate(p, 100) }, 1 << 20, ErrMalformed, "smaller"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := rawOutput(t, good, 100)
			tc.mutate(p)
			_, err := readContained(t, p, tc.maxBytes)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
		})
	}

	// An existing artifacts/ in destDir (or a symlink there) is not written into.
	p := rawOutput(t, good, 0)
	parent := t.TempDir()
	dest := filepath.Join(parent, "dest")
	os.Mkdir(dest, 0o755)
	os.Mkdir(filepath.Join(parent, "outside"), 0o755)
	os.Symlink("../outside", filepath.Join(dest, "artifacts"))
	if _, err := ReadOutput(p, dest, 1<<20); err == nil {
		t.Error("ReadOutput wrote into a pre-existing artifacts symlink")
	}
	if ents, _ := os.ReadDir(filepath.Join(parent, "outside")); len(ents) != 0 {
		t.Error("ReadOutput wrote through a symlink")
	}
	if _, err := ReadOutput(filepath.Join(parent, "missing.img"), dest, 1<<20); err == nil {
		t.Error("missing image accepted")
	}
	if _, err := ReadOutput(parent, dest, 1<<20); err == nil {
		t.Error("a directory accepted as image")
	}
}

// FuzzReadOutput reads arbitrary disk images. With fix set, the input is used as the
// payload under a correct header, so that the tar parser and extractor (not the checksum)
// face the input; without, the input is the raw image.
func FuzzReadOutput(f *testing.F) {
	f.Add(tarOf(f, tentry{name: ResultName, body: "{}"}, tentry{name: "artifacts/a/b", body: "x", mode: 0o755}), true)
	f.Add(tarOf(f, tentry{name: "artifacts/l", typ: tar.TypeSymlink, link: "../.."}, tentry{name: "artifacts/l/x", body: "x"}), true)
	f.Add(tarOf(f, tentry{name: "artifacts/../../outside/x", body: "x"}), true)
	f.Add(append([]byte(OutputMagic), make([]byte, 100)...), false)
	f.Add([]byte{}, false)
	f.Fuzz(func(t *testing.T, data []byte, fix bool) {
		var p string
		if fix {
			p = rawOutput(t, data, 0)
		} else {
			p = filepath.Join(t.TempDir(), "raw.img")
			if err := os.WriteFile(p, data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		parent := t.TempDir()
		dest := filepath.Join(parent, "dest")
		os.Mkdir(dest, 0o755)
		os.Mkdir(filepath.Join(parent, "outside"), 0o755)
		out, err := ReadOutput(p, dest, 1<<20)
		checkContained(t, parent)
		if err == nil {
			if len(out.Result) > MaxDocumentSize || len(out.Evidence) > MaxDocumentSize || len(out.Error) > MaxDocumentSize {
				t.Fatal("document over the cap accepted")
			}
			for _, a := range out.Artifacts {
				st, err := os.Lstat(filepath.Join(dest, "artifacts", a))
				if err != nil || !st.Mode().IsRegular() {
					t.Fatalf("listed artifact %q is not a regular file (%v)", a, err)
				}
			}
		}
	})
}
