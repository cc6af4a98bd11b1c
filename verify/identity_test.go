package verify

import (
	"errors"
	"strings"
	"testing"

	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"

	"github.com/cloche-dev/cloche/job"
)

func TestRepoURL(t *testing.T) {
	for in, want := range map[string]string{
		"github.com/acme/widget":          "https://github.com/acme/widget",
		"https://github.com/acme/widget/": "https://github.com/acme/widget",
		"github.com/acme/widget.git":      "https://github.com/acme/widget",
		"ghe.example.com/acme/widget":     "https://ghe.example.com/acme/widget",
	} {
		if got, err := repoURL(in); err != nil || got != want {
			t.Errorf("repoURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "acme/widget", "github.com/acme", "github.com/acme/widget/extra", "http://github.com/acme/widget", "github.com/a/b?x=1"} {
		if _, err := repoURL(bad); err == nil {
			t.Errorf("repoURL(%q) accepted", bad)
		}
	}
}

func TestWorkflowPrefix(t *testing.T) {
	id := &Identity{SourceURI: "github.com/acme/widget"}
	for in, want := range map[string]string{
		"acme/widget/.github/workflows/release.yml":                       "https://github.com/acme/widget/.github/workflows/release.yml@",
		"github.com/acme/shared/.github/workflows/build.yml@refs/tags/v1": "https://github.com/acme/shared/.github/workflows/build.yml@",
	} {
		id.SignerWorkflow = in
		if got, err := id.workflowPrefix(); err != nil || got != want {
			t.Errorf("workflowPrefix(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"release.yml", "acme/widget/release.yml", "acme/widget/.github/actions/x.yml"} {
		id.SignerWorkflow = bad
		if _, err := id.workflowPrefix(); err == nil {
			t.Errorf("workflowPrefix(%q) accepted", bad)
		}
	}
}

// A ref after @ is honoured (the SAN must end in it) or refused; never dropped.
func TestWorkflowRef(t *testing.T) {
	id := &Identity{SourceURI: "github.com/acme/widget", SignerWorkflow: "acme/widget/.github/workflows/release.yml@refs/tags/v1"}
	if ref, err := id.workflowRef(); err != nil || ref != "refs/tags/v1" {
		t.Fatalf("workflowRef = %q, %v", ref, err)
	}
	ci, err := id.certificateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(ci.SubjectAlternativeName.Regexp.String(), `refs/tags/v1$`) {
		t.Errorf("SAN matcher %q does not pin the ref", ci.SubjectAlternativeName.Regexp.String())
	}
	for _, bad := range []string{"@v1", "@main", "@refs/tags/", "@refs/pulls/1"} {
		id.SignerWorkflow = "acme/widget/.github/workflows/release.yml" + bad
		if err := id.validate(); err == nil {
			t.Errorf("signer workflow ref %q accepted", bad)
		}
	}
}

func TestBuilderIDMatches(t *testing.T) {
	got := "https://cloche.dev/builders/snp@v0.2.0"
	for expected, want := range map[string]bool{
		got:                                      true,
		"https://cloche.dev/builders/snp":        true,
		"https://cloche.dev/builders/snp@v0.1.0": false,
		"https://cloche.dev/builders/sim":        false,
		"https://cloche.dev/builders/sn":         false,
	} {
		if builderIDMatches(expected, got) != want {
			t.Errorf("builderIDMatches(%q, %q) != %v", expected, got, want)
		}
	}
}

func TestSignatureOptions(t *testing.T) {
	cases := []struct {
		o    Options
		want string
	}{
		{Options{}, "no public key or trusted root"},
		{Options{TrustedMaterial: nil, Identity: &Identity{SourceURI: "github.com/a/b", SourceTag: "v1", SourceBranch: "main"}, PublicKey: struct{}{}}, "exclusive"},
		{Options{PublicKey: struct{}{}, Identity: &Identity{}}, "Identity.SourceURI is empty"},
	}
	for _, c := range cases {
		if err := c.o.checkSignatureOptions(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("checkSignatureOptions(%+v) = %v, want %q", c.o, err, c.want)
		}
	}
}

func TestCheckIdentity(t *testing.T) {
	m := &job.Manifest{InvocationID: "https://github.com/acme/widget/actions/runs/1/attempts/1",
		Source: job.Source{Repository: "https://github.com/acme/widget", Ref: "refs/tags/v1"}}
	r := &job.Result{SourceCommit: strings.Repeat("a", 40), SourceTag: "v1"}
	cert := &certificate.Summary{Extensions: certificate.Extensions{SourceRepositoryURI: "https://github.com/acme/widget",
		SourceRepositoryRef: "refs/tags/v1", SourceRepositoryDigest: strings.Repeat("a", 40), RunInvocationURI: m.InvocationID}}
	ok := &Options{Identity: &Identity{SourceURI: "github.com/acme/widget", SourceTag: "v1"}}
	if err := checkIdentity(ok, cert, m, r, "https://cloche.dev/builders/sim@v1"); err != nil {
		t.Fatalf("checkIdentity: %v", err)
	}
	mutate := func(f func(c *certificate.Summary)) *certificate.Summary { c := *cert; f(&c); return &c }
	cases := []struct {
		name  string
		o     *Options
		cert  *certificate.Summary
		check string
	}{
		{"manifest names another repository", &Options{Identity: &Identity{SourceURI: "github.com/acme/gadget"}}, cert, CheckSourceRepository},
		{"manifest names another tag", &Options{Identity: &Identity{SourceURI: "github.com/acme/widget", SourceTag: "v2"}}, cert, CheckSourceRef},
		// A key-signed bundle binds no repository: even the right one is refused.
		{"key-signed, repository expected", ok, nil, CheckSourceRepository},
		{"certificate from another run", ok, mutate(func(c *certificate.Summary) {
			c.RunInvocationURI = "https://github.com/acme/widget/actions/runs/2/attempts/1"
		}), CheckIdentity},
		{"certificate for another commit", ok, mutate(func(c *certificate.Summary) { c.SourceRepositoryDigest = strings.Repeat("b", 40) }), CheckIdentity},
		{"certificate for another ref", ok, mutate(func(c *certificate.Summary) { c.SourceRepositoryRef = "refs/heads/main" }), CheckIdentity},
		{"certificate for another repository", ok, mutate(func(c *certificate.Summary) { c.SourceRepositoryURI = "https://github.com/evil/widget" }), CheckIdentity},
		{"wrong builder", &Options{ExpectedBuilderID: "https://cloche.dev/builders/snp"}, cert, CheckBuilderID},
		{"wrong builder version", &Options{ExpectedBuilderID: "https://cloche.dev/builders/sim@v9.9.9"}, cert, CheckBuilderID},
	}
	// The statement says v9.9.9, but no trusted reference values bound a version: the
	// verified builder has none, and a pinned version fails.
	if err := checkIdentity(&Options{ExpectedBuilderID: "https://cloche.dev/builders/sim@v9.9.9"}, nil, m, r, "https://cloche.dev/builders/sim"); err == nil || !strings.Contains(err.Error(), "no trusted reference values bound") {
		t.Fatalf("unbound builder version: %v", err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := checkIdentity(c.o, c.cert, m, r, "https://cloche.dev/builders/sim@v1")
			var ve *Error
			if !errors.As(err, &ve) || ve.Check != c.check {
				t.Fatalf("error = %v, want check %q", err, c.check)
			}
		})
	}
	// The certificate's commit is compared with the attested one, never the host's: with
	// no commit attested, a keyless bundle fails.
	err := checkIdentity(ok, cert, m, &job.Result{}, "https://cloche.dev/builders/sim@v1")
	var ve *Error
	if !errors.As(err, &ve) || ve.Check != CheckSourceCommit {
		t.Fatalf("no attested commit: error = %v, want check %q", err, CheckSourceCommit)
	}
}
