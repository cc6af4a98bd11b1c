// Package reference builds, signs, verifies and queries cloche's reference-values
// document: for one guest image release, the launch measurements each TEE will report per
// vCPU count (and the other launch parameters they depend on), the digests of the files
// they were computed from, and the version of the tool that computed them (docs/design.md,
// principle 6: one measurement per guest release).
//
// The document is the predicate of an in-toto statement whose subjects are the guest
// image's files (and the firmware), DSSE-signed in a Sigstore bundle like the provenance.
// A verifier trusts a measurement because it is listed in a document signed by the
// release key, not because the (untrusted) runner host says so.
package reference

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/strictjson"
	"github.com/cloche-dev/cloche/provenance"
)

// Type URIs.
const (
	// PredicateType names the reference-values predicate; a reader rejects any other.
	PredicateType = "https://cloche.dev/reference-values/v1"
	statementType = "https://in-toto.io/Statement/v1"
)

// BundleFileName is where `cloche reference create --guest-image DIR` writes the signed
// document by default, next to the image it describes; `cloche run` records its digest.
const BundleFileName = "reference-values.sigstore.json"

// Limits on what is read from outside.
const (
	MaxBundleSize = 4 << 20
	maxValues     = 4096
	maxTextField  = 4096
)

// Sentinel errors callers branch on.
var (
	// ErrDocument: the statement or its reference-values predicate is malformed.
	ErrDocument = errors.New("invalid reference-values document")
	// ErrNotListed: a measurement is not among the document's values for its TEE.
	ErrNotListed = errors.New("measurement is not in the reference values")
)

// File names one file the values were computed from.
type File struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// GuestImage identifies the guest image release the values are for.
type GuestImage struct {
	Kernel  File   `json:"kernel"`
	Initrd  File   `json:"initrd"`
	Cmdline string `json:"cmdline"`
	// KernelPackage and Recipe come from the image's guest-image.json: the kernel package
	// it was built from, and the digest of everything that decided its bytes.
	KernelPackage string `json:"kernelPackage"`
	Recipe        string `json:"recipe"`
}

// Value is the expected measurement of one launch configuration.
type Value struct {
	TEE   attest.TEE `json:"tee"`
	VCPUs int        `json:"vcpus"`
	// MemoryMiB is set where the value depends on it (sim: measured; tdx: RTMR1 places
	// the initrd by it).
	MemoryMiB int `json:"memoryMiB,omitempty"`
	// Firmware is the image loaded with -bios (snp, tdx).
	Firmware *File `json:"firmware,omitempty"`
	// VCPUType and GuestFeatures shape the SNP VMSAs.
	VCPUType      string `json:"vcpuType,omitempty"`
	GuestFeatures string `json:"guestFeatures,omitempty"`
	// MRTDOrder is single-pass or two-pass (tdx).
	MRTDOrder string `json:"mrtdOrder,omitempty"`
	// Measurement is MEASUREMENT (sim, snp) or MRTD (tdx), lowercase hex.
	Measurement string `json:"measurement"`
	// RTMR1 and RTMR2 are the TDX registers that depend on the kernel, initrd and cmdline.
	RTMR1 string `json:"rtmr1,omitempty"`
	RTMR2 string `json:"rtmr2,omitempty"`
	// Assumptions are the conditions the values hold under (tdx).
	Assumptions []string `json:"assumptions,omitempty"`
}

// Document is the reference-values predicate.
type Document struct {
	// ToolVersion is the cloche version that computed the values.
	ToolVersion string     `json:"toolVersion"`
	GuestImage  GuestImage `json:"guestImage"`
	Values      []Value    `json:"values"`
}

var (
	hex64   = regexp.MustCompile(`^[0-9a-f]{64}$`)
	hex96   = regexp.MustCompile(`^[0-9a-f]{96}$`)
	version = regexp.MustCompile(`^v?[0-9A-Za-z][0-9A-Za-z.+-]{0,63}$`)
	feature = regexp.MustCompile(`^0x[0-9a-f]{1,16}$`)
)

