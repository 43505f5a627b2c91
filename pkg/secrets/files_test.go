package secrets

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/titus-agent/titus-agent/pkg/task"
)

func TestFilesWriteChownRemove(t *testing.T) {
	m := &fakeMounter{}
	f := &Files{Root: filepath.Join(t.TempDir(), "secrets"), Mounter: m}
	vals := []Value{
		{Ref: task.SecretRef{Name: "db"}, Data: []byte("pw")},
		{Ref: task.SecretRef{Name: "tls", Path: "certs/tls.key"}, Data: []byte("key")},
		{Ref: task.SecretRef{Name: "TOKEN", As: task.SecretAsEnv}, Data: []byte("env-only")},
	}
	dir, err := f.Write("t1", vals)
	if err != nil {
		t.Fatal(err)
	}
	if dir != f.Dir("t1") {
		t.Errorf("dir %s", dir)
	}
	got := map[string]string{}
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		rel, _ := filepath.Rel(dir, p)
		if !fi.IsDir() {
			b, _ := os.ReadFile(p)
			got[rel] = string(b) + " " + fi.Mode().Perm().String()
		}
		return nil
	})
	want := map[string]string{"db": "pw -r--------", "certs/tls.key": "key -r--------"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("files (-want +got):\n%s", diff)
	}
	if os.Geteuid() == 0 {
		if err := WithOwner(dir)(t.Context(), nil, nil, &specs.Spec{Process: &specs.Process{User: specs.User{UID: 1000, GID: 1001}},
			Linux: &specs.Linux{UIDMappings: []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}},
				GIDMappings: []specs.LinuxIDMapping{{ContainerID: 0, HostID: 200000, Size: 65536}}}}); err != nil {
			t.Fatal(err)
		}
		for p, mode := range map[string]os.FileMode{".": 0o500, "certs": 0o500, "db": 0o400, "certs/tls.key": 0o400} {
			fi, err := os.Lstat(filepath.Join(dir, p))
			if err != nil {
				t.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if st.Uid != 101000 || st.Gid != 201001 || fi.Mode().Perm() != mode {
				t.Errorf("%s: %d:%d %v, want 101000:201001 %v", p, st.Uid, st.Gid, fi.Mode().Perm(), mode)
			}
		}
	}
	// A resumed launch writes afresh: the old mount comes off first.
	if _, err := f.Write("t1", vals[:1]); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := f.Remove("t1"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("dir still there: %v", err)
	}
	wantCalls := []string{"mount " + dir, "unmount " + dir, "mount " + dir, "unmount " + dir}
	if diff := cmp.Diff(wantCalls, m.calls); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
}

// A failed mount leaves nothing behind.
func TestFilesWriteFailsClean(t *testing.T) {
	m := &fakeMounter{failOn: "mount"}
	f := &Files{Root: t.TempDir(), Mounter: m}
	if _, err := f.Write("t1", []Value{{Ref: task.SecretRef{Name: "db"}, Data: []byte("pw")}}); err == nil {
		t.Fatal("no error")
	}
	ents, _ := os.ReadDir(f.Root)
	if len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
}

func TestFilesRefusesBadTaskID(t *testing.T) {
	f := &Files{Root: t.TempDir(), Mounter: &fakeMounter{}}
	for _, id := range []string{"", ".", "..", "a/b", "../x"} {
		if _, err := f.Write(id, nil); err == nil {
			t.Errorf("task id %q accepted", id)
		}
	}
}

func TestFilesReap(t *testing.T) {
	m := &fakeMounter{}
	f := &Files{Root: t.TempDir(), Mounter: m}
	for _, id := range []string{"keep", "gone"} {
		if _, err := f.Write(id, nil); err != nil {
			t.Fatal(err)
		}
	}
	reaped, err := f.Reap(map[string]bool{"keep": true})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"gone"}, reaped); diff != "" {
		t.Error(diff)
	}
	if !m.mounted[f.Dir("keep")] || m.mounted[f.Dir("gone")] {
		t.Errorf("mounted: %v", m.mounted)
	}
}

// A symlink planted in the secrets dir is refused, not followed.
func TestChownRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o400)
	os.Symlink("/etc/shadow", filepath.Join(dir, "l"))
	err := Chown(dir, os.Getuid(), os.Getgid())
	if err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("err = %v", err)
	}
}
