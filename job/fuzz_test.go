package job

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// The verifier feeds ParseManifest and ParseResult bytes the host wrote. They must never
// panic, must fail with ErrInvalid, and what they accept must survive a round trip through
// Marshal unchanged (so no two byte strings mean different things to the guest and to the
// verifier after re-encoding).

func FuzzParseManifest(f *testing.F) {
	good := &Manifest{Type: ManifestType, InvocationID: "local:1", TEE: "sim",
		Source: Source{ArchiveSHA256: string(bytes.Repeat([]byte("a"), 64)), ArchiveSize: 10},
		Toolchain: Toolchain{ImageSHA256: string(bytes.Repeat([]byte("d"), 64)), VerityRootHash: string(bytes.Repeat([]byte("e"), 64)),
			VeritySalt: "00ff", DataBlocks: 2, HashOffset: 8192, ImageSize: 12288},
		Command: []string{"make"}, Env: map[string]string{"A": "b"}, Artifacts: []string{"out/*"}, Workdir: ".",
		TimeoutSeconds: 60, MaxOutputBytes: 1 << 20}
	b, err := Marshal(good)
	if err != nil {
		f.Fatal(err)
	}
	if _, err := ParseManifest(b); err != nil {
		f.Fatalf("the seed manifest is invalid: %v", err)
	}
	f.Add(b)
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"_type":"x","_type":"y"}`))
	f.Add(append(bytes.Clone(b), []byte(` {}`)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v is not ErrInvalid", err)
			}
			return
		}
		again, err := Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := ParseManifest(again)
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("accepted manifest does not round-trip: %v\n%+v\n%+v", err, m, m2)
		}
	})
}

func FuzzParseResult(f *testing.F) {
	hex := string(bytes.Repeat([]byte("b"), 64))
	good := &Result{Type: ResultType, ManifestSHA256: hex, SourceTree: string(bytes.Repeat([]byte("c"), 40)),
		Artifacts: []Artifact{{Path: "out/a", SHA256: hex, Size: 3}}, Log: Digest{SHA256: hex}}
	b, err := Marshal(good)
	if err != nil {
		f.Fatal(err)
	}
	if _, err := ParseResult(b); err != nil {
		f.Fatalf("the seed result is invalid: %v", err)
	}
	f.Add(b)
	f.Add([]byte(`{"artifacts":[{"path":"../x"}]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseResult(b)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v is not ErrInvalid", err)
			}
			return
		}
		again, err := Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		r2, err := ParseResult(again)
		if err != nil || !reflect.DeepEqual(r, r2) {
			t.Fatalf("accepted result does not round-trip: %v\n%+v\n%+v", err, r, r2)
		}
	})
}