func docErrorf(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrDocument}, a...)...)
}

func checkFile(what string, f File) error {
	if f.Name == "" || len(f.Name) > 255 || strings.ContainsAny(f.Name, "/\x00") {
		return docErrorf("%s name %q must be a plain file name", what, f.Name)
	}
	if !hex64.MatchString(f.SHA256) {
		return docErrorf("%s sha256 %q must be 64 lowercase hex digits", what, f.SHA256)
	}
	if f.Size < 0 {
		return docErrorf("%s size %d is negative", what, f.Size)
	}
	return nil
}

// Validate checks every field of the document.
func (d *Document) Validate() error {
	if !version.MatchString(d.ToolVersion) {
		return docErrorf("toolVersion %q must look like 0.1.0", d.ToolVersion)
	}
	g := d.GuestImage
	if err := checkFile("guestImage.kernel", g.Kernel); err != nil {
		return err
	}
	if err := checkFile("guestImage.initrd", g.Initrd); err != nil {
		return err
	}
	if len(g.Cmdline) > maxTextField || len(g.KernelPackage) > maxTextField {
		return docErrorf("guestImage cmdline or kernelPackage is longer than %d bytes", maxTextField)
	}
	if g.Recipe != "" && !hex64.MatchString(g.Recipe) {
		return docErrorf("guestImage.recipe %q must be 64 lowercase hex digits", g.Recipe)
	}
	if len(d.Values) == 0 || len(d.Values) > maxValues {
		return docErrorf("the document lists %d values, expected 1..%d", len(d.Values), maxValues)
	}
	seen := map[string]bool{}
	for i, v := range d.Values {
		if err := v.validate(); err != nil {
			return fmt.Errorf("values[%d]: %w", i, err)
		}
		k := v.key()
		if seen[k] {
			return docErrorf("values[%d] repeats the configuration %s", i, k)
		}
		seen[k] = true
	}
	return nil
}

func (v *Value) validate() error {
	if v.VCPUs < 1 || v.VCPUs > 4096 {
		return docErrorf("vcpus %d, expected 1..4096", v.VCPUs)
	}
	if v.MemoryMiB < 0 || v.MemoryMiB > 1<<24 {
		return docErrorf("memoryMiB %d, expected 0..%d", v.MemoryMiB, 1<<24)
	}
	if !hex96.MatchString(v.Measurement) {
		return docErrorf("measurement %q must be 96 lowercase hex digits", v.Measurement)
	}
	if len(v.Assumptions) > 16 {
		return docErrorf("%d assumptions, limit 16", len(v.Assumptions))
	}
	for _, a := range v.Assumptions {
		if len(a) > maxTextField {
			return docErrorf("an assumption is longer than %d bytes", maxTextField)
		}
	}
	if v.Firmware != nil {
		if err := checkFile("firmware", *v.Firmware); err != nil {
			return err
		}
	}
	snpOnly := v.VCPUType != "" || v.GuestFeatures != ""
	tdxOnly := v.MRTDOrder != "" || v.RTMR1 != "" || v.RTMR2 != "" || len(v.Assumptions) > 0
	switch v.TEE {
	case attest.TEESim:
		if v.MemoryMiB == 0 || v.Firmware != nil || snpOnly || tdxOnly {
			return docErrorf("a sim value has vcpus, memoryMiB and measurement only")
		}
	case attest.TEESNP:
		if v.Firmware == nil || v.VCPUType == "" || !feature.MatchString(v.GuestFeatures) || v.MemoryMiB != 0 || tdxOnly {
			return docErrorf("an snp value needs firmware, vcpuType and guestFeatures (0x...), and no memoryMiB or TDX fields")
		}
	case attest.TEETDX:
		if v.Firmware == nil || snpOnly || (v.MRTDOrder != "single-pass" && v.MRTDOrder != "two-pass") {
			return docErrorf("a tdx value needs firmware and mrtdOrder (single-pass or two-pass), and no SNP fields")
		}
		if (v.RTMR1 == "") != (v.RTMR2 == "") {
			return docErrorf("a tdx value has both rtmr1 and rtmr2 or neither")
		}
		for _, r := range []string{v.RTMR1, v.RTMR2} {
			if r != "" && !hex96.MatchString(r) {
				return docErrorf("rtmr %q must be 96 lowercase hex digits", r)
			}
		}
	default:
		return docErrorf("tee %q, expected sim, snp or tdx", v.TEE)
	}
	return nil
}

