package verify

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/tuf"
	sigverify "github.com/sigstore/sigstore-go/pkg/verify"

	"github.com/cloche-dev/cloche/internal/fileio"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/provenance"
)

// GitHubActionsIssuer is the OIDC issuer of GitHub Actions workflow tokens: the default
// issuer a keyless signing certificate must name.
const GitHubActionsIssuer = provenance.GitHubActionsIssuer

// Sentinel errors of the identity checks.
var (
	ErrMismatchIdentity  = errors.New("signer identity does not match")
	ErrMismatchBuilderID = errors.New("builder id does not match")
)

// Identity is what a verifier expects of who built and signed, in slsa-verifier's terms.
// For a keyless bundle the signing certificate must say it (Fulcio wrote it from the
// workflow's OIDC token), and the hardware-bound documents must say the same. A key-signed
// bundle binds no repository or branch (the manifest's are the host's word), so an
// Identity fails with it; Options.ExpectedSourceCommit and ExpectedSourceTag check what
// the guest attested in either case.
type Identity struct {
	// SourceURI is the source repository, "github.com/OWNER/REPO" (a scheme is accepted).
	// Required for keyless bundles: a certificate from a public Fulcio proves nothing until
	// the repository is pinned.
	SourceURI string
	// SourceTag / SourceBranch, when set, is the ref the build ran for (exclusive).
	SourceTag    string
	SourceBranch string
	// SignerWorkflow, when set, is the workflow file that signed,
	// "[github.com/]OWNER/REPO/.github/workflows/FILE" (it may live in another repository,
	// for reusable workflows). Unset, any workflow of SourceURI's repository may sign.
	SignerWorkflow string
	// Issuer is the OIDC issuer the certificate must name (default GitHubActionsIssuer).
	Issuer string
}

// repoURL returns "https://HOST/OWNER/REPO" from a source URI in any accepted form.
func repoURL(sourceURI string) (string, error) {
	s := strings.TrimSuffix(strings.TrimSpace(sourceURI), "/")
	s = strings.TrimSuffix(s, ".git")
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("source URI %q: expected HOST/OWNER/REPO, e.g. github.com/acme/widget", sourceURI)
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	if len(parts) != 2 || parts[0] == "" || parts[1] == "" {
		return "", fmt.Errorf("source URI %q: expected HOST/OWNER/REPO, e.g. github.com/acme/widget", sourceURI)
	}
	return "https://" + u.Host + "/" + parts[0] + "/" + parts[1], nil
}

// expectedRef is the git ref named by SourceTag or SourceBranch ("" when neither is set).
func (id *Identity) expectedRef() string {
	switch {
	case id.SourceTag != "":
		return "refs/tags/" + strings.TrimPrefix(id.SourceTag, "refs/tags/")
	case id.SourceBranch != "":
		return "refs/heads/" + strings.TrimPrefix(id.SourceBranch, "refs/heads/")
	}
	return ""
}

func (id *Identity) validate() error {
	if id.SourceTag != "" && id.SourceBranch != "" {
		return errors.New("Identity.SourceTag and Identity.SourceBranch are exclusive")
	}
	if id.SourceURI == "" {
		return errors.New("Identity.SourceURI is empty: expected the source repository, github.com/OWNER/REPO")
	}
	if _, err := repoURL(id.SourceURI); err != nil {
		return err
	}
	if id.SignerWorkflow != "" {
		if _, err := id.workflowPrefix(); err != nil {
			return err
		}
		if _, err := id.workflowRef(); err != nil {
			return err
		}
	}
	return nil
}

// workflowPrefix is the certificate SAN's expected prefix for SignerWorkflow:
// "https://HOST/OWNER/REPO/.github/workflows/FILE@" (the SAN ends in "@<ref>").
func (id *Identity) workflowPrefix() (string, error) {
	w := strings.TrimSpace(id.SignerWorkflow)
	w = strings.TrimPrefix(strings.TrimPrefix(w, "https://"), "http://")
	w, _, _ = strings.Cut(w, "@") // the ref: workflowRef
	parts := strings.Split(w, "/")
	if len(parts) == 5 {
		// No host given: the source repository's host.
		repo, err := repoURL(id.SourceURI)
		if err != nil {
			return "", err
		}
		u, _ := url.Parse(repo)
		parts = append([]string{u.Host}, parts...)
	}
	if len(parts) != 6 || parts[3] != ".github" || parts[4] != "workflows" || parts[5] == "" {
		return "", fmt.Errorf("signer workflow %q: expected [HOST/]OWNER/REPO/.github/workflows/FILE", id.SignerWorkflow)
	}
	return "https://" + strings.Join(parts, "/") + "@", nil
}

