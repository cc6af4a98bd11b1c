package guest

import (
	"errors"
	"strings"
	"testing"

	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/source"
)

// attestSource: no commit object attests nothing; a commit of the unpacked tree and a tag
// of it are attested; another tree, or a ref naming another tag, is refused.
func TestAttestSource(t *testing.T) {
	tree := strings.Repeat("e", 40)
	commit := []byte("tree " + tree + "\nauthor a <a@example.invalid> 1 +0000\ncommitter a <a@example.invalid> 1 +0000\n\nm\n")
	commitID := source.FormatSHA1.ObjectID("commit", commit)
	tag := []byte("object " + commitID + "\ntype commit\ntag v1\ntagger a <a@example.invalid> 1 +0000\n\nt\n")
	m := &job.Manifest{}
	if att, err := attestSource(m, tree); att != nil || err != nil {
		t.Fatalf("no commit object: %+v, %v", att, err)
	}
	m.Source = job.Source{Ref: "refs/tags/v1", CommitObject: commit, TagObject: tag}
	att, err := attestSource(m, tree)
	if err != nil || att.Commit != commitID || att.Tag != "v1" || att.TagObject != source.FormatSHA1.ObjectID("tag", tag) {
		t.Fatalf("attested %+v, %v", att, err)
	}
	other := strings.Repeat("f", 40)
	if _, err := attestSource(m, other); !errors.Is(err, source.ErrCommit) || !strings.Contains(err.Error(), commitID) || !strings.Contains(err.Error(), other) {
		t.Fatalf("another tree: %v", err)
	}
	m.Source.Ref = "refs/tags/v2"
	if _, err := attestSource(m, tree); !errors.Is(err, source.ErrCommit) || !strings.Contains(err.Error(), "refs/tags/v2") {
		t.Fatalf("ref of another tag: %v", err)
	}
}
