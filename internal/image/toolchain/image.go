// Package toolchain builds the read-only root filesystem a build runs in: a reproducible ext4
// image followed by its dm-verity hash tree. The job manifest binds the image by its SHA-256
// and verity root hash; the guest mounts it through dm-verity, so every block it reads is
// checked against that root hash (docs/design.md, "attest all inputs").
package toolchain

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/cloche-dev/cloche/internal/atomicfile"
	"github.com/cloche-dev/cloche/internal/filestamp"
	"github.com/cloche-dev/cloche/job"
)

// Fixed parameters that make the image a function of the directory tree alone.
const (
	blockSize = 4096
	inodeSize = 256
	// fsUUID and hashSeed replace mke2fs's random filesystem UUID and directory hash seed.
	fsUUID   = "c10c4e00-7001-4c4a-9000-000000000001"
	hashSeed = "c10c4e00-7001-4c4a-9000-000000000002"
	// fakeTime is what mke2fs and debugfs use as "now" (E2FSPROGS_FAKE_TIME; 0 would mean
	// unset). File times are then set to the epoch.
	fakeTime = "1"
	// saltDomain separates the verity salt from other SHA-256 uses of the same bytes.
	saltDomain = "cloche toolchain verity salt v1\n"
)

// mke2fsConf pins the ext4 feature set instead of inheriting the host's
// /etc/mke2fs.conf, so that another e2fsprogs configuration gives the same image. No
// journal (read-only), no resize inode (never grown), no orphan file.
const mke2fsConf = `[defaults]
	base_features = sparse_super,large_file,filetype,dir_index,ext_attr
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384
[fs_types]
	ext4 = {
		features = extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
`

// MountPoints are directories the guest mounts on inside the toolchain root; FromDir adds
// those the tree lacks (the guest puts /src in an overlay itself).
var MountPoints = []string{"proc", "dev", "tmp"}

// Limits on the tree a toolchain image is made from.
const (
	maxTreeBytes   = 64 << 30
	maxTreeEntries = 4 << 20
	maxMetaSize    = 64 << 10
)

// ErrModified is wrapped by Load when the image is not the one its metadata describes.
var ErrModified = errors.New("toolchain image does not match its recorded digest")

// tools are the external programs FromDir runs.
type tools struct {
	mke2fs, debugfs, veritysetup string
}

var defaultTools = tools{mke2fs: "mke2fs", debugfs: "debugfs", veritysetup: "veritysetup"}

// FromDir makes a reproducible read-only ext4 image of dir at outPath, appends its dm-verity
// hash tree, and writes outPath and outPath.json (the returned job.Toolchain) atomically.
// The same tree always gives the same bytes: fixed UUID and hash seed, sorted directory
// population, fake creation time, all file times set to the epoch, a pinned feature set.
func FromDir(ctx context.Context, dir, outPath, name string) (*job.Toolchain, error) {
	return defaultTools.fromDir(ctx, dir, outPath, job.Toolchain{Name: name}, nil)
}

// inodeAttrs are the type-and-permission mode and the owner an entry gets in the image,
// replacing what mke2fs copied from the directory.
type inodeAttrs struct {
	mode     uint32
	uid, gid uint32
}

