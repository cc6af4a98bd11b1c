package ghaction

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/sethvargo/go-githubactions"

	"github.com/cloche-dev/cloche/internal/build"
	"github.com/cloche-dev/cloche/internal/fileio"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/verify"
)

// subjectSelection is what the subject-name, subject-digest and subject-checksums inputs
// ask for. The signed statement always names every artifact the guest attested (a host
// cannot rename or leave out what the hardware vouched for), so these select which of
// those artifacts the action treats as its subjects: publishes, lists in its outputs and
// summary. Each must be an artifact this build attested, with the attested digest.
type subjectSelection struct {
	name   string // subject-name: an artifact's path (or base name, when unique)
	digest string // subject-digest: lowercase hex, without the "sha256:" prefix
	// checksums is subject-checksums: the path of an artifact that is a checksums file
	// (sha256sum's format, e.g. goreleaser's), whose listed files, beside it, are the
	// subjects with it.
	checksums string
}

func (s subjectSelection) selects() bool { return s.name != "" || s.digest != "" || s.checksums != "" }

var subjectDigestPattern = regexp.MustCompile(`^sha256:([0-9a-fA-F]{64})$`)

// readSubjectInputs reads subject-path (the artifact patterns; it wins over artifacts,
// which means the same), subject-name, subject-digest and subject-checksums.
func readSubjectInputs(a *githubactions.Action) (patterns []string, sel subjectSelection, err error) {
	patterns = listInput(a, "artifacts")
	if paths := listInput(a, "subject-path"); len(paths) > 0 {
		if len(patterns) > 0 && strings.Join(patterns, "\n") != strings.Join(paths, "\n") {
			a.Warningf("inputs subject-path and artifacts are both set: subject-path wins (%s)", strings.Join(paths, ", "))
		}
		patterns = paths
	}
	sel = subjectSelection{name: input(a, "subject-name"), checksums: input(a, "subject-checksums")}
	if d := input(a, "subject-digest"); d != "" {
		m := subjectDigestPattern.FindStringSubmatch(d)
		if m == nil {
			return nil, sel, fmt.Errorf("%w: input subject-digest is %q, expected sha256:<64 hex digits>", ErrInput, d)
		}
		sel.digest = strings.ToLower(m[1])
	}
	if sel.checksums != "" && (sel.name != "" || sel.digest != "") {
		return nil, sel, fmt.Errorf("%w: input subject-checksums selects the subjects itself: give it without subject-name and subject-digest", ErrInput)
	}
	if c := sel.checksums; c != "" && (!filepath.IsLocal(c) || path.Clean(c) != c) {
		return nil, sel, fmt.Errorf("%w: input subject-checksums is %q, expected the path of an artifact relative to the source", ErrInput, c)
	}
	return patterns, sel, nil
}

// builtSubjects are the files the build produced and the statement names: the artifacts
// and the host's SHA256SUMS of them.
func builtSubjects(o *build.Outcome) []job.Artifact {
	all := append([]job.Artifact{}, o.Artifacts...)
	if o.Checksums != nil {
		all = append(all, *o.Checksums)
	}
	return all
}

// selectSubjects is the artifacts the action treats as subjects: every one the build made,
// or those the subject inputs select, each checked against what the guest attested.
func selectSubjects(o *build.Outcome, sel subjectSelection) ([]job.Artifact, error) {
	all := builtSubjects(o)
	switch {
	case sel.checksums != "":
		return checksumsSubjects(o.ArtifactDir, all, sel.checksums)
	case sel.name != "" || sel.digest != "":
		return namedSubject(all, sel)
	default:
		return all, nil
	}
}

// namedSubject is the artifact subject-name names (path, or a unique base name) and
// subject-digest digests; with subject-digest alone, every artifact of that digest.
func namedSubject(all []job.Artifact, sel subjectSelection) ([]job.Artifact, error) {
	var byPath, byBase []job.Artifact
	for _, x := range all {
		if sel.digest != "" && x.SHA256 != sel.digest {
			continue
		}
		switch {
		case sel.name == "" || x.Path == sel.name:
			byPath = append(byPath, x)
		case path.Base(x.Path) == sel.name:
			byBase = append(byBase, x)
		}
	}
	if len(byPath) > 0 {
		return byPath, nil
	}
	if len(byBase) == 1 {
		return byBase, nil
	}
	what := "input subject-name " + sel.name
	switch {
	case sel.name == "":
		what = "input subject-digest sha256:" + sel.digest
	case sel.digest != "":
		what += " with input subject-digest sha256:" + sel.digest
	}
	if len(byBase) > 1 {
		return nil, fmt.Errorf("%w: %s names %d artifacts; give its path", ErrInput, what, len(byBase))
	}
	return nil, fmt.Errorf("%w: %s is no artifact this build attested (it attested %s)", ErrInput, what, describeArtifacts(all))
}

// checksumsSubjects reads the checksums file the build made (an attested artifact, read
// from dir and re-hashed) and returns it and every file it lists, each of which must be
// an artifact the build attested with the listed digest.
func checksumsSubjects(dir string, all []job.Artifact, name string) ([]job.Artifact, error) {
	attested := map[string]job.Artifact{}
	for _, x := range all {
		attested[x.Path] = x
	}
	sums, ok := attested[name]
	if !ok {
		return nil, fmt.Errorf("%w: input subject-checksums %s is no artifact this build attested (it attested %s)", ErrInput, name, describeArtifacts(all))
	}
	b, err := fileio.ReadCapped(filepath.Join(dir, filepath.FromSlash(name)), verify.MaxChecksumsFileSize)
	if err != nil {
		return nil, fmt.Errorf("input subject-checksums: %w", err)
	}
	if d := sha256.Sum256(b); hex.EncodeToString(d[:]) != sums.SHA256 {
		return nil, fmt.Errorf("input subject-checksums: %s in %s differs from the artifact the guest attested", name, dir)
	}
	entries, err := verify.ParseChecksums(b)
	if err != nil {
		return nil, fmt.Errorf("%w: input subject-checksums %s: %w", ErrInput, name, err)
	}
	out := []job.Artifact{sums}
	for _, e := range entries {
		p := path.Join(path.Dir(name), e.Name)
		x, ok := attested[p]
		switch {
		case !ok:
			return nil, fmt.Errorf("%w: input subject-checksums %s lists %s, which is no artifact this build attested", ErrInput, name, p)
		case x.SHA256 != e.SHA256:
			return nil, fmt.Errorf("%w: input subject-checksums %s lists %s with sha256 %s, the guest attested %s", ErrInput, name, p, e.SHA256, x.SHA256)
		}
		out = append(out, x)
	}
	return out, nil
}

func describeArtifacts(all []job.Artifact) string {
	var names []string
	for _, x := range all {
		names = append(names, x.Path)
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// artifactPath is where an artifact is on the runner.
func artifactPath(o *build.Outcome, x job.Artifact) string {
	return filepath.Join(o.ArtifactDir, filepath.FromSlash(x.Path))
}