// key identifies a launch configuration; a document lists each at most once.
func (v *Value) key() string {
	fw := ""
	if v.Firmware != nil {
		fw = v.Firmware.SHA256
	}
	return fmt.Sprintf("tee=%s vcpus=%d memoryMiB=%d firmware=%s vcpuType=%s guestFeatures=%s mrtdOrder=%s",
		v.TEE, v.VCPUs, v.MemoryMiB, fw, v.VCPUType, v.GuestFeatures, v.MRTDOrder)
}

// Lookup returns the values for a TEE whose measurement equals m (48 bytes). Several
// configurations can share a measurement (an SNP launch does not measure its memory size).
func (d *Document) Lookup(tee attest.TEE, m []byte) []Value {
	want := hex.EncodeToString(m)
	var out []Value
	for _, v := range d.Values {
		if v.TEE == tee && v.Measurement == want {
			out = append(out, v)
		}
	}
	return out
}

// Measurements lists the distinct measurements the document accepts for a TEE.
func (d *Document) Measurements(tee attest.TEE) [][]byte {
	seen := map[string]bool{}
	var out [][]byte
	for _, v := range d.Values {
		if v.TEE != tee || seen[v.Measurement] {
			continue
		}
		seen[v.Measurement] = true
		b, _ := hex.DecodeString(v.Measurement)
		out = append(out, b)
	}
	return out
}

// subjects are the files the values were computed from, by name, sorted and deduplicated.
func (d *Document) subjects() []File {
	byDigest := map[string]File{}
	add := func(f File) { byDigest[f.Name+"\x00"+f.SHA256] = f }
	add(d.GuestImage.Kernel)
	add(d.GuestImage.Initrd)
	for _, v := range d.Values {
		if v.Firmware != nil {
			add(*v.Firmware)
		}
	}
	out := make([]File, 0, len(byDigest))
	for _, f := range byDigest {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].SHA256 < out[j].SHA256
	})
	return out
}

type subject struct {
	Name   string            `json:"name"`
	Digest map[string]string `json:"digest"`
}

type statement struct {
	Type          string    `json:"_type"`
	Subject       []subject `json:"subject"`
	PredicateType string    `json:"predicateType"`
	Predicate     *Document `json:"predicate"`
}

