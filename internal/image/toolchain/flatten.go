package toolchain

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// Whiteout markers of the OCI image layer format: ".wh.NAME" deletes NAME of the lower
// layers, ".wh..wh..opq" in a directory deletes everything the lower layers put in it.
const (
	whiteoutPrefix = ".wh."
	opaqueWhiteout = ".wh..wh..opq"
)

// Limits on one container image's layers, beyond the tree limits of FromDir.
const (
	maxLayers     = 256
	maxNameBytes  = 4095
	maxComponent  = 255
	maxLinkTarget = 4095
)

// Modes and owner of the root directory and of directories a layer implies without an
// entry of their own: fixed, so that the image does not depend on who flattened it.
const (
	implicitDirMode = 0o755
	typeDir         = 0o040000
	typeReg         = 0o100000
	typeSymlink     = 0o120000
)

// node is one entry of the flattened tree.
type node struct {
	typ      byte // tar.TypeDir, tar.TypeReg or tar.TypeSymlink
	perm     int64
	uid, gid int
	blob     *blob  // content of a regular file
	target   string // of a symlink
	layer    int    // index of the layer that last set this entry
	children map[string]*node
}

// blob is a regular file's content, staged in a file of its own until the tree is written.
type blob struct {
	path   string
	size   int64
	placed string // where writeTree put it first; later links to it copy from there
}

// flattener applies layers, bottom first, to an in-memory tree. Only the final tree is
// written to disk, and writing never goes through a symlink, so no layer can make the host
// write outside the output directory.
type flattener struct {
	root    *node
	stage   string // directory for blobs
	layer   int
	blobs   int
	entries int64
	bytes   int64
}

func newFlattener(stage string) *flattener {
	return &flattener{root: newDir(0), stage: stage}
}

func newDir(layer int) *node {
	return &node{typ: tar.TypeDir, perm: implicitDirMode, layer: layer, children: map[string]*node{}}
}

// applyLayer applies one uncompressed layer tarball.
func (f *flattener) applyLayer(r io.Reader) error {
	f.layer++
	if f.layer > maxLayers {
		return fmt.Errorf("more than %d layers", maxLayers)
	}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("layer %d: %w", f.layer, err)
		}
		if err := f.apply(hdr, tr); err != nil {
			return fmt.Errorf("layer %d: entry %q: %w", f.layer, hdr.Name, err)
		}
	}
}

func (f *flattener) apply(hdr *tar.Header, content io.Reader) error {
	f.entries++
	if f.entries > maxTreeEntries {
		return fmt.Errorf("more than %d entries", maxTreeEntries)
	}
	name, err := cleanEntryName(hdr.Name)
	if err != nil {
		return err
	}
	if name == "" {
		// The root's mode and owner are fixed; an entry for "./" changes neither.
		if hdr.Typeflag != tar.TypeDir {
			return errors.New("the root must be a directory")
		}
		return nil
	}
	dir, base := path.Split(name)
	parent, err := f.parentDir(strings.TrimSuffix(dir, "/"))
	if err != nil {
		return err
	}
	switch {
	case base == opaqueWhiteout:
		pruneLower(parent, f.layer)
		return nil
	case strings.HasPrefix(base, whiteoutPrefix):
		victim := strings.TrimPrefix(base, whiteoutPrefix)
		if victim == "" || victim == "." || victim == ".." {
			return errors.New("whiteout names no file")
		}
		if n, ok := parent.children[victim]; ok && n.layer < f.layer {
			delete(parent.children, victim)
		}
		return nil
	}
	n, err := f.newNode(hdr, content)
	if err != nil {
		return err
	}
	if old, ok := parent.children[base]; ok && old.typ == tar.TypeDir && n.typ == tar.TypeDir {
		n.children = old.children // a directory entry over a directory keeps its contents
	}
	parent.children[base] = n
	return nil
}

// parentDir returns the directory dir (slash-separated, "" for the root), creating the
// directories the layer implies. A symlink or file on the way is refused: following it
// would make the result depend on where links point, and a link could point outside.
func (f *flattener) parentDir(dir string) (*node, error) {
	n := f.root
	if dir == "" {
		return n, nil
	}
	for comp := range strings.SplitSeq(dir, "/") {
		child, ok := n.children[comp]
		if !ok {
			child = newDir(f.layer)
			n.children[comp] = child
		}
		if child.typ != tar.TypeDir {
			return nil, fmt.Errorf("parent %q is not a directory in the layers below", dir)
		}
		// The layer reaches through it: an opaque whiteout further up, later in the same
		// layer, must keep what this layer put below.
		child.layer = f.layer
		n = child
	}
	return n, nil
}

// pruneLower deletes everything below d that a layer under layer put there.
func pruneLower(d *node, layer int) {
	for name, c := range d.children {
		if c.layer < layer {
			delete(d.children, name)
		} else if c.typ == tar.TypeDir {
			pruneLower(c, layer)
		}
	}
}

