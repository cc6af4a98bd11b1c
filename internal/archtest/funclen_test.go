package archtest

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// maxFuncLines is the longest a non-test function may be: longer ones are split into
// steps whose names say what they do.
const maxFuncLines = 100

// longFuncs lists the non-test functions under root longer than limit lines.
func longFuncs(t *testing.T, root string, limit int) []string {
	t.Helper()
	var found []string
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata"):
			return filepath.SkipDir
		case d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go"):
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		for _, decl := range f.Decls {
			fd, ok := decl.(*ast.FuncDecl)
			if !ok || fd.Body == nil {
				continue
			}
			if n := fset.Position(fd.End()).Line - fset.Position(fd.Pos()).Line + 1; n > limit {
				rel, _ := filepath.Rel(root, p)
				found = append(found, fmt.Sprintf("%s: %s is %d lines", filepath.ToSlash(rel), fd.Name.Name, n))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

func TestNoLongFunctions(t *testing.T) {
	for _, f := range longFuncs(t, filepath.Join("..", ".."), maxFuncLines) {
		t.Errorf("%s (at most %d: split it into named steps)", f, maxFuncLines)
	}
}

func TestLongFunctionCheckSeesOne(t *testing.T) {
	dir := t.TempDir()
	src := "package x\n\nfunc long() {\n" + strings.Repeat("\t_ = 1\n", maxFuncLines) + "}\n"
	if err := os.WriteFile(filepath.Join(dir, "x.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := longFuncs(t, dir, maxFuncLines); len(got) != 1 {
		t.Fatalf("longFuncs = %v, want the one long function", got)
	}
}
