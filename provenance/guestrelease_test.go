package provenance

import (
	"errors"
	"strings"
	"testing"
)

// The guest-image dependency may name the guest release (recipe) and the reference values
// shipped with it; ParseStatement reads them back and stays strict about everything else.
func TestGuestReleaseAnnotations(t *testing.T) {
	f := newFixture(t)
	f.in.Guest.Recipe = strings.Repeat("a1", 32)
	f.in.Guest.ReferenceValues = strings.Repeat("b2", 32)
	stmt := f.statement(t)
	p, err := ParseStatement(stmt)
	if err != nil {
		t.Fatal(err)
	}
	if p.Guest.Recipe != f.in.Guest.Recipe || p.Guest.ReferenceValues != f.in.Guest.ReferenceValues {
		t.Fatalf("parsed guest %+v", p.Guest)
	}
	if err := p.CheckAgainstManifest(f.m, f.r); err != nil {
		t.Fatalf("CheckAgainstManifest: %v", err)
	}

	guestAnnotations := func(st map[string]any) map[string]any {
		for _, d := range arr(buildDef(st), "resolvedDependencies") {
			if d.(map[string]any)["name"] == GuestImageDependency {
				return obj(d, "annotations")
			}
		}
		t.Fatal("no guest-image dependency")
		return nil
	}
	for name, edit := range map[string]func(map[string]any){
		"recipe not hex":         func(st map[string]any) { guestAnnotations(st)["recipe"] = "release-1" },
		"reference not a string": func(st map[string]any) { guestAnnotations(st)["referenceValuesSha256"] = 7 },
		"unknown annotation":     func(st map[string]any) { guestAnnotations(st)["releaseNotes"] = "x" },
		"required key missing":   func(st map[string]any) { delete(guestAnnotations(st), "cmdline") },
	} {
		if _, err := ParseStatement(mutate(t, stmt, edit)); !errors.Is(err, ErrStatement) {
			t.Errorf("%s: error = %v, want ErrStatement", name, err)
		}
	}

	// Without the optional fields the statement has neither annotation.
	f.in.Guest.Recipe, f.in.Guest.ReferenceValues = "", ""
	p, err = ParseStatement(f.statement(t))
	if err != nil || p.Guest.Recipe != "" || p.Guest.ReferenceValues != "" {
		t.Fatalf("without optional annotations: %+v, %v", p.Guest, err)
	}
	f.in.Guest.Recipe = "not hex"
	if _, err := NewStatement(f.in); err == nil {
		t.Fatal("NewStatement accepted a malformed recipe")
	}
}
