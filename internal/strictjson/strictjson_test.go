package strictjson

import (
	"errors"
	"testing"
)

type inner struct {
	A string `json:"a"`
}

type doc struct {
	TEE   string            `json:"tee"`
	Inner *inner            `json:"inner,omitempty"`
	List  []inner           `json:"list,omitempty"`
	Map   map[string]string `json:"map,omitempty"`
	Raw   []byte            `json:"raw,omitempty"`
}

func TestDecode(t *testing.T) {
	var d doc
	if err := Decode([]byte(`{"tee":"snp","inner":{"a":"x"},"list":[{"a":"y"}],"map":{"K":"v","k":"w"},"raw":"AAE="}`), &d); err != nil {
		t.Fatal(err)
	}
	if d.TEE != "snp" || d.Inner.A != "x" || d.List[0].A != "y" || d.Map["K"] != "v" || len(d.Raw) != 2 {
		t.Fatalf("decoded %+v", d)
	}
}

func TestDecodeRejects(t *testing.T) {
	for name, in := range map[string]string{
		"duplicate key":              `{"tee":"snp","tee":"sim"}`,
		"duplicate nested key":       `{"inner":{"a":"x","a":"y"}}`,
		"duplicate key in list":      `{"list":[{"a":"x","a":"y"}]}`,
		"duplicate map key":          `{"map":{"k":"v","k":"w"}}`,
		"case variant":               `{"TEE":"sim"}`,
		"case variant nested":        `{"inner":{"A":"x"}}`,
		"case variant plus original": `{"tee":"snp","Tee":"sim"}`,
		"unknown key":                `{"tee":"snp","extra":1}`,
		"trailing data":              `{"tee":"snp"} {}`,
		"trailing garbage":           `{"tee":"snp"}x`,
		"not JSON":                   `{`,
	} {
		t.Run(name, func(t *testing.T) {
			var d doc
			err := Decode([]byte(in), &d)
			if !errors.Is(err, ErrStrict) {
				t.Fatalf("Decode(%s) = %v, want ErrStrict", in, err)
			}
			t.Log(err)
		})
	}
}