// workflowRef is the ref of SignerWorkflow ("…/FILE@refs/tags/v1"), "" when none is given.
// Only full refs are accepted: the certificate SAN carries one, and a short "v1" could be a
// branch or a tag.
func (id *Identity) workflowRef() (string, error) {
	_, ref, ok := strings.Cut(strings.TrimSpace(id.SignerWorkflow), "@")
	if !ok {
		return "", nil
	}
	if !strings.HasPrefix(ref, "refs/heads/") && !strings.HasPrefix(ref, "refs/tags/") || strings.ContainsAny(ref, " @") || len(ref) <= len("refs/tags/") {
		return "", fmt.Errorf("signer workflow %q: the ref after @ must be a full ref, refs/heads/BRANCH or refs/tags/TAG", id.SignerWorkflow)
	}
	return ref, nil
}

// certificateIdentity is the sigstore-go policy for this identity: issuer exact, SAN
// anchored (sigstore-go's regexes are not), source repository and ref as Fulcio
// extensions.
func (id *Identity) certificateIdentity() (sigverify.CertificateIdentity, error) {
	repo, err := repoURL(id.SourceURI)
	if err != nil {
		return sigverify.CertificateIdentity{}, err
	}
	sanRE := "^" + regexp.QuoteMeta(repo+"/")
	if id.SignerWorkflow != "" {
		prefix, err := id.workflowPrefix()
		if err != nil {
			return sigverify.CertificateIdentity{}, err
		}
		ref, err := id.workflowRef()
		if err != nil {
			return sigverify.CertificateIdentity{}, err
		}
		sanRE = "^" + regexp.QuoteMeta(prefix)
		if ref != "" {
			sanRE += regexp.QuoteMeta(ref) + "$"
		}
	}
	san, err := sigverify.NewSANMatcher("", sanRE)
	if err != nil {
		return sigverify.CertificateIdentity{}, err
	}
	issuer := id.Issuer
	if issuer == "" {
		issuer = GitHubActionsIssuer
	}
	return sigverify.NewCertificateIdentity(san, sigverify.IssuerMatcher{Issuer: issuer},
		certificate.Extensions{SourceRepositoryURI: repo, SourceRepositoryRef: id.expectedRef()})
}

// checkKeyOptions checks the signature-related options: a key, or a trusted root with an
// identity (required then).
func (o *Options) checkSignatureOptions() error {
	if o.PublicKey == nil && o.TrustedMaterial == nil {
		return errors.New("no public key or trusted root given: expected Options.PublicKey, or Options.TrustedMaterial with an Options.Identity for keyless verification")
	}
	// With a key, a trusted root only checks a key-signed bundle's log entry.
	if o.TrustedMaterial != nil && o.Identity == nil && o.PublicKey == nil {
		return errors.New("keyless verification needs the expected signer: Options.Identity with SourceURI github.com/OWNER/REPO")
	}
	if o.Identity != nil {
		return o.Identity.validate()
	}
	return nil
}

// verifySignature checks the bundle's signature (and, keyless, its signer) and returns the
// statement and the signing certificate (nil for key bundles).
func verifySignature(bundleJSON []byte, o *Options) ([]byte, *certificate.Summary, error) {
	vo := provenance.VerifyOptions{PublicKey: o.PublicKey, TrustedMaterial: o.TrustedMaterial}
	if o.TrustedMaterial != nil && o.Identity != nil {
		ci, err := o.Identity.certificateIdentity()
		if err != nil {
			return nil, nil, fail(CheckOptions, err)
		}
		vo.Identities = []sigverify.CertificateIdentity{ci}
	}
	facts, err := inspectBundle(bundleJSON, o)
	if err != nil {
		return nil, nil, err
	}
	vb, err := provenance.VerifyBundleSigner(bundleJSON, vo)
	switch {
	case errors.Is(err, provenance.ErrTransparencyLog):
		return nil, nil, fail(CheckSignature, err)
	case errors.Is(err, provenance.ErrIdentity):
		return nil, nil, fail(CheckIdentity, fmt.Errorf("%w: %w", ErrMismatchIdentity, err))
	case errors.Is(err, provenance.ErrSignature) && facts.keySigned && o.PublicKey != nil && !facts.dsseSignedByKey:
		return nil, nil, wrongKeyError(o, facts, err)
	case errors.Is(err, provenance.ErrSignature) && facts.keySigned && facts.dsseSignedByKey:
		// The signature is the given key's: what sigstore-go refused is the payload.
		return nil, nil, fail(CheckStatement, fmt.Errorf("the signed payload is not a valid in-toto statement: %w", err))
	case errors.Is(err, provenance.ErrSignature):
		return nil, nil, fail(CheckSignature, err)
	case err != nil:
		return nil, nil, fail(CheckBundle, err)
	}
	return vb.Statement, vb.Certificate, nil
}

// errUnboundRepository: nothing in a key-signed bundle binds the repository or the branch.
// No git object names them; the manifest's values are the runner host's word.
var errUnboundRepository = fmt.Errorf("%w: a key-signed bundle does not bind the source repository or branch: the manifest's are the runner host's word (docs/design.md, \"What binds each statement field\"); verify keyless, where the signing certificate names them, or pin what the guest attests (Options.ExpectedSourceCommit, or ExpectedSourceTag of an annotated tag)", ErrMismatchSource)

