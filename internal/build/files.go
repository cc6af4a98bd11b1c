package build

import (
	"fmt"
	"io"
	"os"

	"github.com/cloche-dev/cloche/internal/atomicfile"
)

// moveFile renames src to dst; across filesystems it copies to a temp file beside dst and
// renames that, so dst is never half-written.
func moveFile(src, dst string) error {
	if err := os.Rename(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	f, err := atomicfile.Create(dst)
	if err != nil {
		return err
	}
	defer f.Abort()
	if _, err := io.Copy(f, in); err != nil {
		return fmt.Errorf("moving %s to %s: %w", src, dst, err)
	}
	return f.Commit(st.Mode().Perm())
}