// Statement returns the in-toto v1 statement carrying the document (compact JSON,
// deterministic: the same document gives the same bytes).
func (d *Document) Statement() ([]byte, error) {
	if err := d.Validate(); err != nil {
		return nil, err
	}
	st := statement{Type: statementType, PredicateType: PredicateType, Predicate: d}
	for _, f := range d.subjects() {
		st.Subject = append(st.Subject, subject{Name: f.Name, Digest: map[string]string{"sha256": f.SHA256}})
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(st); err != nil {
		return nil, fmt.Errorf("encoding reference-values statement: %w", err)
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

// ParseStatement decodes a reference-values statement strictly: _type, predicateType,
// no unknown fields, a valid document, and subjects that are exactly the document's files.
func ParseStatement(stmt []byte) (*Document, error) {
	// The types first, so that another kind of statement is named as such.
	var head struct {
		Type          string `json:"_type"`
		PredicateType string `json:"predicateType"`
	}
	if err := json.Unmarshal(stmt, &head); err != nil {
		return nil, docErrorf("decoding statement: %w", err)
	}
	if head.Type != statementType {
		return nil, docErrorf("_type is %q, expected %q", head.Type, statementType)
	}
	if head.PredicateType != PredicateType {
		return nil, docErrorf("predicateType is %q, expected %q", head.PredicateType, PredicateType)
	}
	// Strictly: unknown, duplicate and case-variant keys refused, one document only.
	var st statement
	if err := strictjson.Decode(stmt, &st); err != nil {
		return nil, docErrorf("decoding statement: %w", err)
	}
	if st.Predicate == nil {
		return nil, docErrorf("predicate is missing")
	}
	if err := st.Predicate.Validate(); err != nil {
		return nil, err
	}
	want := st.Predicate.subjects()
	if len(st.Subject) != len(want) {
		return nil, docErrorf("statement has %d subjects, the document names %d files", len(st.Subject), len(want))
	}
	for i, s := range st.Subject {
		if s.Name != want[i].Name || len(s.Digest) != 1 || s.Digest["sha256"] != want[i].SHA256 {
			return nil, docErrorf("subject %d (%s %v) is not the document's file %s %s", i, s.Name, s.Digest, want[i].Name, want[i].SHA256)
		}
	}
	return st.Predicate, nil
}

// Verified is a document whose signature checked out.
type Verified struct {
	*Document
	// StatementSHA256 is the SHA-256 of the signed statement bytes, the document's
	// identity as recorded in provenance.
	StatementSHA256 string
}

// VerifyBundle checks a Sigstore bundle's signature with the trusted key and returns the
// document it carries. Signature failures wrap provenance.ErrSignature; a malformed bundle
// wraps provenance.ErrBundle; a malformed document wraps ErrDocument.
func VerifyBundle(bundleJSON []byte, key crypto.PublicKey) (*Verified, error) {
	if len(bundleJSON) > MaxBundleSize {
		return nil, fmt.Errorf("%w: bundle is %d bytes, limit %d", provenance.ErrBundle, len(bundleJSON), MaxBundleSize)
	}
	stmt, err := provenance.VerifyBundle(bundleJSON, provenance.VerifyOptions{PublicKey: key})
	if err != nil {
		return nil, err
	}
	d, err := ParseStatement(stmt)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(stmt)
	return &Verified{Document: d, StatementSHA256: hex.EncodeToString(sum[:])}, nil
}

// UnverifiedStatement returns the statement a bundle carries without checking its
// signature, and its SHA-256. The host uses it to record which reference values a guest
// image shipped with; only a verifier with the release key may trust the content.
func UnverifiedStatement(bundleJSON []byte) (*Document, string, error) {
	var b struct {
		DSSEEnvelope struct {
			Payload     []byte `json:"payload"`
			PayloadType string `json:"payloadType"`
		} `json:"dsseEnvelope"`
	}
	if len(bundleJSON) > MaxBundleSize {
		return nil, "", fmt.Errorf("%w: bundle is %d bytes, limit %d", provenance.ErrBundle, len(bundleJSON), MaxBundleSize)
	}
	if err := json.Unmarshal(bundleJSON, &b); err != nil || len(b.DSSEEnvelope.Payload) == 0 {
		return nil, "", fmt.Errorf("%w: no DSSE payload in the bundle", provenance.ErrBundle)
	}
	if b.DSSEEnvelope.PayloadType != provenance.PayloadType {
		return nil, "", fmt.Errorf("%w: DSSE payloadType is %q, expected %q", provenance.ErrBundle, b.DSSEEnvelope.PayloadType, provenance.PayloadType)
	}
	d, err := ParseStatement(b.DSSEEnvelope.Payload)
	if err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(b.DSSEEnvelope.Payload)
	return d, hex.EncodeToString(sum[:]), nil
}

// ReadBundle reads a bundle file with the size cap.
func ReadBundle(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxBundleSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(b) > MaxBundleSize {
		return nil, fmt.Errorf("%s is larger than the %d-byte limit", path, MaxBundleSize)
	}
	return b, nil
}
