// Package strictjson decodes JSON that comes from outside (the runner host, a release, a
// user's file) strictly: exactly one document, no key twice in an object, no key that the
// target type does not declare, and no key in another case than the declared one.
//
// encoding/json alone accepts {"tee":"snp","tee":"sim"} (last wins) and {"TEE":"sim"} (keys
// match case-insensitively), so two readers of one document can disagree about what it
// says; a verifier must see exactly what every other reader sees.
package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
)

// ErrStrict wraps every error Decode returns.
var ErrStrict = errors.New("invalid JSON document")

// Decode decodes b into v (a pointer) strictly; see the package comment.
func Decode(b []byte, v any) error {
	var tree any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := checkDuplicates(dec, "$"); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: trailing data after the JSON document", ErrStrict)
	}
	if err := json.Unmarshal(b, &tree); err != nil {
		return fmt.Errorf("%w: %w", ErrStrict, err)
	}
	rt := reflect.TypeOf(v)
	if rt == nil || rt.Kind() != reflect.Pointer {
		return fmt.Errorf("%w: decoding needs a pointer, got %T", ErrStrict, v)
	}
	if err := checkKeys(tree, rt.Elem(), "$"); err != nil {
		return err
	}
	strict := json.NewDecoder(bytes.NewReader(b))
	strict.DisallowUnknownFields()
	if err := strict.Decode(v); err != nil {
		return fmt.Errorf("%w: %w", ErrStrict, err)
	}
	return nil
}

// checkDuplicates reads one JSON value from dec and rejects an object key given twice.
func checkDuplicates(dec *json.Decoder, path string) error {
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("%w: at %s: %w", ErrStrict, path, err)
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	switch d {
	case '{':
		seen := map[string]bool{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return fmt.Errorf("%w: at %s: %w", ErrStrict, path, err)
			}
			k, _ := kt.(string)
			if seen[k] {
				return fmt.Errorf("%w: key %q appears twice in %s", ErrStrict, k, path)
			}
			seen[k] = true
			if err := checkDuplicates(dec, path+"."+k); err != nil {
				return err
			}
		}
	case '[':
		for i := 0; dec.More(); i++ {
			if err := checkDuplicates(dec, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	}
	if _, err := dec.Token(); err != nil {
		return fmt.Errorf("%w: at %s: %w", ErrStrict, path, err)
	}
	return nil
}

// checkKeys walks the decoded tree along the target type and rejects object keys that are
// not declared exactly (case-sensitively) by the struct they decode into.
func checkKeys(node any, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Implements(unmarshalerType) || reflect.PointerTo(t).Implements(unmarshalerType) {
		return nil // the type decodes itself
	}
	switch n := node.(type) {
	case map[string]any:
		switch t.Kind() {
		case reflect.Struct:
			fields := jsonFields(t)
			for k, child := range n {
				ft, ok := fields[k]
				if !ok {
					return fmt.Errorf("%w: unknown key %q in %s (keys are case-sensitive)", ErrStrict, k, path)
				}
				if err := checkKeys(child, ft, path+"."+k); err != nil {
					return err
				}
			}
		case reflect.Map:
			for k, child := range n {
				if err := checkKeys(child, t.Elem(), path+"."+k); err != nil {
					return err
				}
			}
		}
	case []any:
		if t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
			for i, child := range n {
				if err := checkKeys(child, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

var unmarshalerType = reflect.TypeOf((*json.Unmarshaler)(nil)).Elem()

// jsonFields maps each JSON key a struct declares to its field type, following
// encoding/json's rules for tags and embedded structs.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			et := f.Type
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct {
				for k, v := range jsonFields(et) {
					out[k] = v
				}
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}
