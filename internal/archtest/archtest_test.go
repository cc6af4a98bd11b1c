package archtest

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/cloche-dev/cloche"

// guestForbidden are the vendor packages the guest init must not link: verification,
// validation, collateral and test code, which belong to the host and the verifier.
var guestForbidden = []string{
	"github.com/google/go-sev-guest/verify",
	"github.com/google/go-sev-guest/validate",
	"github.com/google/go-sev-guest/testing",
	"github.com/google/go-sev-guest/kds",
	"github.com/google/go-tdx-guest/verify",
	"github.com/google/go-tdx-guest/validate",
	"github.com/google/go-tdx-guest/pcs",
	"github.com/google/go-tdx-guest/testing",
}

// testDataPackages are the vendors' test packages: their init parses test keys and
// certificates, so a binary that links them pays for it on every start.
var testDataPackages = []string{
	"github.com/google/go-sev-guest/testing",
	"github.com/google/go-tdx-guest/testing",
}

// forbiddenIn returns the packages of deps that are one of forbidden or below it.
func forbiddenIn(deps, forbidden []string) []string {
	var bad []string
	for _, d := range deps {
		for _, f := range forbidden {
			if d == f || strings.HasPrefix(d, f+"/") {
				bad = append(bad, d)
			}
		}
	}
	return bad
}

// layer is one row of the table in docs/architecture.md.
type layer struct {
	name     string
	patterns []string
	allowed  map[string]bool // layer names, its own included
}

// table is the parsed layer table.
type table []layer

// layerOf is the row whose pattern matches pkg (module-relative) most specifically.
func (t table) layerOf(pkg string) (string, bool) {
	best, bestLen := "", -1
	for _, l := range t {
		for _, p := range l.patterns {
			if n, ok := matchLen(p, pkg); ok && n > bestLen {
				best, bestLen = l.name, n
			}
		}
	}
	return best, bestLen >= 0
}

// matchLen says whether pattern matches pkg and how specific it is.
func matchLen(pattern, pkg string) (int, bool) {
	if dir, ok := strings.CutSuffix(pattern, "/..."); ok {
		return len(dir), pkg == dir || strings.HasPrefix(pkg, dir+"/")
	}
	return len(pattern) + 1, pkg == pattern // exact beats a subtree of the same name
}

func (t table) row(name string) *layer {
	for i := range t {
		if t[i].name == name {
			return &t[i]
		}
	}
	return nil
}

// parseTable reads the rows after the "| layer | packages | may import |" header.
func parseTable(doc []byte) (table, error) {
	var t table
	in := false
	sc := bufio.NewScanner(bytes.NewReader(doc))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "| layer | packages | may import |"):
			in = true
			continue
		case !in:
			continue
		case !strings.HasPrefix(line, "|"):
			in = false
			continue
		case strings.HasPrefix(line, "|---"):
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		if len(cells) != 3 {
			return nil, fmt.Errorf("layer row %q has %d cells, expected 3", line, len(cells))
		}
		l := layer{name: strings.TrimSpace(cells[0]), allowed: map[string]bool{}}
		l.allowed[l.name] = true
		for _, p := range strings.Fields(cells[1]) {
			l.patterns = append(l.patterns, strings.Trim(p, "`"))
		}
		for _, a := range strings.Fields(cells[2]) {
			l.allowed[a] = true
		}
		t = append(t, l)
	}
	if len(t) == 0 {
		return nil, fmt.Errorf("no layer table (header %q) found", "| layer | packages | may import |")
	}
	return t, sc.Err()
}

// goList runs go list in the module root and returns its output lines.
func goList(t *testing.T, args ...string) []string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	cmd.Dir = filepath.Join("..", "..")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v\n%s", args, err, stderr.Bytes())
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

// imports maps each module package (module-relative) to the module packages its non-test
// files import.
func imports(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, line := range goList(t, "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "./...") {
		f := strings.Fields(line)
		pkg := rel(f[0])
		out[pkg] = nil
		for _, imp := range f[1:] {
			if r := rel(imp); r != imp {
				out[pkg] = append(out[pkg], r)
			}
		}
	}
	return out
}

