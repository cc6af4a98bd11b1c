package guest

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/attest"
)

func TestACPITablesDigest(t *testing.T) {
	if d, err := ACPITablesDigest(filepath.Join(t.TempDir(), "none")); d != "" || err != nil {
		t.Fatalf("no ACPI: %q, %v", d, err)
	}
	dir := t.TempDir()
	write := func(rel, content string) {
		p := filepath.Join(dir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	write("DSDT", "dsdt-aml")
	write("FACP", "facp")
	write("dynamic/SSDT1", "ssdt")
	a, err := ACPITablesDigest(dir)
	if err != nil || len(a) != 64 {
		t.Fatalf("%q, %v", a, err)
	}
	if b, _ := ACPITablesDigest(dir); b != a {
		t.Fatal("not stable")
	}
	// One byte of one table, or bytes moved between two tables, change the digest.
	write("DSDT", "dsdt-amL")
	if b, _ := ACPITablesDigest(dir); b == a {
		t.Fatal("a changed table gives the same digest")
	}
	write("DSDT", "dsdt-am")
	write("FACP", "lfacp")
	if b, _ := ACPITablesDigest(dir); b == a {
		t.Fatal("bytes moved between tables give the same digest")
	}
}

// The TDX event log is the CCEL table's log area under data/CCEL: read as is, its padding
// past attest.MaxEventLogSize cut, events past it refused, and a missing one an error (a
// TDX quote without it fails verification).
func TestCCEventLog(t *testing.T) {
	dir := t.TempDir()
	if _, err := CCEventLog(dir); err == nil || !strings.Contains(err.Error(), "data/CCEL") {
		t.Fatalf("no CCEL: %v", err)
	}
	os.MkdirAll(filepath.Join(dir, "data"), 0o755)
	write := func(b []byte) {
		if err := os.WriteFile(filepath.Join(dir, "data", "CCEL"), b, 0o444); err != nil {
			t.Fatal(err)
		}
	}
	area := append([]byte("events"), bytes.Repeat([]byte{0xff}, 64<<10)...)
	write(area)
	if b, err := CCEventLog(dir); err != nil || !bytes.Equal(b, area) {
		t.Fatalf("64 KiB log area: %d bytes, %v", len(b), err)
	}
	big := append([]byte("events"), bytes.Repeat([]byte{0xff}, 2<<20)...)
	os.Remove(filepath.Join(dir, "data", "CCEL"))
	write(big)
	if b, err := CCEventLog(dir); err != nil || !bytes.Equal(b, big[:attest.MaxEventLogSize]) {
		t.Fatalf("2 MiB log area of padding: %d bytes, %v", len(b), err)
	}
	big[attest.MaxEventLogSize+10] = 1
	os.Remove(filepath.Join(dir, "data", "CCEL"))
	write(big)
	if _, err := CCEventLog(dir); err == nil || !strings.Contains(err.Error(), "events go past") {
		t.Fatalf("events past the limit: %v", err)
	}
	os.Remove(filepath.Join(dir, "data", "CCEL"))
	write(nil)
	if _, err := CCEventLog(dir); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("empty CCEL: %v", err)
	}
}