// fromDir makes the image of dir; id gives the record's Name and SourceImage, attrs (keyed
// by slash path, "" the root) the modes and owners to set in place of the directory's.
func (t tools) fromDir(ctx context.Context, dir, outPath string, id job.Toolchain, attrs map[string]inodeAttrs) (*job.Toolchain, error) {
	if dir == "" || outPath == "" {
		return nil, errors.New("toolchain image: source directory and output path are required")
	}
	tree, err := scanTree(dir)
	if err != nil {
		return nil, fmt.Errorf("toolchain image: %w", err)
	}
	work, err := os.MkdirTemp("", "cloche-toolchain-")
	if err != nil {
		return nil, fmt.Errorf("toolchain image: %w", err)
	}
	defer os.RemoveAll(work)
	conf := filepath.Join(work, "mke2fs.conf")
	if err := os.WriteFile(conf, []byte(mke2fsConf), 0o644); err != nil {
		return nil, fmt.Errorf("toolchain image: %w", err)
	}

	img, err := atomicfile.Create(outPath)
	if err != nil {
		return nil, fmt.Errorf("toolchain image: %w", err)
	}
	defer img.Abort()
	env := append(os.Environ(), "E2FSPROGS_FAKE_TIME="+fakeTime, "MKE2FS_CONFIG="+conf, "LC_ALL=C")

	dataBlocks := tree.estimateBlocks()
	if err := t.makeFilesystem(ctx, env, work, dir, img, tree, attrs, dataBlocks); err != nil {
		return nil, err
	}
	tc, err := t.appendVerity(ctx, env, img, dataBlocks)
	if err != nil {
		return nil, err
	}
	tc.Name, tc.SourceImage = id.Name, id.SourceImage
	if tc.ImageSHA256, tc.ImageSize, err = hashImage(img); err != nil {
		return nil, err
	}
	if err := validate(tc); err != nil {
		return nil, fmt.Errorf("toolchain image: %w", err)
	}
	if err := commit(img, outPath, tc); err != nil {
		return nil, fmt.Errorf("toolchain image: %w", err)
	}
	return tc, nil
}

// commit puts the finished image at outPath and its record at outPath.json. The image's
// digest was just taken over these bytes, so it is recorded beside it (filestamp) and the
// first Load need not read them back; failing to record it only costs that Load the read.
func commit(img *atomicfile.File, outPath string, tc *job.Toolchain) error {
	if err := img.Commit(0o644); err != nil {
		return err
	}
	_ = filestamp.Record(outPath, filestamp.Digests{"sha256": tc.ImageSHA256})
	return writeMeta(outPath, tc)
}

// makeFilesystem populates the ext4 filesystem of dataBlocks blocks from dir into img,
// with the pinned options, then sets every file time to the epoch and the modes and
// owners attrs gives.
func (t tools) makeFilesystem(ctx context.Context, env []string, work, dir string, img *atomicfile.File, tree *tree, attrs map[string]inodeAttrs, dataBlocks int64) error {
	if _, err := run(ctx, env, t.mke2fs, "-q", "-F", "-t", "ext4", "-b", strconv.Itoa(blockSize),
		"-I", strconv.Itoa(inodeSize), "-N", strconv.FormatInt(tree.entries+64, 10), "-m", "0",
		"-O", "^has_journal,^resize_inode", "-U", fsUUID,
		"-E", "hash_seed="+hashSeed+",root_owner=0:0,lazy_itable_init=0,nodiscard",
		"-d", dir, img.TempPath(), strconv.FormatInt(dataBlocks, 10)); err != nil {
		return fmt.Errorf("toolchain image: %w", err)
	}
	if err := img.Truncate(dataBlocks * blockSize); err != nil {
		return fmt.Errorf("toolchain image: %w", err)
	}
	if err := t.normaliseInodes(ctx, env, work, img.TempPath(), tree, attrs); err != nil {
		return fmt.Errorf("toolchain image: %w", err)
	}
	return nil
}

