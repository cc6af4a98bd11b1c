package npmlock

import (
	"errors"
	"strings"
	"testing"
)

const msSHA512 = "sha512-6FlzubTLZG3J2a/NVCAleEhjzq5oxgHyaCU9yYXvcLsvoVaHJq/s5xXI6/XXP6tz7R9xAOtHnSO/tXtF3WRTlA=="

func TestParseVersionsAndEntries(t *testing.T) {
	for _, v := range []string{"1", "4", "0"} {
		if _, err := Parse([]byte(`{"lockfileVersion": ` + v + `, "packages": {}}`)); !errors.Is(err, ErrLockfile) {
			t.Errorf("lockfileVersion %s: %v", v, err)
		}
	}
	if _, err := Parse([]byte(`{"lockfileVersion": 3}`)); err == nil {
		t.Error("no packages map accepted")
	}
	lf, err := Parse([]byte(`{"lockfileVersion": 2, "packages": {
		"": {"name": "root", "version": "1.0.0"},
		"node_modules/@s/a": {"version": "1.0.0", "integrity": "` + msSHA512 + `", "resolved": "https://example.invalid/a.tgz"},
		"node_modules/@s/a/node_modules/b": {"version": "2.0.0", "integrity": "` + msSHA512 + `", "resolved": "https://example.invalid/b.tgz"},
		"node_modules/alias": {"name": "real", "version": "3.0.0", "integrity": "` + msSHA512 + `", "resolved": "https://example.invalid/r.tgz"},
		"node_modules/linked": {"resolved": "packages/x", "link": true},
		"node_modules/@s/a/node_modules/bundled": {"version": "1.0.0", "inBundle": true},
		"packages/x": {"version": "0.0.1"}
	}}`))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range lf.Fetched() {
		got = append(got, e.String())
	}
	want := "node_modules/@s/a (@s/a@1.0.0)|node_modules/@s/a/node_modules/b (b@2.0.0)|node_modules/alias (real@3.0.0)"
	if strings.Join(got, "|") != want {
		t.Errorf("Fetched = %q, want %q", strings.Join(got, "|"), want)
	}
}

func TestStrongestAndContentPath(t *testing.T) {
	sha1 := "sha1-" + strings.Repeat("A", 27) + "="
	h, err := Strongest(sha1 + " " + msSHA512 + " md5-xyz")
	if err != nil || h.Algorithm != "sha512" || h.SRI() != msSHA512 {
		t.Fatalf("Strongest = %+v, %v, want the sha512", h, err)
	}
	if got, want := h.ContentPath(), "_cacache/content-v2/sha512/e8/59/73b9b4cb646dc9d9afcd542025784863ceae68c601f268253dc985ef70bb2fa1568726afece715c8ebf5d73fab73ed1f7100eb479d23bfb57b45dd645394"; got != want {
		t.Errorf("ContentPath = %s, want %s (npm's own layout)", got, want)
	}
	if h, err := Strongest(sha1); err != nil || h.Algorithm != "sha1" {
		t.Errorf("sha1 alone: %+v, %v", h, err)
	}
	if h, err := Strongest(msSHA512 + "?opt"); err != nil || h.SRI() != msSHA512 {
		t.Errorf("with options: %+v, %v", h, err)
	}
	for _, bad := range []string{"", "md5-abc", "sha512-AAAA", "sha512-!!!", sha1 + " sha512-AAAA"} {
		if _, err := Strongest(bad); err == nil {
			t.Errorf("Strongest(%q) accepted", bad)
		}
	}
}
