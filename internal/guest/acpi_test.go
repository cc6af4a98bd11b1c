package guest

import (
	"os"
	"path/filepath"
	"testing"
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
