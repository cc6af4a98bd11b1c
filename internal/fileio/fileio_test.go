package fileio

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSHA256(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	content := []byte("cloche\n")
	os.WriteFile(p, content, 0o644)
	sum, n, err := SHA256(p)
	want := sha256.Sum256(content)
	if err != nil || sum != hex.EncodeToString(want[:]) || n != int64(len(content)) {
		t.Fatalf("SHA256 = %s, %d, %v", sum, n, err)
	}
	if _, _, err := SHA256(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("a directory was hashed: %v", err)
	}
	if _, _, err := SHA256(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("a missing file was hashed")
	}
}

func TestReadCapped(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte("12345"), 0o644)
	if b, err := ReadCapped(p, 5); err != nil || string(b) != "12345" {
		t.Fatalf("ReadCapped at the limit = %q, %v", b, err)
	}
	if _, err := ReadCapped(p, 4); err == nil || !strings.Contains(err.Error(), "larger than the 4-byte limit") {
		t.Fatalf("ReadCapped over the limit = %v", err)
	}
}
