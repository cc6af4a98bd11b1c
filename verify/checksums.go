package verify

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/cloche-dev/cloche/internal/fileio"
	"github.com/cloche-dev/cloche/job"
)

// Limits on a checksums file (e.g. goreleaser's checksums.txt, or sha256sum's output).
const (
	MaxChecksumsFileSize = 1 << 20
	MaxChecksumsEntries  = 10000
)

// checksumLine is one line of sha256sum's format: 64 hex digits, a space, then a space (text
// mode) or '*' (binary mode), then the file name.
var checksumLine = regexp.MustCompile(`^([0-9a-fA-F]{64}) [ *](.+)$`)

// ChecksumEntry is one file a checksums file lists: its name (a clean relative path, from
// the checksums file's directory) and SHA-256 in lowercase hex.
type ChecksumEntry struct{ Name, SHA256 string }

// ParseChecksums reads a checksums file strictly: every line an entry, names local paths
// given once.
func ParseChecksums(b []byte) ([]ChecksumEntry, error) {
	var entries []ChecksumEntry
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 4096), MaxChecksumsFileSize)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSuffix(sc.Text(), "\r")
		if line == "" {
			continue
		}
		m := checksumLine.FindStringSubmatch(line)
		if m == nil {
			return nil, fmt.Errorf("line %d: expected \"<64 hex digits>  NAME\" (sha256sum's format)", n)
		}
		name := m[2]
		if !filepath.IsLocal(name) || strings.ContainsAny(name, "\\\x00") || filepath.Clean(name) != name {
			return nil, fmt.Errorf("line %d: %q is not a clean relative path", n, name)
		}
		if seen[name] {
			return nil, fmt.Errorf("line %d: %s is listed twice", n, name)
		}
		seen[name] = true
		if len(entries) == MaxChecksumsEntries {
			return nil, fmt.Errorf("more than %d entries", MaxChecksumsEntries)
		}
		entries = append(entries, ChecksumEntry{name, strings.ToLower(m[1])})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("lists no files")
	}
	return entries, nil
}

// checkChecksums verifies every file each checksums file lists, found beside it: the
// checksums files themselves are subjects (checked with the artifacts), and every file they
// list must have the digest of a subject too, so a checksums file cannot vouch for a file
// the guest never attested (a build output that lists, say, its dependencies' digests). A
// listed file that is missing fails: the option means "everything this file lists".
func checkChecksums(ctx context.Context, files []string, subjects map[string]string) ([]job.Artifact, error) {
	attested := map[string]bool{}
	for _, sum := range subjects {
		attested[sum] = true
	}
	var verified []job.Artifact
	for _, f := range files {
		b, err := fileio.ReadCapped(f, MaxChecksumsFileSize)
		if err != nil {
			return nil, fail(CheckChecksums, err)
		}
		entries, err := ParseChecksums(b)
		if err != nil {
			return nil, fail(CheckChecksums, fmt.Errorf("%s: %w", f, err))
		}
		for _, e := range entries {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			p := filepath.Join(filepath.Dir(f), e.Name)
			sum, err := hashFile(p)
			if err != nil {
				return nil, fail(CheckChecksums, fmt.Errorf("%s lists %s: %w", f, e.Name, err))
			}
			if sum != e.SHA256 {
				return nil, fail(CheckChecksums, fmt.Errorf("%s lists %s with SHA-256 %s, the file has %s", f, e.Name, e.SHA256, sum))
			}
			if !attested[sum] {
				return nil, fail(CheckChecksums, fmt.Errorf("%s lists %s (SHA-256 %s), which is no subject of the provenance: the build did not attest it", f, e.Name, sum))
			}
			st, err := os.Stat(p)
			if err != nil {
				return nil, fail(CheckChecksums, err)
			}
			verified = append(verified, job.Artifact{Path: e.Name, SHA256: sum, Size: st.Size()})
		}
	}
	return verified, nil
}
