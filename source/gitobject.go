package source

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"regexp"
	"strconv"
	"strings"
)

// ObjectFormat is a git repository's object format: the hash that names its objects.
type ObjectFormat string

// The object formats git knows (`git init --object-format`). The empty format is SHA-1,
// git's default, so documents written before the field existed keep their meaning.
const (
	FormatSHA1   ObjectFormat = "sha1"
	FormatSHA256 ObjectFormat = "sha256"
)

// ErrCommit: the git objects the host passed do not describe the source (a commit whose
// tree is not the packed source, a tag that does not point at the commit, a malformed
// object).
var ErrCommit = errors.New("source commit does not match")

// MaxObjectSize caps one raw git object (commit, tag or tree) passed with the job: commit
// and tag messages, signatures included, are a few kilobytes.
const MaxObjectSize = 64 << 10

// MaxTreePath caps the directories between a commit's root tree and the source.
const MaxTreePath = 64

// Check refuses a format git does not know.
func (f ObjectFormat) Check() error {
	switch f {
	case "", FormatSHA1, FormatSHA256:
		return nil
	}
	return fmt.Errorf("object format %q, expected sha1 or sha256", string(f))
}

func (f ObjectFormat) newHash() hash.Hash {
	if f == FormatSHA256 {
		return sha256.New()
	}
	return sha1.New()
}

// HexLen is the length of an object id of this format in hex.
func (f ObjectFormat) HexLen() int { return 2 * f.newHash().Size() }

// objectID hashes a git object of the given type and body: H("<type> <len>\0" || body).
func (f ObjectFormat) objectID(typ string, body []byte) []byte {
	h := f.newHash()
	h.Write([]byte(typ + " " + strconv.Itoa(len(body)) + "\x00"))
	h.Write(body)
	return h.Sum(nil)
}

// ObjectID is the hex id of a git object of the given type and body.
func (f ObjectFormat) ObjectID(typ string, body []byte) string {
	return hex.EncodeToString(f.objectID(typ, body))
}

// GitObjects are the raw git objects that name the source: what `git cat-file commit`,
// `git cat-file tag` and `git cat-file tree` print. The host reads them from its checkout;
// the guest trusts none of them until AttestCommit has tied them to the tree it computed.
type GitObjects struct {
	Format ObjectFormat `json:"format,omitempty"`
	Commit []byte       `json:"commit"`
	// Tag is the annotated tag object, when the build is of a tag; a lightweight tag has
	// no object and cannot be attested.
	Tag []byte `json:"tag,omitempty"`
	// Path is the source's directory inside the commit ("" for the whole commit) and
	// Trees the raw tree objects from the commit's root tree down to Path's parent, one
	// per component of Path.
	Path  string   `json:"path,omitempty"`
	Trees [][]byte `json:"trees,omitempty"`
}

// Attested is what AttestCommit established: ids computed from the objects' bytes.
type Attested struct {
	Commit string
	// Tag and TagObject are the annotated tag's name and object id ("" without a tag).
	Tag       string
	TagObject string
	Path      string
}

// tagName is what a tag name may hold; its length limit (255 bytes) is checked apart: a
// counted repetition would cost 10 ms of regexp compilation at every start of every program
// that links this package.
var tagName = regexp.MustCompile(`^[^\x00-\x20~^:?*\[\\\x7f]+$`)

// AttestCommit checks that the commit's tree, followed down Path, is tree (the id computed
// over the unpacked source in the same format), that a tag points at the commit, and
// returns the commit id, and the tag name and tag object id, computed from the objects.
// Every refusal wraps ErrCommit and names both ids.
func AttestCommit(o GitObjects, tree string) (*Attested, error) {
	f := o.Format
	if err := f.Check(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCommit, err)
	}
	if len(tree) != f.HexLen() {
		return nil, fmt.Errorf("%w: source tree id %q is not a %s object id", ErrCommit, tree, formatName(f))
	}
	if err := checkSizes(o); err != nil {
		return nil, err
	}
	root, err := commitTree(f, o.Commit)
	if err != nil {
		return nil, err
	}
	commit := f.ObjectID("commit", o.Commit)
	got, err := followPath(f, root, o.Path, o.Trees)
	if err != nil {
		return nil, fmt.Errorf("%w: commit %s: %w", ErrCommit, commit, err)
	}
	if got != tree {
		where := "tree"
		if o.Path != "" {
			where = "tree at " + o.Path
		}
		return nil, fmt.Errorf("%w: commit %s has %s %s, but the packed source's tree is %s", ErrCommit, commit, where, got, tree)
	}
	a := &Attested{Commit: commit, Path: o.Path}
	if o.Tag != nil {
		if a.Tag, err = tagTarget(f, o.Tag, commit); err != nil {
			return nil, err
		}
		a.TagObject = f.ObjectID("tag", o.Tag)
	}
	return a, nil
}

func formatName(f ObjectFormat) string {
	if f == "" {
		return string(FormatSHA1)
	}
	return string(f)
}

