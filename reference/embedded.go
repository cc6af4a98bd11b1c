package reference

import (
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"
)

// embedded holds the reference values the release workflow placed in embedded/ (see its
// README): they are part of this binary, so trusting them is trusting this cloche.
//
//go:embed embedded
var embedded embed.FS

// EmbeddedBundleSuffix names the embedded files that are reference-values bundles.
const EmbeddedBundleSuffix = ".sigstore.json"

// Embedded is one embedded reference-values document.
type Embedded struct {
	// Name is the file name in embedded/; SHA256 the digest of its signed statement.
	Name, SHA256 string
	Document     *Document
}

// EmbeddedDocuments returns the reference values built into this cloche, sorted by name.
// A malformed embedded file is an error: it was put there at release time, and a release
// that ships one must not verify anything.
func EmbeddedDocuments() ([]Embedded, error) {
	sub, err := fs.Sub(embedded, "embedded")
	if err != nil {
		return nil, err
	}
	return documentsIn(sub)
}

// documentsIn reads every *.sigstore.json of fsys as an (unverified: the binary is the
// trust) reference-values bundle.
func documentsIn(fsys fs.FS) ([]Embedded, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, err
	}
	var out []Embedded
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), EmbeddedBundleSuffix) {
			continue
		}
		b, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, err
		}
		if len(b) > MaxBundleSize {
			return nil, fmt.Errorf("embedded reference values %s: %d bytes, limit %d", e.Name(), len(b), MaxBundleSize)
		}
		d, digest, err := UnverifiedStatement(b)
		if err != nil {
			return nil, fmt.Errorf("embedded reference values %s: %w", path.Base(e.Name()), err)
		}
		out = append(out, Embedded{Name: e.Name(), SHA256: digest, Document: d})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// EmbeddedValues returns just the embedded documents, in EmbeddedDocuments' order: what a
// verifier takes as its release's trusted measurements (verify.Options.EmbeddedReferences).
func EmbeddedValues() ([]*Document, error) {
	embedded, err := EmbeddedDocuments()
	if err != nil {
		return nil, err
	}
	docs := make([]*Document, len(embedded))
	for i, e := range embedded {
		docs[i] = e.Document
	}
	return docs, nil
}
