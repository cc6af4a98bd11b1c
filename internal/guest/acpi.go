package guest

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/cloche-dev/cloche/attest"
)

// ACPITablesDir is where the guest kernel exposes the ACPI tables it was given.
const ACPITablesDir = "/sys/firmware/acpi/tables"

// maxACPITables bounds what ACPITablesDigest reads: a VMM's tables are a few hundred KiB.
const (
	maxACPITableBytes = 16 << 20
	maxACPITables     = 1024
)

// ACPITablesDigest is the SHA-256 over every ACPI table under dir (the static tables and the
// dynamic/ ones the kernel loaded), in sorted path order, each as its path, length and
// bytes, so that no two sets of tables share a digest. It returns "" when dir does not
// exist (no ACPI). The host's VMM writes these tables and the guest kernel runs their AML;
// on SEV-SNP nothing measures them, so the result record carries this digest for a verifier
// to pin.
func ACPITablesDigest(dir string) (string, error) {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			paths = append(paths, p)
		}
		if len(paths) > maxACPITables {
			return fmt.Errorf("more than %d ACPI tables", maxACPITables)
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("listing the ACPI tables: %w", err)
	}
	sort.Strings(paths)
	h := sha256.New()
	var total int64
	for _, p := range paths {
		rel, _ := filepath.Rel(dir, p)
		b, err := os.ReadFile(p)
		if err != nil {
			return "", fmt.Errorf("reading ACPI table %s: %w", rel, err)
		}
		if total += int64(len(b)); total > maxACPITableBytes {
			return "", fmt.Errorf("ACPI tables exceed %d bytes", maxACPITableBytes)
		}
		writeField(h, []byte(filepath.ToSlash(rel)))
		writeField(h, b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// writeField writes b length-prefixed.
func writeField(w io.Writer, b []byte) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(b)))
	w.Write(n[:])
	w.Write(b)
}

// CCEventLog reads the TDX event log TDVF wrote: the log area of the ACPI CCEL table,
// which the kernel exposes as data/CCEL under tablesDir. The area is a fixed size with the
// events first and padding after; a log area larger than attest.MaxEventLogSize is cut
// there when what is cut is padding (0xff or 0x00 bytes), and refused otherwise.
func CCEventLog(tablesDir string) ([]byte, error) {
	p := filepath.Join(tablesDir, "data", "CCEL")
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("the TDX event log (the CCEL table's log area, %s; a kernel with CONFIG_ACPI exposes it): %w", p, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxACPITableBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading the TDX event log %s: %w", p, err)
	}
	if len(b) > maxACPITableBytes {
		return nil, fmt.Errorf("the TDX event log %s exceeds %d bytes", p, maxACPITableBytes)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("the TDX event log %s is empty", p)
	}
	if len(b) > attest.MaxEventLogSize {
		for _, c := range b[attest.MaxEventLogSize:] {
			if c != 0xff && c != 0 {
				return nil, fmt.Errorf("the TDX event log %s is %d bytes, and its events go past the %d bytes evidence carries", p, len(b), attest.MaxEventLogSize)
			}
		}
		b = b[:attest.MaxEventLogSize]
	}
	return b, nil
}
