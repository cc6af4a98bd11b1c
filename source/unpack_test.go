package source

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// entry is one raw tar entry for hand-made (hostile) archives.
type entry struct {
	name     string
	typ      byte
	body     string
	mode     int64
	linkname string
	size     int64 // header size when non-zero and body is empty (for limit tests)
}

func rawTar(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		mode := e.mode
		if mode == 0 { // Pack's modes
			mode = map[byte]int64{tar.TypeDir: 0o755, tar.TypeSymlink: 0o777}[typ]
			if mode == 0 {
				mode = 0o644
			}
		}
		hdr := &tar.Header{Name: e.name, Typeflag: typ, Mode: mode, Linkname: e.linkname, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if typ == tar.TypeReg {
			hdr.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatalf("write header %q: %v", e.name, err)
		}
		if e.body != "" {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// unpackHere unpacks data with its own digest into a fresh dest below a fresh parent and
// returns dest; the parent also holds "outside", which must stay empty.
func unpackHere(t *testing.T, data []byte, lim Limits) (string, error) {
	t.Helper()
	parent := t.TempDir()
	dest := filepath.Join(parent, "dest")
	outside := filepath.Join(parent, "outside")
	for _, d := range []string{dest, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	err := Unpack(context.Background(), bytes.NewReader(data), digest(data), int64(len(data)), dest, lim, 0, 0, false)
	assertContained(t, parent)
	return dest, err
}

// assertContained fails when anything but dest/... and an empty outside/ exists in parent.
func assertContained(t testing.TB, parent string) {
	t.Helper()
	ents, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() != "dest" && e.Name() != "outside" {
			t.Fatalf("unpack created %q outside the destination", e.Name())
		}
	}
	out, err := os.ReadDir(filepath.Join(parent, "outside"))
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 0 {
		t.Fatalf("unpack wrote %q into a directory outside the destination", out[0].Name())
	}
}

func TestUnpackRoundTrip(t *testing.T) {
	src := t.TempDir()
	makeTree(t, src, sampleTree())
	data, sum, size := packBytes(t, src, 1_700_000_000)

	dest := t.TempDir()
	if err := Unpack(context.Background(), bytes.NewReader(data), sum, size, dest, DefaultLimits(), 0, 0, false); err != nil {
		t.Fatalf("Unpack: %v", err)
	}
	// Every packed object is back with its content and normalised mode.
	for _, f := range sampleTree() {
		if strings.HasPrefix(f.name, ".git/") {
			if _, err := os.Lstat(filepath.Join(dest, ".git")); err == nil {
				t.Error("top-level .git was unpacked")
			}
			continue
		}
		p := filepath.Join(dest, filepath.FromSlash(f.name))
		st, err := os.Lstat(p)
		if err != nil {
			t.Errorf("%s: %v", f.name, err)
			continue
		}
		switch {
		case f.dir:
			if !st.IsDir() || st.Mode().Perm() != 0o755 {
				t.Errorf("%s: %v, want a 0755 directory", f.name, st.Mode())
			}
		case f.link != "":
			got, err := os.Readlink(p)
			if err != nil || got != f.link {
				t.Errorf("%s: link %q (%v), want %q", f.name, got, err, f.link)
			}
		default:
			b, err := os.ReadFile(p)
			if err != nil || string(b) != f.content {
				t.Errorf("%s: content differs (%v)", f.name, err)
			}
			want := fs.FileMode(0o644)
			if f.mode&0o100 != 0 {
				want = 0o755
			}
			if st.Mode() != want {
				t.Errorf("%s: mode %v, want %v", f.name, st.Mode(), want)
			}
		}
	}
	// The unpacked tree packs to the same archive and has the same tree id.
	again, _, _ := packBytes(t, dest, 1_700_000_000)
	if !bytes.Equal(again, data) {
		t.Error("repacking the unpacked tree gave a different archive")
	}
	id1, err1 := TreeID(src)
	id2, err2 := TreeID(dest)
	if err1 != nil || err2 != nil || id1 != id2 {
		t.Errorf("tree ids differ: %s (%v) vs %s (%v)", id1, err1, id2, err2)
	}
}

func TestUnpackModesAndOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	// Only Pack's modes are accepted (TestUnpackRejects has the others).
	data := rawTar(t,
		entry{name: "ro/", typ: tar.TypeDir},
		entry{name: "ro/f", body: "a plain file"},
		entry{name: "suid", body: "x", mode: 0o755},
		entry{name: "l", typ: tar.TypeSymlink, linkname: "suid"},
		entry{name: "implicit/parent/file", body: "y"},
	)
	dest := t.TempDir()
	if err := Unpack(context.Background(), bytes.NewReader(data), digest(data), int64(len(data)), dest, DefaultLimits(), 1234, 5678, true); err != nil {
		t.Fatal(err)
	}
	checks := map[string]fs.FileMode{
		"ro":              fs.ModeDir | 0o755,
		"ro/f":            0o644,
		"suid":            0o755,
		"implicit":        fs.ModeDir | 0o755,
		"implicit/parent": fs.ModeDir | 0o755,
		"l":               fs.ModeSymlink | 0o777,
	}
	for name, mode := range checks {
		st, err := os.Lstat(filepath.Join(dest, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != mode {
			t.Errorf("%s: mode %v, want %v", name, st.Mode(), mode)
		}
		sys := st.Sys().(*syscall.Stat_t)
		if sys.Uid != 1234 || sys.Gid != 5678 {
			t.Errorf("%s: owner %d:%d, want 1234:5678", name, sys.Uid, sys.Gid)
		}
	}
}

func TestUnpackDirectoryAfterContent(t *testing.T) {
	data := rawTar(t,
		entry{name: "d/sub/f", body: "x"},
		entry{name: "d/", typ: tar.TypeDir},
	)
	dest, err := unpackHere(t, data, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dest, "d"))
	if err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("d: %v %v, want mode 0755", st, err)
	}
	// But only once.
	data = rawTar(t,
		entry{name: "d/f", body: "x"},
		entry{name: "d/", typ: tar.TypeDir},
		entry{name: "d/", typ: tar.TypeDir},
	)
	if _, err := unpackHere(t, data, DefaultLimits()); !errors.Is(err, ErrUnsafeEntry) {
		t.Fatalf("second directory entry: err = %v, want ErrUnsafeEntry", err)
	}
}

func TestUnpackRejects(t *testing.T) {
	small := Limits{MaxFiles: 3, MaxFileSize: 10, MaxTotalSize: 15, MaxPathLen: 32, MaxDepth: 3}
	tests := []struct {
		name    string
		entries []entry
		lim     Limits
		want    error
		mention string // the error must name the entry
	}{
		{"dotdot", []entry{{name: "../x", body: "escape"}}, DefaultLimits(), ErrUnsafeEntry, "../x"},
		{"dotdot inside", []entry{{name: "a/../../x", body: "escape"}}, DefaultLimits(), ErrUnsafeEntry, "a/../../x"},
		{"absolute", []entry{{name: "/abs", body: "escape"}}, DefaultLimits(), ErrUnsafeEntry, "/abs"},
		{"absolute dir", []entry{{name: "/tmp/", typ: tar.TypeDir}}, DefaultLimits(), ErrUnsafeEntry, "/tmp/"},
		{"unclean", []entry{{name: "a//b", body: "x"}}, DefaultLimits(), ErrUnsafeEntry, "a//b"},
		{"dot prefix", []entry{{name: "./a", body: "x"}}, DefaultLimits(), ErrUnsafeEntry, "./a"},
		// Modes and times the tree id does not see, which Pack never writes.
		{"read-only dir", []entry{{name: "ro/", typ: tar.TypeDir, mode: 0o555}}, DefaultLimits(), ErrUnsafeEntry, "ro"},
		{"unlistable dir", []entry{{name: "src/", typ: tar.TypeDir, mode: 0o300}}, DefaultLimits(), ErrUnsafeEntry, "src"},
		{"group-only file", []entry{{name: "f", body: "x", mode: 0o640}}, DefaultLimits(), ErrUnsafeEntry, "mode 0640"},
		{"setuid file", []entry{{name: "f", body: "x", mode: 0o4755}}, DefaultLimits(), ErrUnsafeEntry, "mode 4755"},
		{"group-exec file", []entry{{name: "f", body: "x", mode: 0o654}}, DefaultLimits(), ErrUnsafeEntry, "mode 0654"},
		// The tree id skips the top-level .git: nothing would attest a config or a file there.
		{"top-level .git file", []entry{{name: ".git/config", body: "[core]\n\tfsmonitor = evil\n"}}, DefaultLimits(), ErrUnsafeEntry, ".git/config"},
		{"top-level .git dir", []entry{{name: ".git/", typ: tar.TypeDir}}, DefaultLimits(), ErrUnsafeEntry, ".git/"},
		{"top-level .git symlink", []entry{{name: ".git", typ: tar.TypeSymlink, linkname: "/tmp"}}, DefaultLimits(), ErrUnsafeEntry, ".git"},
		{"dot", []entry{{name: "./", typ: tar.TypeDir}}, DefaultLimits(), ErrUnsafeEntry, "./"},
		{"through symlink", []entry{
			{name: "l", typ: tar.TypeSymlink, linkname: "../outside"},
			{name: "l/x", body: "through the link"},
		}, DefaultLimits(), ErrUnsafeEntry, "l/x"},
		{"through symlink to inside dir", []entry{
			{name: "d/", typ: tar.TypeDir},
			{name: "l", typ: tar.TypeSymlink, linkname: "d"},
			{name: "l/x", body: "through the link"},
		}, DefaultLimits(), ErrUnsafeEntry, "l/x"},
		{"symlink then file", []entry{
			{name: "l", typ: tar.TypeSymlink, linkname: "../outside/x"},
			{name: "l", body: "overwrite the link target"},
		}, DefaultLimits(), ErrUnsafeEntry, "duplicate"},
		{"below a file", []entry{
			{name: "f", body: "x"},
			{name: "f/g", body: "y"},
		}, DefaultLimits(), ErrUnsafeEntry, "f/g"},
		{"duplicate file", []entry{{name: "a", body: "1"}, {name: "a", body: "2"}}, DefaultLimits(), ErrUnsafeEntry, "duplicate"},
		{"duplicate dir", []entry{{name: "d/", typ: tar.TypeDir}, {name: "d/", typ: tar.TypeDir}}, DefaultLimits(), ErrUnsafeEntry, "duplicate"},
		{"hardlink", []entry{{name: "a", body: "1"}, {name: "h", typ: tar.TypeLink, linkname: "a"}}, DefaultLimits(), ErrUnsafeEntry, "hard link"},
		{"char device", []entry{{name: "null", typ: tar.TypeChar}}, DefaultLimits(), ErrUnsafeEntry, "device"},
		{"block device", []entry{{name: "sda", typ: tar.TypeBlock}}, DefaultLimits(), ErrUnsafeEntry, "device"},
		{"fifo", []entry{{name: "p", typ: tar.TypeFifo}}, DefaultLimits(), ErrUnsafeEntry, "FIFO"},
		{"empty symlink", []entry{{name: "l", typ: tar.TypeSymlink}}, DefaultLimits(), ErrUnsafeEntry, "empty target"},
		{"too many files", []entry{{name: "a", body: "1"}, {name: "b", body: "2"}, {name: "c", body: "3"}, {name: "d", body: "4"}}, small, ErrLimit, `"d"`},
		{"file too big", []entry{{name: "big", body: "01234567890"}}, small, ErrLimit, "big"},
		{"total too big", []entry{{name: "a", body: "0123456789"}, {name: "b", body: "012345"}}, small, ErrLimit, `"b"`},
		{"path too long", []entry{{name: strings.Repeat("n", 33), body: "x"}}, small, ErrLimit, "nnnn"},
		{"too deep", []entry{{name: "a/b/c/d", body: "x"}}, small, ErrLimit, "a/b/c/d"},
		{"symlink target too long", []entry{{name: "l", typ: tar.TypeSymlink, linkname: strings.Repeat("t", 33)}}, small, ErrLimit, "target"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			data := rawTar(t, tc.entries...)
			_, err := unpackHere(t, data, tc.lim)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if errors.Is(err, ErrDigestMismatch) {
				t.Fatalf("err = %v also claims a digest mismatch", err)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
		})
	}
}

// ustarBlock builds one raw ustar header block, for entries archive/tar refuses to write.
func ustarBlock(name string, typ byte, size int64) []byte {
	return headerBlock(name, typ, size, "ustar\x0000")
}

func headerBlock(name string, typ byte, size int64, magic string) []byte {
	b := make([]byte, 512)
	copy(b[0:100], name)
	copy(b[100:108], "0000644\x00")
	copy(b[108:116], "0000000\x00")
	copy(b[116:124], "0000000\x00")
	copy(b[124:136], fmt.Sprintf("%011o\x00", size))
	copy(b[136:148], "00000000000\x00")
	b[156] = typ
	copy(b[257:265], magic)
	copy(b[148:156], "        ")
	sum := 0
	for _, c := range b {
		sum += int(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

// rawEntry is a header block plus body padded to a block.
func rawEntry(name string, typ byte, body string) []byte {
	out := ustarBlock(name, typ, int64(len(body)))
	out = append(out, body...)
	return append(out, make([]byte, (512-len(body)%512)%512)...)
}

func rawArchive(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return append(out, make([]byte, 1024)...)
}

func TestUnpackRawHeaders(t *testing.T) {
	// A regular file whose name ends in "/" (archive/tar will not write it).
	_, err := unpackHere(t, rawArchive(rawEntry("a/", tar.TypeReg, "x")), DefaultLimits())
	if !errors.Is(err, ErrUnsafeEntry) || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("regular file named a/: err = %v, want ErrUnsafeEntry", err)
	}

	// A PAX GNU sparse 1.0 entry as GNU tar writes it: logical size 1 GiB, a tiny map.
	records := paxRecord("GNU.sparse.major", "1") + paxRecord("GNU.sparse.minor", "0") +
		paxRecord("GNU.sparse.name", "s") + paxRecord("GNU.sparse.realsize", "1073741824")
	sparseMap := "1\n0\n1\n"
	body := sparseMap + strings.Repeat("\x00", 512-len(sparseMap)) + "x"
	data := rawArchive(rawEntry("PaxHeaders.0/s", tar.TypeXHeader, records), rawEntry("GNUSparseFile.0/s", tar.TypeReg, body))
	_, err = unpackHere(t, data, DefaultLimits())
	if !errors.Is(err, ErrUnsafeEntry) || !strings.Contains(err.Error(), "sparse") {
		t.Errorf("sparse file: err = %v, want ErrUnsafeEntry", err)
	}

	// Old GNU sparse type 'S'.
	_, err = unpackHere(t, rawArchive(headerBlock("old-sparse", tar.TypeGNUSparse, 0, "ustar  \x00")), DefaultLimits())
	if !errors.Is(err, ErrUnsafeEntry) {
		t.Errorf("GNU sparse type: err = %v, want ErrUnsafeEntry", err)
	}

	// A PAX record that renames an innocent-looking entry to an escaping path.
	data = rawArchive(rawEntry("PaxHeaders.0/ok", tar.TypeXHeader, paxRecord("path", "../../escaped")), rawEntry("ok", tar.TypeReg, "x"))
	_, err = unpackHere(t, data, DefaultLimits())
	if !errors.Is(err, ErrUnsafeEntry) || !strings.Contains(err.Error(), "../../escaped") {
		t.Errorf("PAX path override: err = %v, want ErrUnsafeEntry naming the real path", err)
	}
}

// paxRecord formats "len key=value\n" where len counts the whole record.
func paxRecord(k, v string) string {
	size := len(k) + len(v) + 3
	for {
		rec := fmt.Sprintf("%d %s=%s\n", size, k, v)
		if len(rec) == size {
			return rec
		}
		size = len(rec)
	}
}

func TestUnpackDigest(t *testing.T) {
	src := t.TempDir()
	makeTree(t, src, sampleTree())
	data, sum, size := packBytes(t, src, 0)
	off := bytes.Index(data, []byte("hello\n"))
	if off < 0 {
		t.Fatal("README content not found in the archive")
	}

	flipped := bytes.Clone(data)
	flipped[off] ^= 0x01
	truncatedMid := data[:off+3]
	truncatedTrailer := data[:len(data)-512]
	longer := append(bytes.Clone(data), 0)
	otherSum := digest([]byte("something else"))

	cases := []struct {
		name    string
		data    []byte
		sum     string
		size    int64
		mention string
	}{
		{"one byte changed", flipped, sum, size, "SHA-256"},
		{"truncated mid-file", truncatedMid, sum, size, "ended after"},
		{"truncated trailer", truncatedTrailer, sum, size, "ended after"},
		{"longer", longer, sum, size, "longer"},
		{"other digest", data, otherSum, size, "SHA-256"},
		{"smaller expected size", data, sum, size - 1, "longer"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dest := t.TempDir()
			err := Unpack(context.Background(), bytes.NewReader(tc.data), tc.sum, tc.size, dest, DefaultLimits(), 0, 0, false)
			if !errors.Is(err, ErrDigestMismatch) {
				t.Fatalf("err = %v, want ErrDigestMismatch", err)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
		})
	}

	// A hostile entry in a stream that is not the bound archive reports both.
	evil := rawTar(t, entry{name: "../x", body: "escape"})
	err := Unpack(context.Background(), bytes.NewReader(evil), sum, size, t.TempDir(), DefaultLimits(), 0, 0, false)
	if !errors.Is(err, ErrDigestMismatch) || !errors.Is(err, ErrUnsafeEntry) {
		t.Fatalf("err = %v, want both ErrDigestMismatch and ErrUnsafeEntry", err)
	}
}

func TestUnpackArguments(t *testing.T) {
	data := rawTar(t, entry{name: "a", body: "x"})
	sum := digest(data)
	n := int64(len(data))
	ctx := context.Background()

	nonEmpty := t.TempDir()
	os.WriteFile(filepath.Join(nonEmpty, "already"), nil, 0o644)
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)

	cases := []struct {
		name string
		run  func() error
	}{
		{"non-empty dest", func() error {
			return Unpack(ctx, bytes.NewReader(data), sum, n, nonEmpty, DefaultLimits(), 0, 0, false)
		}},
		{"dest is a file", func() error { return Unpack(ctx, bytes.NewReader(data), sum, n, file, DefaultLimits(), 0, 0, false) }},
		{"missing dest", func() error {
			return Unpack(ctx, bytes.NewReader(data), sum, n, file+".missing", DefaultLimits(), 0, 0, false)
		}},
		{"uppercase digest", func() error {
			return Unpack(ctx, bytes.NewReader(data), strings.ToUpper(sum), n, t.TempDir(), DefaultLimits(), 0, 0, false)
		}},
		{"short digest", func() error {
			return Unpack(ctx, bytes.NewReader(data), sum[:10], n, t.TempDir(), DefaultLimits(), 0, 0, false)
		}},
		{"negative size", func() error {
			return Unpack(ctx, bytes.NewReader(data), sum, -1, t.TempDir(), DefaultLimits(), 0, 0, false)
		}},
		{"zero limits", func() error { return Unpack(ctx, bytes.NewReader(data), sum, n, t.TempDir(), Limits{}, 0, 0, false) }},
	}
	for _, tc := range cases {
		if err := tc.run(); err == nil {
			t.Errorf("%s: Unpack succeeded, want an error", tc.name)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := Unpack(cctx, bytes.NewReader(data), sum, n, t.TempDir(), DefaultLimits(), 0, 0, false); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: err = %v, want context.Canceled", err)
	}
	// And the valid call works, so the failures above are the arguments' fault.
	if err := Unpack(ctx, bytes.NewReader(data), sum, n, t.TempDir(), DefaultLimits(), 0, 0, false); err != nil {
		t.Errorf("valid Unpack: %v", err)
	}
}

// FuzzUnpack feeds arbitrary bytes as an archive whose digest matches (so that the
// entry checks, not the digest, are what stands between the input and the file system)
// and checks that nothing is ever created outside the destination and nothing panics.
func FuzzUnpack(f *testing.F) {
	src := f.TempDir()
	makeTree(f, src, sampleTree()[:12])
	var buf bytes.Buffer
	if _, _, err := Pack(context.Background(), src, 0, &buf); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add(rawTar(f, entry{name: "../x", body: "escape"}))
	f.Add(rawTar(f, entry{name: "l", typ: tar.TypeSymlink, linkname: ".."}, entry{name: "l/x", body: "y"}))
	f.Add(rawTar(f, entry{name: "l", typ: tar.TypeSymlink, linkname: "../outside/f"}, entry{name: "l", body: "y"}))
	f.Add(rawTar(f, entry{name: "d/", typ: tar.TypeDir, mode: 0o555}, entry{name: "d/f", body: "z"}))
	f.Add([]byte{})
	lim := Limits{MaxFiles: 64, MaxFileSize: 1 << 20, MaxTotalSize: 4 << 20, MaxPathLen: 256, MaxDepth: 16}
	f.Fuzz(func(t *testing.T, data []byte) {
		parent := t.TempDir()
		dest := filepath.Join(parent, "dest")
		outside := filepath.Join(parent, "outside")
		os.Mkdir(dest, 0o755)
		os.Mkdir(outside, 0o755)
		_ = Unpack(context.Background(), bytes.NewReader(data), digest(data), int64(len(data)), dest, lim, 0, 0, false)
		assertContained(t, parent)
		// Whatever was created is a plain file, directory or symlink; make the tree
		// removable even when the archive made directories read-only.
		filepath.Walk(dest, func(p string, info fs.FileInfo, err error) error {
			if err != nil {
				return nil
			}
			if info.IsDir() {
				os.Chmod(p, 0o755)
			} else if m := info.Mode().Type(); m != 0 && m != fs.ModeSymlink {
				t.Errorf("%s has type %v", p, m)
			}
			return nil
		})
	})
}

// Unpacked files and directories take their times from the archive (the packer writes
// SOURCE_DATE_EPOCH), whose digest the launch binds, not from the guest's clock, which the
// host controls: a host must not decide through the clock whether make rebuilds a file.
func TestUnpackTimesFromTheArchive(t *testing.T) {
	src := t.TempDir()
	makeTree(t, src, sampleTree())
	const epoch = 1_700_000_000
	data, _, _ := packBytes(t, src, epoch)
	dest, err := unpackHere(t, data, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	err = filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dest || d.Type()&fs.ModeSymlink != 0 {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.ModTime().Unix() != epoch {
			t.Errorf("%s: mtime %v, want the archive's %v", p, fi.ModTime(), time.Unix(epoch, 0))
		}
		n++
		return nil
	})
	if err != nil || n < 2 {
		t.Fatalf("walked %d entries: %v", n, err)
	}
	// Implicit parents (a file entry before its directory's) get the entry's time too.
	dest, err = unpackHere(t, rawTar(t, entry{name: "a/b/f", body: "x"}), DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"a", "a/b", "a/b/f"} {
		if fi, err := os.Stat(filepath.Join(dest, p)); err != nil || fi.ModTime().Unix() != 0 {
			t.Errorf("%s: %v %v, want the entry's time 0", p, fi.ModTime(), err)
		}
	}
}

// Entries whose times differ are refused: the tree id ignores times, but make does not.
func TestUnpackRefusesDifferingTimes(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i, name := range []string{"gen.c", "gen.y"} {
		body := []byte("x")
		hdr := &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: 1, ModTime: time.Unix(int64(1e9+i), 0), Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	tw.Close()
	_, err := unpackHere(t, buf.Bytes(), DefaultLimits())
	if !errors.Is(err, ErrUnsafeEntry) || !strings.Contains(err.Error(), `"gen.y": modification time`) {
		t.Fatalf("err = %v, want ErrUnsafeEntry naming gen.y's time", err)
	}
}
