package archtest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// renameAllowed are the files that rename on purpose rather than to write a file
// atomically: moving an artifact, a checked download or a directory into place. Every
// temp-file-then-rename write goes through internal/atomicfile instead.
var renameAllowed = map[string]bool{
	"internal/atomicfile/atomicfile.go":   true,
	"internal/build/files.go":             true, // artifacts moved from the extracted output
	"internal/agent/client/client.go":     true, // a job's outputs moved to --out
	"internal/image/guestimage/kernel.go": true, // a checked kernel package moved into the cache
	"internal/image/toolchain/flatten.go": true, // a layer's checked file moved into the tree
	"reference/fetch.go":                  true, // a whole checked release directory
}

// renames lists the non-test files under root that call os.Rename.
func renames(t *testing.T, root string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata") {
			if err == nil {
				return filepath.SkipDir
			}
			return err
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), p, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if sel, ok := n.(*ast.SelectorExpr); ok && sel.Sel.Name == "Rename" {
				if id, ok := sel.X.(*ast.Ident); ok && id.Name == "os" {
					rel, _ := filepath.Rel(root, p)
					found = append(found, filepath.ToSlash(rel))
					return false
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

func TestAtomicWritesThroughAtomicfile(t *testing.T) {
	for _, f := range renames(t, filepath.Join("..", "..")) {
		if !renameAllowed[f] {
			t.Errorf("%s calls os.Rename: write files with internal/atomicfile (or list a deliberate move in renameAllowed)", f)
		}
	}
}

func TestRenameCheckSeesACall(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "x.go"), []byte("package x\n\nimport \"os\"\n\nvar _ = os.Rename\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := renames(t, dir); len(got) != 1 || got[0] != "x.go" {
		t.Fatalf("renames = %v", got)
	}
}
