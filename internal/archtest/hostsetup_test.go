package archtest

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// hostOnly are the calls that set a host up or run a build on it. Only package host makes
// them: every entry point (cloche run, cloche agent, cloche action build, the runner's
// launcher, the selftest) goes through host.New and (*host.Host).Run, so the host's setup
// is written once. Keys are "import path.Func".
var hostOnly = map[string]bool{
	module + "/internal/build.Run":             true,
	module + "/attest/kds.New":                 true,
	module + "/internal/host.SigningKey":       true,
	module + "/internal/host.DefaultToolchain": true,
}

// hostOnlyCalls lists, for the non-test Go files under dir, each call of a hostOnly
// function as "file: pkg.Func".
func hostOnlyCalls(dir string) ([]string, error) {
	var found []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return err
		}
		f, err := parser.ParseFile(token.NewFileSet(), p, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		names := map[string]string{} // local name -> import path
		for _, imp := range f.Imports {
			path := strings.Trim(imp.Path.Value, `"`)
			name := filepath.Base(path)
			if imp.Name != nil {
				name = imp.Name.Name
			}
			names[name] = path
		}
		ast.Inspect(f, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if id, ok := sel.X.(*ast.Ident); ok && hostOnly[names[id.Name]+"."+sel.Sel.Name] {
				found = append(found, fmt.Sprintf("%s: %s.%s", p, id.Name, sel.Sel.Name))
			}
			return true
		})
		return nil
	})
	sort.Strings(found)
	return found, err
}

func TestHostSetupOnlyInHost(t *testing.T) {
	root := filepath.Join("..", "..")
	for _, dir := range []string{"cmd", "internal/ghaction", "internal/agent", "verify", "reference"} {
		calls, err := hostOnlyCalls(filepath.Join(root, dir))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range calls {
			t.Errorf("%s: host set-up or build.Run outside package host (use host.New and (*host.Host).Run)", c)
		}
	}
}

// The check sees a call: a file that calls build.Run is reported.
func TestHostSetupCheckCatchesACall(t *testing.T) {
	dir := t.TempDir()
	src := "package x\n\nimport b \"" + module + "/internal/build\"\n\nvar _ = b.Run\n"
	if err := os.WriteFile(filepath.Join(dir, "x.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	calls, err := hostOnlyCalls(dir)
	if err != nil || len(calls) != 1 || !strings.HasSuffix(calls[0], "b.Run") {
		t.Fatalf("hostOnlyCalls = %v, %v; want the b.Run use", calls, err)
	}
}
