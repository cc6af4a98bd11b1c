package provenance

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/cloche-dev/cloche/job"
)

// ChecksumsName is the subject a statement names beside the artifacts: a file of their
// SHA-256 sums in sha256sum's format, sorted by path, as release tooling (goreleaser,
// `sha256sum -c`) expects. The host writes it next to the artifacts. Its content follows
// from the result record alone, so a verifier recomputes its digest instead of trusting
// the host's; a build whose own artifact has this name keeps its file and gets none.
const ChecksumsName = "SHA256SUMS"

// Checksums is the content of the ChecksumsName file for a build's artifacts: one
// "<sha256>  <path>" line each, sorted by path.
func Checksums(artifacts []job.Artifact) []byte {
	sorted := slices.Clone(artifacts)
	slices.SortFunc(sorted, func(a, b job.Artifact) int { return strings.Compare(a.Path, b.Path) })
	var b bytes.Buffer
	for _, a := range sorted {
		fmt.Fprintf(&b, "%s  %s\n", a.SHA256, a.Path)
	}
	return b.Bytes()
}

// checksumsSubject is the ChecksumsName subject's digest for these artifacts, or "" when an
// artifact itself has that name (its own digest is then the subject).
func checksumsSubject(artifacts []job.Artifact) string {
	for _, a := range artifacts {
		if a.Path == ChecksumsName {
			return ""
		}
	}
	sum := sha256.Sum256(Checksums(artifacts))
	return hex.EncodeToString(sum[:])
}

// ChecksumsArtifact is the ChecksumsName file NewStatement names as a subject beside these
// artifacts, as an artifact record (its name, digest and size); nil when an artifact itself
// has that name.
func ChecksumsArtifact(artifacts []job.Artifact) *job.Artifact {
	if !HasChecksumsSubject(artifacts) {
		return nil
	}
	b := Checksums(artifacts)
	sum := sha256.Sum256(b)
	return &job.Artifact{Path: ChecksumsName, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(b))}
}

// HasChecksumsSubject says whether NewStatement names a ChecksumsName file of the host's
// beside these artifacts (whether the host must write it).
func HasChecksumsSubject(artifacts []job.Artifact) bool {
	return checksumsSubject(artifacts) != ""
}