// appendVerity appends the dm-verity hash tree after the filesystem's dataBlocks and
// returns the verity fields of the toolchain.
func (t tools) appendVerity(ctx context.Context, env []string, img *atomicfile.File, dataBlocks int64) (*job.Toolchain, error) {
	// The salt is derived from the filesystem bytes: fixed for a given tree, different
	// between trees, so no precomputed hash tree serves two images.
	h := sha256.New()
	h.Write([]byte(saltDomain))
	if _, err := io.Copy(h, io.NewSectionReader(img.File, 0, dataBlocks*blockSize)); err != nil {
		return nil, fmt.Errorf("toolchain image: hash filesystem: %w", err)
	}
	salt := hex.EncodeToString(h.Sum(nil))
	hashOffset := dataBlocks * blockSize
	out, err := run(ctx, env, t.veritysetup, "format", "--no-superblock", "--hash=sha256",
		"--data-block-size="+strconv.Itoa(blockSize), "--hash-block-size="+strconv.Itoa(blockSize),
		"--data-blocks="+strconv.FormatInt(dataBlocks, 10), "--hash-offset="+strconv.FormatInt(hashOffset, 10),
		"--salt="+salt, img.TempPath(), img.TempPath())
	if err != nil {
		return nil, fmt.Errorf("toolchain image: %w", err)
	}
	rootHash, err := parseRootHash(out)
	if err != nil {
		return nil, fmt.Errorf("toolchain image: veritysetup format: %w", err)
	}
	return &job.Toolchain{
		VerityRootHash: rootHash,
		VeritySalt:     salt,
		DataBlocks:     dataBlocks,
		HashOffset:     hashOffset,
	}, nil
}

// hashImage is the SHA-256 and size of the whole image, filesystem and hash tree.
func hashImage(img *atomicfile.File) (string, int64, error) {
	if _, err := img.Seek(0, io.SeekStart); err != nil {
		return "", 0, fmt.Errorf("toolchain image: %w", err)
	}
	whole := sha256.New()
	size, err := io.Copy(whole, img.File)
	if err != nil {
		return "", 0, fmt.Errorf("toolchain image: hash image: %w", err)
	}
	return hex.EncodeToString(whole.Sum(nil)), size, nil
}

// writeMeta writes the record Load reads next to the image.
func writeMeta(imagePath string, tc *job.Toolchain) error {
	meta, err := json.MarshalIndent(tc, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(imagePath+".json", append(meta, '\n'), 0o644)
}

// tree is what scanTree learned about a source directory.
type tree struct {
	paths   []string // slash-separated, relative, sorted (WalkDir order), without the root
	missing []string // mount points to create
	entries int64
	blocks  int64 // data blocks the files and directories need
}

// scanTree walks dir, checks every name can be passed to debugfs, and sizes the image.
func scanTree(dir string) (*tree, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", dir)
	}
	t := &tree{}
	dirBytes := map[string]int64{}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		t.entries++
		if t.entries > maxTreeEntries {
			return fmt.Errorf("more than %d entries", maxTreeEntries)
		}
		if rel == "." {
			return nil
		}
		rel = filepath.ToSlash(rel)
		if unsupportedName(rel) {
			return fmt.Errorf("file name %q contains a quote, backslash or control character, which the image builder does not support", rel)
		}
		t.paths = append(t.paths, rel)
		// A directory entry is 8 bytes plus the name, padded to 4.
		dirBytes[filepath.Dir(p)] += 8 + int64(len(d.Name())+3)&^3
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case info.Mode().IsRegular():
			t.blocks += (info.Size() + blockSize - 1) / blockSize
		case info.Mode()&fs.ModeSymlink != 0 && info.Size() >= 60:
			t.blocks++ // longer targets do not fit in the inode
		}
		if t.blocks*blockSize > maxTreeBytes {
			return fmt.Errorf("tree exceeds %d bytes", int64(maxTreeBytes))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", dir, err)
	}
	for _, b := range dirBytes {
		t.blocks += (b+24)/blockSize + 1
	}
	for _, m := range MountPoints {
		fi, err := os.Lstat(filepath.Join(dir, m))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			t.missing = append(t.missing, m)
		case err != nil:
			return nil, err
		case !fi.IsDir():
			return nil, fmt.Errorf("/%s in %s is a %v, expected a directory (the guest mounts on it)", m, dir, fi.Mode().Type())
		}
	}
	return t, nil
}