func checkSizes(o GitObjects) error {
	switch {
	case len(o.Commit) == 0:
		return fmt.Errorf("%w: no commit object", ErrCommit)
	case len(o.Commit) > MaxObjectSize || len(o.Tag) > MaxObjectSize:
		return fmt.Errorf("%w: a commit or tag object is over %d bytes", ErrCommit, MaxObjectSize)
	case o.Tag != nil && len(o.Tag) == 0:
		return fmt.Errorf("%w: empty tag object", ErrCommit)
	case len(o.Trees) > MaxTreePath:
		return fmt.Errorf("%w: %d tree objects, limit %d", ErrCommit, len(o.Trees), MaxTreePath)
	}
	for i, t := range o.Trees {
		if len(t) > MaxObjectSize*16 {
			return fmt.Errorf("%w: tree object %d is over %d bytes", ErrCommit, i, MaxObjectSize*16)
		}
	}
	return nil
}

// headers returns the header lines of a commit or tag object (up to the blank line that
// starts the message). Continuation lines (a leading space, as in gpgsig) are skipped.
func headers(obj []byte) []string {
	head, _, _ := bytes.Cut(obj, []byte("\n\n"))
	var out []string
	for _, l := range strings.Split(string(head), "\n") {
		if !strings.HasPrefix(l, " ") {
			out = append(out, l)
		}
	}
	return out
}

// objectHeader parses "<key> <id>" as the header line at index i.
func objectHeader(f ObjectFormat, h []string, i int, key string) (string, error) {
	if i >= len(h) {
		return "", fmt.Errorf("no %q line", key)
	}
	id, ok := strings.CutPrefix(h[i], key+" ")
	if !ok || len(id) != f.HexLen() || !isLowerHex(id) {
		return "", fmt.Errorf("header line %d is %q, expected %q and a %s object id", i+1, h[i], key, formatName(f))
	}
	return id, nil
}

// commitTree is the root tree a commit object names in its first header line.
func commitTree(f ObjectFormat, commit []byte) (string, error) {
	tree, err := objectHeader(f, headers(commit), 0, "tree")
	if err != nil {
		return "", fmt.Errorf("%w: commit object: %w", ErrCommit, err)
	}
	return tree, nil
}

// tagTarget checks an annotated tag object ("object", "type", "tag" lines, in git's
// order) against the commit and returns the tag's name.
func tagTarget(f ObjectFormat, tag []byte, commit string) (string, error) {
	h := headers(tag)
	obj, err := objectHeader(f, h, 0, "object")
	if err != nil {
		return "", fmt.Errorf("%w: tag object: %w", ErrCommit, err)
	}
	if len(h) < 3 || h[1] != "type commit" || !strings.HasPrefix(h[2], "tag ") {
		return "", fmt.Errorf("%w: tag object: expected \"type commit\" and \"tag NAME\" after the object line", ErrCommit)
	}
	name := strings.TrimPrefix(h[2], "tag ")
	if len(name) > 255 || !tagName.MatchString(name) {
		return "", fmt.Errorf("%w: tag object names %q, not a valid tag name", ErrCommit, name)
	}
	if obj != commit {
		return "", fmt.Errorf("%w: tag %s points at %s, but the commit is %s", ErrCommit, name, obj, commit)
	}
	return name, nil
}

// followPath walks from the root tree down the components of p through the given tree
// objects and returns the id of the last component.
func followPath(f ObjectFormat, root, p string, trees [][]byte) (string, error) {
	if p == "" {
		if len(trees) != 0 {
			return "", fmt.Errorf("%d tree objects given for the whole commit", len(trees))
		}
		return root, nil
	}
	if _, bad := cleanEntryName(p); bad != "" {
		return "", fmt.Errorf("source path %q: %s", p, bad)
	}
	parts := strings.Split(p, "/")
	if len(trees) != len(parts) {
		return "", fmt.Errorf("source path %q has %d components but %d tree objects were given", p, len(parts), len(trees))
	}
	id := root
	for i, name := range parts {
		if got := f.ObjectID("tree", trees[i]); got != id {
			return "", fmt.Errorf("tree object %d has id %s, expected %s", i, got, id)
		}
		next, err := findDir(f, trees[i], name)
		if err != nil {
			return "", err
		}
		id = next
	}
	return id, nil
}

// findDir finds the directory entry name in a raw tree object ("<mode> <name>\0<id>"
// repeated) and returns its id.
func findDir(f ObjectFormat, tree []byte, name string) (string, error) {
	n := f.HexLen() / 2
	for len(tree) > 0 {
		sp := bytes.IndexByte(tree, ' ')
		nul := bytes.IndexByte(tree, 0)
		if sp < 0 || nul < sp || len(tree) < nul+1+n {
			return "", errors.New("malformed tree object")
		}
		mode, entry := string(tree[:sp]), string(tree[sp+1:nul])
		id := hex.EncodeToString(tree[nul+1 : nul+1+n])
		tree = tree[nul+1+n:]
		if entry == name {
			if mode != "40000" {
				return "", fmt.Errorf("%q is mode %s in its tree, not a directory", name, mode)
			}
			return id, nil
		}
	}
	return "", fmt.Errorf("no directory %q in its tree", name)
}

func isLowerHex(s string) bool {
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// CheckTagRef refuses a ref (the host's word) that names another tag than the attested
// tag object, so a statement never shows one tag in its ref and another in its tag.
func CheckTagRef(ref, tag string) error {
	if tag != "" && ref != "" && ref != "refs/tags/"+tag {
		return fmt.Errorf("%w: ref is %s, but the tag object is of tag %s (expected refs/tags/%s)", ErrCommit, ref, tag, tag)
	}
	return nil
}