// checkIdentity runs after the hardware bindings, when the manifest and result record are
// known to be the ones the guest ran and wrote. For a keyless bundle the manifest's
// repository and ref must be the expected ones and exactly the certificate's, the attested
// commit the certificate's commit, and the invocation the certificate's workflow run. The
// last ties the evidence to the very run that signed, so evidence from another run
// (another command, another commit) cannot be published under this run's identity. A
// key-signed bundle binds no repository: an expected one fails.
//
// builderID is the builder as the verifier established it (boundBuilderID): its version
// only when trusted reference values bound it.
func checkIdentity(o *Options, cert *certificate.Summary, m *job.Manifest, r *job.Result, builderID string) error {
	if o.ExpectedBuilderID != "" && !builderIDMatches(o.ExpectedBuilderID, builderID) {
		if strings.Contains(o.ExpectedBuilderID, "@") && !strings.Contains(builderID, "@") {
			return fail(CheckBuilderID, fmt.Errorf("%w: expected %s, but no trusted reference values bound the builder's version (the statement's version is the host's word); the verified builder is %s", ErrMismatchBuilderID, o.ExpectedBuilderID, builderID))
		}
		return fail(CheckBuilderID, fmt.Errorf("%w: verified builder is %s, expected %s", ErrMismatchBuilderID, builderID, o.ExpectedBuilderID))
	}
	if cert == nil {
		if o.Identity != nil {
			return fail(CheckSourceRepository, errUnboundRepository)
		}
		return nil
	}
	if o.Identity != nil {
		repo, err := repoURL(o.Identity.SourceURI)
		if err != nil {
			return fail(CheckOptions, err)
		}
		if m.Source.Repository != repo {
			return fail(CheckSourceRepository, fmt.Errorf("%w: the attested manifest names repository %q, expected %s", ErrMismatchSource, m.Source.Repository, repo))
		}
		if ref := o.Identity.expectedRef(); ref != "" && m.Source.Ref != ref {
			return fail(CheckSourceRef, fmt.Errorf("%w: the attested manifest names ref %q, expected %s", ErrMismatchSource, m.Source.Ref, ref))
		}
	}
	if r.SourceCommit == "" {
		return fail(CheckSourceCommit, fmt.Errorf("%w: the signing certificate names commit %s, but the guest attested no commit (the host sent no commit object)", ErrMismatchSource, cert.SourceRepositoryDigest))
	}
	for _, c := range []struct{ field, attested, cert string }{
		{"repository", m.Source.Repository, cert.SourceRepositoryURI},
		{"ref", m.Source.Ref, cert.SourceRepositoryRef},
		{"commit", r.SourceCommit, cert.SourceRepositoryDigest},
		{"invocation (workflow run)", m.InvocationID, cert.RunInvocationURI},
	} {
		if c.attested != c.cert {
			return fail(CheckIdentity, fmt.Errorf("%w: the attested documents name %s %q, the signing certificate %q", ErrMismatchIdentity, c.field, c.attested, c.cert))
		}
	}
	return nil
}

// builderIDMatches compares builder ids as slsa-verifier does: exactly, or, when the
// expected id carries no version ("…/builders/snp"), any version of that builder.
func builderIDMatches(expected, got string) bool {
	if expected == got {
		return true
	}
	if strings.Contains(expected, "@") {
		return false
	}
	name, _, ok := strings.Cut(got, "@")
	return ok && name == expected
}

// signerDesc says what the signature was checked against.
func signerDesc(o *Options, cert *certificate.Summary) string {
	if cert != nil {
		return "keyless: " + cert.SubjectAlternativeName
	}
	return "key " + keyID(o.PublicKey)
}

// signerSummary names the signing workflow for the PASSED line.
func signerSummary(cert *certificate.Summary) string {
	if cert == nil {
		return ""
	}
	return cert.SubjectAlternativeName
}

// LoadTrustedRoot reads a Sigstore trusted root (trusted_root.json, as `gh attestation
// trusted-root` or a private deployment provides) from path; with an empty path it fetches
// Sigstore's public-good root through its TUF repository, cached in cacheDir (default
// ~/.sigstore/root), which needs the network on first use.
func LoadTrustedRoot(path, cacheDir string) (root.TrustedMaterial, error) {
	if path != "" {
		b, err := fileio.ReadCapped(path, maxTrustedRootSize)
		if err != nil {
			return nil, fmt.Errorf("trusted root: %w", err)
		}
		tr, err := root.NewTrustedRootFromJSON(b)
		if err != nil {
			return nil, fmt.Errorf("trusted root %s: %w", path, err)
		}
		return tr, nil
	}
	opts := tuf.DefaultOptions()
	if cacheDir != "" {
		opts = opts.WithCachePath(cacheDir)
	}
	tr, err := root.FetchTrustedRootWithOptions(opts)
	if err != nil {
		return nil, fmt.Errorf("fetching Sigstore's public-good trusted root (offline: give a trusted root file instead): %w", err)
	}
	return tr, nil
}

// maxTrustedRootSize caps a trusted root file (the public-good one is about 10 KB).
const maxTrustedRootSize = 4 << 20
