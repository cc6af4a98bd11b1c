package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
)

// optionName is how the verifier's errors name what a caller sets: Options.X, Identity.X,
// Reference.X, Pins.X.
var optionName = regexp.MustCompile(`\b(VerifyOptions|Options|Identity|Reference|Pins)\.[A-Z]\w*`)

// Every option the verifier's messages name reaches the user as this command's flag: the
// library names its fields, the CLI rewrites them (flagWords).
func TestFlagWordsCoverVerifierMessages(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "verify", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	more, _ := filepath.Glob(filepath.Join("..", "..", "provenance", "verify.go"))
	seen := 0
	for _, f := range append(files, more...) {
		if filepath.Ext(f) != ".go" || len(f) > 8 && f[len(f)-8:] == "_test.go" {
			continue
		}
		file, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			s, err := strconv.Unquote(lit.Value)
			if err != nil || !optionName.MatchString(s) {
				return true
			}
			seen++
			if left := optionName.FindString(flagWords(s)); left != "" {
				t.Errorf("%s: %q reaches the user as %q (names %s, not a flag)", filepath.Base(f), s, flagWords(s), left)
			}
			return true
		})
	}
	if seen < 5 {
		t.Fatalf("only %d messages name an option: the scan is not reading the verifier", seen)
	}
}