// estimateBlocks sizes the filesystem: the data, 1/16 for extent and htree blocks, the
// inode tables, per-group bitmaps and descriptors, and fixed headroom.
func (t *tree) estimateBlocks() int64 {
	inodes := t.entries + 64
	data := t.blocks + t.blocks/16
	itable := (inodes*inodeSize + blockSize - 1) / blockSize
	groups := (data+itable)/32768 + 1
	return data + itable*2 + groups*64 + 1024
}

// normaliseInodes creates the missing mount points and sets every inode's times to the epoch
// with debugfs (mke2fs -d copies the source's times, and ctime cannot be set on the host),
// and the modes and owners attrs gives.
func (t tools) normaliseInodes(ctx context.Context, env []string, work, img string, tr *tree, attrs map[string]inodeAttrs) error {
	var script bytes.Buffer
	for _, m := range tr.missing {
		fmt.Fprintf(&script, "mkdir /%s\nsif /%s mode 040755\n", m, m)
	}
	paths := append([]string{"", "lost+found"}, tr.paths...)
	paths = append(paths, tr.missing...)
	for _, p := range paths {
		for _, field := range []string{"atime", "mtime", "ctime", "atime_extra", "mtime_extra", "ctime_extra"} {
			fmt.Fprintf(&script, "sif \"/%s\" %s 0\n", p, field)
		}
		if a, ok := attrs[p]; ok {
			fmt.Fprintf(&script, "sif \"/%s\" mode 0%o\nsif \"/%s\" uid %d\nsif \"/%s\" gid %d\n", p, a.mode, p, a.uid, p, a.gid)
		}
	}
	scriptPath := filepath.Join(work, "debugfs.cmds")
	if err := os.WriteFile(scriptPath, script.Bytes(), 0o644); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, t.debugfs, "-w", "-f", scriptPath, img)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", t.debugfs, err, tail(stderr.Bytes()))
	}
	// debugfs exits 0 even when a command fails; anything but its banner is an error.
	for line := range strings.SplitSeq(stderr.String(), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "debugfs ") {
			return fmt.Errorf("%s: setting file times failed: %s", t.debugfs, line)
		}
	}
	return nil
}

var rootHashLine = regexp.MustCompile(`(?m)^Root hash:\s+([0-9a-f]{64})\s*$`)

func parseRootHash(out []byte) (string, error) {
	m := rootHashLine.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("no \"Root hash:\" line with 64 hex digits in its output: %s", tail(out))
	}
	return string(m[1]), nil
}

