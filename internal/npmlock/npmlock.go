// Package npmlock reads what the npm dependency path needs from a package-lock.json
// (lockfileVersion 2 or 3): the packages its "packages" map names with an integrity
// digest, and where npm's content-addressed cache (cacache) keeps each one.
package npmlock

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"path"
	"sort"
	"strings"
)

// Name is the lockfile's name in the workdir.
const Name = "package-lock.json"

// MaxSize bounds the lockfile read into memory.
const MaxSize = 64 << 20

// CacheDir is the directory npm's cache keeps its content-addressed store in, inside the
// directory npm_config_cache names; ContentDir is the content store inside it.
const (
	CacheDir   = "_cacache"
	ContentDir = CacheDir + "/content-v2"
)

// ErrLockfile: the lockfile is not one this path can check.
var ErrLockfile = errors.New("package-lock.json")

// Entry is one package of the lockfile's "packages" map.
type Entry struct {
	// Path is the entry's key: node_modules/NAME, nested as npm installs it.
	Path      string `json:"-"`
	Name      string `json:"name"`
	Version   string `json:"version"`
	Resolved  string `json:"resolved"`
	Integrity string `json:"integrity"`
	Link      bool   `json:"link"`
	InBundle  bool   `json:"inBundle"`
	Optional  bool   `json:"optional"`
}

// Lockfile is the part of a package-lock.json read here.
type Lockfile struct {
	LockfileVersion int               `json:"lockfileVersion"`
	Packages        map[string]*Entry `json:"packages"`
}

// Parse reads a lockfile; only lockfileVersion 2 and 3 have the "packages" map.
func Parse(data []byte) (*Lockfile, error) {
	var lf Lockfile
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&lf); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrLockfile, err)
	}
	if lf.LockfileVersion != 2 && lf.LockfileVersion != 3 {
		return nil, fmt.Errorf("%w: lockfileVersion is %d, expected 2 or 3 (npm 7 or later writes them)", ErrLockfile, lf.LockfileVersion)
	}
	if lf.Packages == nil {
		return nil, fmt.Errorf("%w: no \"packages\" map", ErrLockfile)
	}
	for p, e := range lf.Packages {
		if e == nil {
			return nil, fmt.Errorf("%w: packages[%q] is null", ErrLockfile, p)
		}
		e.Path = p
		if e.Name == "" {
			e.Name = nameFromPath(p)
		}
	}
	return &lf, nil
}

// nameFromPath is the package name of a lockfile key: what follows its last
// node_modules/ (a scoped name keeps its @scope/).
func nameFromPath(p string) string {
	if i := strings.LastIndex(p, "node_modules/"); i >= 0 {
		return p[i+len("node_modules/"):]
	}
	return path.Base(p)
}

// Fetched are the entries npm fetches: every one but the root (""), links and the
// packages bundled inside another, that has an integrity or a resolved location. They are
// sorted by path.
func (lf *Lockfile) Fetched() []*Entry {
	var out []*Entry
	for p, e := range lf.Packages {
		if p == "" || e.Link || e.InBundle || (e.Integrity == "" && e.Resolved == "") {
			continue
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// String names an entry as path (name@version).
func (e *Entry) String() string {
	return fmt.Sprintf("%s (%s@%s)", e.Path, e.Name, e.Version)
}

// strength orders the algorithms of Subresource Integrity, strongest first.
var strength = []string{"sha512", "sha384", "sha256", "sha1"}

// digestLen is each algorithm's digest length in bytes.
var digestLen = map[string]int{"sha512": 64, "sha384": 48, "sha256": 32, "sha1": 20}

// NewHash returns a hash of one of the algorithms an integrity string may name, for the
// host (finding content by its digest) and the guest (checking it) alike.
func NewHash(algorithm string) (hash.Hash, error) {
	switch algorithm {
	case "sha512":
		return sha512.New(), nil
	case "sha384":
		return sha512.New384(), nil
	case "sha256":
		return sha256.New(), nil
	case "sha1":
		return sha1.New(), nil
	}
	return nil, fmt.Errorf("unknown integrity hash %q", algorithm)
}

// Hash is one hash of an integrity string.
type Hash struct {
	Algorithm string
	Digest    []byte
}

// SRI is the hash as Subresource Integrity: ALGO-BASE64.
func (h Hash) SRI() string { return h.Algorithm + "-" + base64.StdEncoding.EncodeToString(h.Digest) }

// Hex is the digest in lowercase hex.
func (h Hash) Hex() string { return hex.EncodeToString(h.Digest) }

// ContentPath is where cacache keeps the content of this hash, relative to the cache
// directory: _cacache/content-v2/ALGO/HEX[0:2]/HEX[2:4]/HEX[4:].
func (h Hash) ContentPath() string {
	x := h.Hex()
	return path.Join(ContentDir, h.Algorithm, x[0:2], x[2:4], x[4:])
}

// Strongest is the strongest hash an integrity string gives (space-separated
// ALGO-BASE64[?OPTIONS] hashes). Hashes of algorithms npm does not know are ignored as
// npm ignores them; a malformed hash of a known one is an error, and so is none at all.
func Strongest(integrity string) (Hash, error) {
	best := -1
	var h Hash
	for _, f := range strings.Fields(integrity) {
		algo, b64, ok := strings.Cut(f, "-")
		rank := -1
		for i, a := range strength {
			if a == algo {
				rank = i
			}
		}
		if !ok || rank < 0 {
			continue
		}
		b64, _, _ = strings.Cut(b64, "?")
		d, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || len(d) != digestLen[algo] {
			return Hash{}, fmt.Errorf("integrity %q: the %s hash is not the base64 of %d bytes", integrity, algo, digestLen[algo])
		}
		if best < 0 || rank < best {
			best, h = rank, Hash{Algorithm: algo, Digest: d}
		}
	}
	if best < 0 {
		return Hash{}, fmt.Errorf("integrity %q: no sha512, sha384, sha256 or sha1 hash", integrity)
	}
	return h, nil
}
