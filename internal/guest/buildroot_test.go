package guest

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cloche-dev/cloche/internal/disk"
	"github.com/cloche-dev/cloche/job"
	"github.com/cloche-dev/cloche/source"
)

// TestBuildRootOnHost runs steps 5 to 7 for real: an overlay whose lower layer is the host's
// root file system (standing in for the verity-mounted toolchain), the source unpacked
// from a real archive, the command in the sandbox, artifacts collected.
func TestBuildRootOnHost(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()

	srcDir := t.TempDir()
	for p, c := range map[string]string{"Makefile": "all:\n", "sub/main.c": "int main(void){return 0;}\n"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(srcDir, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(srcDir, p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	wantTree, err := source.TreeID(srcDir)
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "src.tar")
	sum, size, err := source.PackFile(ctx, srcDir, 1700000000, archive)
	if err != nil {
		t.Fatal(err)
	}

	scratch := t.TempDir()
	root, err := prepareBuildRoot("/", filepath.Join(scratch, "build"), BuildUID, BuildGID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = unix.Unmount(root.Dir, unix.MNT_DETACH)
		_ = unix.Unmount(filepath.Join(scratch, "build"), unix.MNT_DETACH)
	})

	m := &job.Manifest{
		Source:          job.Source{ArchiveSHA256: sum, ArchiveSize: size},
		Command:         []string{"sh", "-c", "set -e; mkdir -p out; cp main.c out/copy.c; id -u > out/uid; grep -E '^(NoNewPrivs|CapEff)' /proc/self/status > out/privs; if touch /usr/cloche-evil 2>/dev/null; then echo wrote-usr > out/usr; fi; echo built"},
		Workdir:         "sub",
		Artifacts:       []string{"sub/out/*"},
		SourceDateEpoch: 1700000000,
		TimeoutSeconds:  60,
		MaxOutputBytes:  1 << 20,
	}
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tree, before, err := unpackSource(ctx, &disk.Input{Archive: f, ArchiveSize: size}, m, root)
	if err != nil {
		t.Fatal(err)
	}
	if tree != wantTree {
		t.Errorf("tree id %s, expected %s", tree, wantTree)
	}
	var fi unix.Stat_t
	if err := unix.Stat(filepath.Join(root.Src, "sub/main.c"), &fi); err != nil || fi.Uid != BuildUID || fi.Gid != BuildGID {
		t.Errorf("unpacked file owner %d:%d (%v), expected %d:%d", fi.Uid, fi.Gid, err, BuildUID, BuildGID)
	}

	exe, _ := os.Executable()
	var console bytes.Buffer
	res, err := RunCommand(ctx, CommandSpec{
		Root: root.Dir, Dir: "/src/sub", Argv: m.Command, Env: BuildEnv(m), UID: BuildUID, GID: BuildGID,
		Timeout: time.Minute, Console: &console, LogPath: filepath.Join(scratch, "log.txt"), LogCap: m.MaxOutputBytes, SelfExe: exe,
	})
	if err != nil || res.Err != nil || res.ExitCode != 0 {
		t.Fatalf("command: %v / %v, exit %d; output:\n%s", err, res.Err, res.ExitCode, console.String())
	}
	if console.String() != "built\n" {
		t.Errorf("console %q", console.String())
	}
	arts, err := CollectArtifacts(root.Src, m.Artifacts, before, res.Log.Size, m.MaxOutputBytes)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, a := range arts {
		b, _ := os.ReadFile(a.HostPath)
		got[a.Path] = string(b)
	}
	if got["sub/out/copy.c"] != "int main(void){return 0;}\n" || got["sub/out/uid"] != "1000\n" {
		t.Errorf("artifacts %v", got)
	}
	if privs := got["sub/out/privs"]; !strings.Contains(privs, "NoNewPrivs:\t1") || !strings.Contains(privs, "CapEff:\t0000000000000000") {
		t.Errorf("the build runs with privileges: %q", privs)
	}
	if _, ok := got["sub/out/usr"]; ok {
		t.Error("the build user could write into the toolchain's /usr")
	}
	if _, err := os.Stat("/usr/cloche-evil"); err == nil {
		t.Error("the build wrote through to the lower layer")
	}
}