// run runs a tool and returns its stdout; a failure names the tool and quotes its stderr.
func run(ctx context.Context, env []string, prog string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return nil, fmt.Errorf("%s not found (see scripts/install-deps.sh): %w", prog, err)
		}
		return nil, fmt.Errorf("%s %s failed: %w: %s", prog, args[0], err, tail(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

func tail(b []byte) string {
	const n = 2000
	s := strings.TrimSpace(string(b))
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// validate checks a toolchain record's shape (the same rules the job manifest applies).
func validate(tc *job.Toolchain) error {
	switch {
	case !hex64.MatchString(tc.ImageSHA256):
		return errors.New("imageSha256 must be 64 lowercase hex digits")
	case !hex64.MatchString(tc.VerityRootHash):
		return errors.New("verityRootHash must be 64 lowercase hex digits")
	case !hex64.MatchString(tc.VeritySalt):
		return errors.New("veritySalt must be 64 lowercase hex digits")
	case tc.DataBlocks <= 0 || tc.HashOffset != tc.DataBlocks*blockSize:
		return errors.New("dataBlocks must be positive and hashOffset equal dataBlocks*4096")
	case tc.ImageSize <= tc.HashOffset || tc.ImageSize%blockSize != 0:
		return errors.New("imageSize must be a multiple of 4096 beyond hashOffset")
	}
	return nil
}

// Load reads imagePath.json and checks that imagePath has the recorded size and SHA-256
// (a mismatch wraps ErrModified). The SHA-256 is taken from the stamp FromDir or an
// earlier Load left beside the image (filestamp.Suffix) while the file is unchanged.
func Load(imagePath string) (*job.Toolchain, error) {
	metaPath := imagePath + ".json"
	f, err := os.Open(metaPath)
	if err != nil {
		return nil, fmt.Errorf("load toolchain: %w", err)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxMetaSize+1))
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("load toolchain: %s: %w", metaPath, err)
	}
	if len(b) > maxMetaSize {
		return nil, fmt.Errorf("load toolchain: %s exceeds %d bytes", metaPath, maxMetaSize)
	}
	var tc job.Toolchain
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&tc); err != nil {
		return nil, fmt.Errorf("load toolchain: %s: %w", metaPath, err)
	}
	if err := validate(&tc); err != nil {
		return nil, fmt.Errorf("load toolchain: %s: %w", metaPath, err)
	}
	fi, err := os.Stat(imagePath)
	if err != nil {
		return nil, fmt.Errorf("load toolchain: %w", err)
	}
	if fi.Size() != tc.ImageSize {
		return nil, fmt.Errorf("load toolchain: %w: %s is %d bytes, expected %d", ErrModified, imagePath, fi.Size(), tc.ImageSize)
	}
	// The digest is read from the stamp beside the image while the file is unchanged
	// (filestamp), so a run does not re-read hundreds of megabytes; the guest's dm-verity
	// enforces the bytes it reads against the manifest's root hash anyway.
	d, err := filestamp.Sum(imagePath, filestamp.SHA256())
	if err != nil {
		return nil, fmt.Errorf("load toolchain: %w", err)
	}
	if got := d["sha256"]; got != tc.ImageSHA256 {
		return nil, fmt.Errorf("load toolchain: %w: %s has SHA-256 %s, expected %s", ErrModified, imagePath, got, tc.ImageSHA256)
	}
	return &tc, nil
}

// ErrNotCached is wrapped by FindCached when no cached image has the root hash asked for.
var ErrNotCached = errors.New("no cached toolchain image has that verity root hash")

// FindCached returns the toolchain image under stateDir's cache (StateDir/toolchains/*/,
// where Build and FromImage keep theirs) whose verity root hash is verityRootHash, loaded
// and checked with Load, and its path. Only the metadata of the other images is read. None:
// an error wrapping ErrNotCached.
func FindCached(stateDir, verityRootHash string) (*job.Toolchain, string, error) {
	if !hex64.MatchString(verityRootHash) {
		return nil, "", fmt.Errorf("find cached toolchain: verity root hash %q: expected 64 lowercase hex digits", verityRootHash)
	}
	paths, err := filepath.Glob(filepath.Join(stateDir, "toolchains", "*", ImageFile))
	if err != nil {
		return nil, "", fmt.Errorf("find cached toolchain: %w", err)
	}
	var failed []error
	for _, p := range paths {
		if root, err := metadataRoot(p + ".json"); err != nil || root != verityRootHash {
			continue
		}
		tc, err := Load(p)
		if err != nil {
			failed = append(failed, err)
			continue
		}
		return tc, p, nil
	}
	err = fmt.Errorf("find cached toolchain: %w: %s under %s", ErrNotCached, verityRootHash, filepath.Join(stateDir, "toolchains"))
	if len(failed) > 0 {
		err = fmt.Errorf("%w (unusable: %w)", err, errors.Join(failed...))
	}
	return nil, "", err
}

// metadataRoot reads the verity root hash from an image's metadata file, leniently: Load
// checks the file in full once the hash matches.
func metadataRoot(metaPath string) (string, error) {
	f, err := os.Open(metaPath)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var tc struct {
		VerityRootHash string `json:"verityRootHash"`
	}
	if err := json.NewDecoder(io.LimitReader(f, maxMetaSize)).Decode(&tc); err != nil {
		return "", err
	}
	return tc.VerityRootHash, nil
}
