package source

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// Sentinel errors of ReadGitObjects.
var (
	// ErrNotGit: the source directory is not inside a git checkout, or the revision is not
	// in it.
	ErrNotGit = errors.New("not a git checkout")
	// ErrNoTag: the tag is not in the checkout (a shallow clone may lack it).
	ErrNoTag = errors.New("tag not in the checkout")
)

// ReadGitObjects reads, from the git checkout dir is in, the raw objects that name dir at
// commit rev: the commit object, the tree objects from its root down to dir (when dir is a
// subdirectory of the checkout), and, when tagRef names an annotated tag ("v1" or
// "refs/tags/v1"), the tag object. A lightweight tag has no object; it is not returned and
// cannot be attested. The objects are checked against each other only by AttestCommit.
func ReadGitObjects(ctx context.Context, dir, rev, tagRef string) (*GitObjects, error) {
	git := func(args ...string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
		return out, nil
	}
	line := func(args ...string) (string, error) {
		out, err := git(args...)
		return strings.TrimSpace(string(out)), err
	}
	prefix, err := line("rev-parse", "--show-prefix")
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrNotGit, dir, err)
	}
	format, err := line("rev-parse", "--show-object-format")
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrNotGit, dir, err)
	}
	o := &GitObjects{Format: ObjectFormat(format), Path: strings.TrimSuffix(prefix, "/")}
	if err := o.Format.Check(); err != nil {
		return nil, err
	}
	commit, err := line("rev-parse", "--verify", "--end-of-options", rev+"^{commit}")
	if err != nil {
		return nil, fmt.Errorf("%w: commit %q is not in the checkout of %s: %w", ErrNotGit, rev, dir, err)
	}
	if o.Commit, err = git("cat-file", "commit", commit); err != nil {
		return nil, err
	}
	if o.Path != "" {
		spec := commit + "^{tree}"
		for i, part := range strings.Split(o.Path, "/") {
			t, err := git("cat-file", "tree", spec)
			if err != nil {
				return nil, err
			}
			o.Trees = append(o.Trees, t)
			if i == 0 {
				spec = commit + ":" + part
			} else {
				spec += "/" + part
			}
		}
	}
	if tagRef != "" {
		ref := "refs/tags/" + strings.TrimPrefix(tagRef, "refs/tags/")
		typ, err := line("cat-file", "-t", ref)
		if err != nil {
			return nil, fmt.Errorf("%w: %s in %s: %w", ErrNoTag, ref, dir, err)
		}
		if typ == "tag" {
			if o.Tag, err = git("cat-file", "tag", ref); err != nil {
				return nil, err
			}
		}
	}
	return o, nil
}