func rel(pkg string) string {
	if pkg == module {
		return "."
	}
	return strings.TrimPrefix(pkg, module+"/")
}

func readTable(t *testing.T) table {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "architecture.md"))
	if err != nil {
		t.Fatal(err)
	}
	tab, err := parseTable(doc)
	if err != nil {
		t.Fatalf("docs/architecture.md: %v", err)
	}
	return tab
}

// violations lists every import the table does not allow, and every package in no row.
func violations(tab table, graph map[string][]string) []string {
	var bad []string
	for pkg, imps := range graph {
		from, ok := tab.layerOf(pkg)
		if !ok {
			bad = append(bad, fmt.Sprintf("%s is in no row of the layer table", pkg))
			continue
		}
		for _, imp := range imps {
			to, ok := tab.layerOf(imp)
			if ok && !tab.row(from).allowed[to] {
				bad = append(bad, fmt.Sprintf("%s (%s) imports %s (%s), which its row does not allow", pkg, from, imp, to))
			}
		}
	}
	return bad
}

// TestLayers checks every package's imports against the layer table.
func TestLayers(t *testing.T) {
	tab := readTable(t)
	for _, v := range violations(tab, imports(t)) {
		t.Error(v)
	}
}

// TestLayersCatchUpwardImports: the check fails on the imports it exists to forbid, with the
// table as written (a guest importing the verifier, a lower layer importing cmd or the host,
// the host importing the agent), and passes the ones the table allows.
func TestLayersCatchUpwardImports(t *testing.T) {
	tab := readTable(t)
	for name, graph := range map[string]map[string][]string{
		"guest imports the verifier": {"internal/guest": {"attest/verifier"}},
		"guest imports the sim SP":   {"internal/attest/client": {"internal/attest/simsp"}},
		"build imports cmd":          {"internal/build": {"cmd/cloche"}},
		"evidence imports vmm":       {"attest": {"internal/vmm"}},
		"build imports host":         {"internal/build": {"internal/host"}},
		"host imports agent":         {"internal/host": {"internal/agent"}},
		"unlisted package":           {"newpkg": nil},
	} {
		if len(violations(tab, graph)) == 0 {
			t.Errorf("%s: not caught", name)
		}
	}
	if v := violations(tab, map[string][]string{"internal/agent": {"internal/host"}, "cmd/cloche": {"internal/host"}, "internal/host": {"internal/build"}}); len(v) != 0 {
		t.Errorf("allowed imports refused: %v", v)
	}
}

// TestGuestLinksNoVerifier: the guest init's dependency set, the code in the measured
// initramfs, has no verification, validation or testing package.
func TestGuestLinksNoVerifier(t *testing.T) {
	deps := goList(t, "-deps", "./cmd/cloche-guest")
	tab := readTable(t)
	for _, d := range forbiddenIn(deps, guestForbidden) {
		t.Errorf("the guest init links %s", d)
	}
	for _, d := range deps {
		if r := rel(d); r != d {
			if l, _ := tab.layerOf(r); l != "base" && l != "formats" && l != "guest" {
				t.Errorf("the guest init links %s (layer %s)", r, l)
			}
		}
	}
}

// TestCLILinksNoTestData: the cloche binary (verify included) links no vendor test package;
// the simulated TEE builds its chain with its own code.
func TestCLILinksNoTestData(t *testing.T) {
	for _, d := range forbiddenIn(goList(t, "-deps", "./cmd/cloche"), testDataPackages) {
		t.Errorf("cmd/cloche links %s", d)
	}
}

func TestForbiddenInMatchesSubpackages(t *testing.T) {
	deps := []string{"fmt", "github.com/google/go-sev-guest/testing/data", "github.com/google/go-sev-guest/testingx", "github.com/google/go-tdx-guest/testing"}
	got := forbiddenIn(deps, testDataPackages)
	want := []string{"github.com/google/go-sev-guest/testing/data", "github.com/google/go-tdx-guest/testing"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("forbiddenIn = %v, expected %v", got, want)
	}
}
