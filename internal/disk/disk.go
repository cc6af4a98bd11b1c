// Package disk defines the two raw disks that carry data across the confidential-VM
// boundary, and reads and writes them with strict bounds on both sides.
//
// Input disk (host writes, guest reads), all integers little-endian:
//
//	block 0:  "CLOCHE-INPUT-V1\x00" | u64 manifestLen | u64 archiveLen | zeros
//	offset 4096:                             manifest (manifestLen bytes)
//	offset 4096 + roundup(manifestLen, 4096): source archive (archiveLen bytes)
//	zeros up to a multiple of 4096
//
// Output disk (guest writes, host reads):
//
//	block 0:     "CLOCHE-OUTPT-V1\x00" | u64 payloadLen | SHA-256(payload) | zeros
//	offset 4096: payload, a POSIX tar stream of regular files named ResultName,
//	             EvidenceName, LogName, ErrorName or ArtifactsDir + a clean relative path
//
// The guest writes the output header last, after the payload: a disk whose header block
// is still zero (the host creates it zeroed) reads as ErrNoOutput, and a header whose
// checksum does not match its payload as ErrMalformed. Neither side trusts a length from
// the other before checking it against the disk's size and the caller's caps.
package disk

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/cloche-dev/cloche/job"
)

// BlockSize is the alignment of every region on both disks.
const BlockSize = 4096

// Magic values; the trailing NUL makes each exactly 16 bytes.
const (
	InputMagic  = "CLOCHE-INPUT-V1\x00"
	OutputMagic = "CLOCHE-OUTPT-V1\x00"
)

// Names inside the output payload.
const (
	ResultName   = "result.json"
	EvidenceName = "evidence.json"
	LogName      = "log.txt"
	ErrorName    = "error.txt"
	ArtifactsDir = "artifacts/"
)

// Limits of the output payload's structure.
const (
	// MaxDocumentSize caps result.json, evidence.json and error.txt each.
	MaxDocumentSize = 4 << 20
	// MaxOutputEntries caps the number of entries: the fixed files plus as many artifacts
	// as a result record may list.
	MaxOutputEntries = 4 + job.MaxArtifacts
	// maxArtifactPath and maxArtifactDepth bound an artifact's relative path.
	maxArtifactPath  = 4096
	maxArtifactDepth = 64
	maxComponentLen  = 255
)

// Sentinel errors.
var (
	// ErrNoOutput: the output disk has no header, i.e. the guest never finished writing.
	ErrNoOutput = errors.New("output disk holds no output")
	// ErrOutputTooLarge: the output does not fit the disk or exceeds a cap.
	ErrOutputTooLarge = errors.New("output too large")
	// ErrMalformed: a disk's header or content breaks the format.
	ErrMalformed = errors.New("malformed disk")
)

const (
	headerLenOffset = 16 // u64 length after the magic, on both disks
	inputArchiveLen = 24 // u64 archiveLen on the input disk
	outputSHA256    = 24 // 32-byte payload digest on the output disk
	inputHeaderEnd  = 32
	outputHeaderEnd = 56
)

// roundUp rounds n (0 <= n <= MaxInt64-BlockSize) up to a multiple of BlockSize.
func roundUp(n int64) int64 { return (n + BlockSize - 1) / BlockSize * BlockSize }

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// outputName checks a payload entry name. It returns the artifact's path relative to
// ArtifactsDir (empty for a fixed name), or an error saying what is wrong.
func outputName(name string) (artifact string, err error) {
	switch name {
	case ResultName, EvidenceName, LogName, ErrorName:
		return "", nil
	}
	rel, ok := strings.CutPrefix(name, ArtifactsDir)
	if !ok {
		return "", fmt.Errorf("entry %q: expected %s, %s, %s, %s or %s<relative path>",
			name, ResultName, EvidenceName, LogName, ErrorName, ArtifactsDir)
	}
	switch {
	case rel == "":
		return "", fmt.Errorf("entry %q: empty artifact path", name)
	case len(rel) > maxArtifactPath:
		return "", fmt.Errorf("entry %q...: artifact path is %d bytes, limit %d", name[:64], len(rel), maxArtifactPath)
	case strings.ContainsRune(rel, 0):
		return "", fmt.Errorf("entry %q: artifact path contains NUL", name)
	case strings.HasPrefix(rel, "/"):
		return "", fmt.Errorf("entry %q: absolute artifact path, expected a relative one", name)
	}
	comps := strings.Split(rel, "/")
	if len(comps) > maxArtifactDepth {
		return "", fmt.Errorf("entry %q: artifact path has %d components, limit %d", name, len(comps), maxArtifactDepth)
	}
	for _, c := range comps {
		if c == ".." {
			return "", fmt.Errorf("entry %q: artifact path contains \"..\"", name)
		}
		if len(c) > maxComponentLen {
			return "", fmt.Errorf("entry %q: artifact path component is %d bytes, limit %d", name, len(c), maxComponentLen)
		}
	}
	if path.Clean(rel) != rel || rel == "." {
		return "", fmt.Errorf("entry %q: artifact path is not clean (no \".\", empty components or trailing slash)", name)
	}
	return rel, nil
}
