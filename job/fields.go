package job

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// The checks below apply the manifest's rules (Manifest.Validate) to one field, so a caller
// can reject bad input by name before any expensive step. Their errors say what is
// expected, without the field's name: the caller knows what the user called it.

// CheckCommand checks a build command: 1..MaxCommandArgs arguments, a non-empty program,
// no NUL.
func CheckCommand(argv []string) error {
	switch {
	case len(argv) == 0 || argv[0] == "":
		return errors.New("expected a command to run: COMMAND [ARGS...]")
	case len(argv) > MaxCommandArgs:
		return fmt.Errorf("%d arguments, expected at most %d", len(argv), MaxCommandArgs)
	}
	for _, a := range argv {
		if strings.ContainsRune(a, 0) {
			return errors.New("an argument contains a NUL byte")
		}
	}
	return nil
}

// CheckWorkdir checks the directory the command runs in: "." or a clean relative path
// inside the source.
func CheckWorkdir(p string) error {
	if !isRelPath(p, true) {
		return errors.New("expected a clean relative path inside the source, such as . or sub/dir")
	}
	return nil
}

// CheckEnv checks one build environment entry: a NAME of letters, digits and _, not
// starting with a digit; a value without NUL.
func CheckEnv(name, value string) error {
	if !envName.MatchString(name) || strings.ContainsRune(value, 0) {
		return errors.New("expected NAME=VALUE with NAME of letters, digits and _ (not starting with a digit) and no NUL")
	}
	return nil
}

// CheckArtifactPattern checks one artifact pattern: a clean relative path.Match pattern.
func CheckArtifactPattern(p string) error {
	if !isRelPath(p, false) {
		return errors.New("expected a clean relative path pattern inside the source, such as dist/*.tar.gz")
	}
	if _, err := path.Match(p, ""); err != nil {
		return fmt.Errorf("expected a path.Match pattern: %w", err)
	}
	return nil
}
