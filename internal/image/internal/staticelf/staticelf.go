// Package staticelf checks that a file is a statically linked x86-64 Linux executable: the
// guest initramfs and the test toolchain carry no dynamic loader or libc, so anything else
// would fail only at boot, far from the cause.
package staticelf

import (
	"debug/elf"
	"errors"
	"fmt"
)

// ErrNotStatic is wrapped when the file is an ELF executable that needs a dynamic loader.
var ErrNotStatic = errors.New("executable is dynamically linked")

// Check returns nil when path is an x86-64 ELF executable without a PT_INTERP segment
// (static, or static-pie).
func Check(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s is not a readable ELF executable: %w", path, err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 || f.Class != elf.ELFCLASS64 {
		return fmt.Errorf("%s is an ELF file for %v/%v, expected x86-64", path, f.Machine, f.Class)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("%s is an ELF %v, expected an executable", path, f.Type)
	}
	hasEntry := f.Entry != 0
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s: %w (it asks for a program interpreter), expected a static binary", path, ErrNotStatic)
		}
	}
	if !hasEntry {
		return fmt.Errorf("%s has no entry point, expected an executable", path)
	}
	return nil
}