// newNode makes the node a non-whiteout entry describes, staging a regular file's content.
func (f *flattener) newNode(hdr *tar.Header, content io.Reader) (*node, error) {
	if hdr.Uid < 0 || hdr.Gid < 0 || hdr.Uid > 1<<31-1 || hdr.Gid > 1<<31-1 {
		return nil, fmt.Errorf("owner %d:%d out of range", hdr.Uid, hdr.Gid)
	}
	n := &node{typ: hdr.Typeflag, perm: hdr.Mode & 0o7777, uid: hdr.Uid, gid: hdr.Gid, layer: f.layer}
	switch hdr.Typeflag {
	case tar.TypeDir:
		n.children = map[string]*node{}
	case tar.TypeReg:
		b, err := f.stageBlob(hdr.Size, content)
		if err != nil {
			return nil, err
		}
		n.blob = b
	case tar.TypeSymlink:
		if hdr.Linkname == "" || len(hdr.Linkname) > maxLinkTarget || strings.ContainsRune(hdr.Linkname, 0) {
			return nil, fmt.Errorf("symlink target must be 1..%d bytes without NUL", maxLinkTarget)
		}
		n.target, n.perm = hdr.Linkname, 0o777
	case tar.TypeLink:
		return f.hardLink(hdr)
	default:
		return nil, fmt.Errorf("type %q is not supported (only regular files, directories, symlinks and hard links to regular files)", hdr.Typeflag)
	}
	return n, nil
}

// hardLink turns a hard link into a regular file with the content and attributes of the
// file it links to, as that file is at this point: the image holds no hard links.
func (f *flattener) hardLink(hdr *tar.Header) (*node, error) {
	target, err := cleanEntryName(hdr.Linkname)
	if err != nil {
		return nil, fmt.Errorf("hard link target: %w", err)
	}
	t := f.lookup(target)
	if t == nil || t.typ != tar.TypeReg {
		return nil, fmt.Errorf("hard link target %q is not a regular file of the layers so far", hdr.Linkname)
	}
	c := *t
	c.layer = f.layer
	return &c, nil
}

// lookup finds name in the tree without following symlinks.
func (f *flattener) lookup(name string) *node {
	n := f.root
	for comp := range strings.SplitSeq(name, "/") {
		if n.typ != tar.TypeDir {
			return nil
		}
		if n = n.children[comp]; n == nil {
			return nil
		}
	}
	return n
}

// stageBlob copies exactly size bytes of content into a new file under the stage directory.
func (f *flattener) stageBlob(size int64, content io.Reader) (*blob, error) {
	if size < 0 || f.bytes+size > maxTreeBytes {
		return nil, fmt.Errorf("file of %d bytes exceeds the limit of %d bytes for the whole tree", size, int64(maxTreeBytes))
	}
	f.bytes += size
	f.blobs++
	p := filepath.Join(f.stage, fmt.Sprintf("%08d", f.blobs))
	out, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, err
	}
	n, err := io.Copy(out, io.LimitReader(content, size))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("stage content: %w", err)
	}
	if n != size {
		return nil, fmt.Errorf("content is %d bytes, header says %d", n, size)
	}
	return &blob{path: p, size: size}, nil
}

// cleanEntryName turns a layer entry's name into a relative slash path ("" for the root).
// Leading "/" and "./" are dropped (layers are rooted at the image's root either way); a
// ".." component is refused outright, even one that would stay inside, as are names the
// image builder cannot pass on.
func cleanEntryName(name string) (string, error) {
	if len(name) > maxNameBytes {
		return "", fmt.Errorf("name longer than %d bytes", maxNameBytes)
	}
	var comps []string
	for c := range strings.SplitSeq(name, "/") {
		switch {
		case c == "" || c == ".":
			continue
		case c == "..":
			return "", errors.New("name has a \"..\" component")
		case len(c) > maxComponent:
			return "", fmt.Errorf("name component longer than %d bytes", maxComponent)
		}
		comps = append(comps, c)
	}
	clean := strings.Join(comps, "/")
	if unsupportedName(clean) {
		return "", errors.New("name contains a quote, backslash or control character, which the image builder does not support")
	}
	return clean, nil
}

// unsupportedName reports whether a relative path cannot be passed to debugfs.
func unsupportedName(rel string) bool {
	return strings.ContainsAny(rel, "\"\\") || strings.ContainsFunc(rel, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// writeTree writes the flattened tree under dir (an empty directory) and returns every
// entry's mode and owner for the image, by path; the host's own modes and owners are not
// used, since an unprivileged host cannot set them.
func (f *flattener) writeTree(dir string) (map[string]inodeAttrs, error) {
	attrs := map[string]inodeAttrs{"": {mode: typeDir | implicitDirMode}}
	err := writeChildren(dir, "", f.root, attrs)
	return attrs, err
}

func writeChildren(dir, rel string, d *node, attrs map[string]inodeAttrs) error {
	names := make([]string, 0, len(d.children))
	for name := range d.children {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		n := d.children[name]
		childRel := path.Join(rel, name)
		p := filepath.Join(dir, filepath.FromSlash(childRel))
		a := inodeAttrs{mode: uint32(n.perm), uid: uint32(n.uid), gid: uint32(n.gid)}
		var err error
		switch n.typ {
		case tar.TypeDir:
			a.mode |= typeDir
			if err = os.Mkdir(p, 0o755); err == nil {
				err = writeChildren(dir, childRel, n, attrs)
			}
		case tar.TypeReg:
			a.mode |= typeReg
			err = placeBlob(n.blob, p)
		case tar.TypeSymlink:
			a.mode |= typeSymlink
			err = os.Symlink(n.target, p)
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", childRel, err)
		}
		attrs[childRel] = a
	}
	return nil
}

// placeBlob moves a staged blob to p the first time and copies it from there after (hard
// links became separate files).
func placeBlob(b *blob, p string) error {
	if b.placed == "" {
		if err := os.Rename(b.path, p); err != nil {
			return err
		}
		b.placed = p
		return os.Chmod(p, 0o644)
	}
	src, err := os.Open(b.placed)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, err = io.Copy(dst, src)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	return err
}
