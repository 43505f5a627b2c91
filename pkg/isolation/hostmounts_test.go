package isolation

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// bound is one BindFD the fake saw: where, and what the descriptor held
// at that moment (its inode, and the path the kernel has for it).
type bound struct {
	Target string
	Ino    uint64
	Path   string
}

// fakeMounts records mounts instead of making them. beforeBind runs just
// before each bind: the moment a racing task would act.
type fakeMounts struct {
	binds      []bound
	unmounts   []string
	beforeBind func(target string)
}

func (f *fakeMounts) BindFD(fd int, target string) error {
	if f.beforeBind != nil {
		f.beforeBind(target)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return err
	}
	f.binds = append(f.binds, bound{Target: target, Ino: st.Ino, Path: p})
	return nil
}

func (f *fakeMounts) Unmount(target string) error {
	f.unmounts = append(f.unmounts, target)
	return nil
}

func newFakeHostMounts(t *testing.T, allowed []HostPath) (*HostMounts, *fakeMounts) {
	fake := &fakeMounts{}
	return &HostMounts{Allowed: allowed, Dir: filepath.Join(t.TempDir(), "hostmounts"), sys: fake}, fake
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestHostMountsStage(t *testing.T) {
	dir := t.TempDir()
	data, ro := filepath.Join(dir, "data"), filepath.Join(dir, "data", "ro")
	for _, d := range []string{filepath.Join(data, "x"), ro, filepath.Join(dir, "database")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(data, "file"), []byte("f"), 0o644); err != nil {
		t.Fatal(err)
	}
	allowed := []HostPath{{Path: data, ReadWrite: true}, {Path: ro}}
	for _, tc := range []struct {
		name       string
		labels     map[string]string
		allowed    []HostPath
		wantMounts []specs.Mount // Source relative to the task's staging dir
		wantBinds  []string      // what was bound, in order
		wantErr    error
	}{
		{name: "nothing asked, nothing given", allowed: allowed},
		{
			name:    "allowed mounts, read-only by default",
			labels:  map[string]string{LabelHostMounts: data + "/x:/data, " + data + ":/rw:rw, " + ro + ":/ro, " + data + "/file:/etc/f"},
			allowed: allowed,
			wantMounts: []specs.Mount{
				{Destination: "/data", Type: "bind", Source: "0", Options: []string{"rbind", "ro", "nosuid", "nodev", "rnosuid", "rnodev", "rro"}},
				{Destination: "/rw", Type: "bind", Source: "1", Options: []string{"rbind", "rw", "nosuid", "nodev", "rnosuid", "rnodev"}},
				{Destination: "/ro", Type: "bind", Source: "2", Options: []string{"rbind", "ro", "nosuid", "nodev", "rnosuid", "rnodev", "rro"}},
				{Destination: "/etc/f", Type: "bind", Source: "3", Options: []string{"rbind", "ro", "nosuid", "nodev", "rnosuid", "rnodev", "rro"}},
			},
			wantBinds: []string{data + "/x", data, ro, data + "/file"},
		},
		{name: "read-write on a read-only path", labels: map[string]string{LabelHostMounts: ro + ":/d:rw"}, allowed: allowed, wantErr: ErrNotAllowed},
		{name: "path outside allowlist", labels: map[string]string{LabelHostMounts: dir + "/database:/d"}, allowed: allowed, wantErr: ErrNotAllowed},
		{name: "escape via ..", labels: map[string]string{LabelHostMounts: data + "/../../etc:/d"}, allowed: allowed, wantErr: ErrNotAllowed},
		{name: "no allowlist", labels: map[string]string{LabelHostMounts: data + ":/d"}, wantErr: ErrNotAllowed},
		{name: "bad form", labels: map[string]string{LabelHostMounts: data}, allowed: allowed, wantErr: ErrNotAllowed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, fake := newFakeHostMounts(t, tc.allowed)
			got, err := h.Stage("t1", tc.labels)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			for i := range tc.wantMounts {
				tc.wantMounts[i].Source = filepath.Join(h.Dir, "t1", tc.wantMounts[i].Source)
			}
			if diff := cmp.Diff(tc.wantMounts, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("mounts (-want +got):\n%s", diff)
			}
			var binds []string
			for i, b := range fake.binds {
				binds = append(binds, b.Path)
				if b.Target != got[i].Source {
					t.Errorf("bind %d on %s, the mount names %s", i, b.Target, got[i].Source)
				}
			}
			if diff := cmp.Diff(tc.wantBinds, binds); diff != "" {
				t.Errorf("bound (-want +got):\n%s", diff)
			}
			if st, err := os.Stat(filepath.Join(h.Dir, "t1", "3")); err == nil && st.IsDir() {
				t.Errorf("the staging point of a file is a directory")
			}
			if err := h.Release("t1"); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(h.Dir, "t1")); !os.IsNotExist(err) {
				t.Errorf("staging dir left after Release: %v", err)
			}
		})
	}
}

// TestHostMountSymlinkAttack plants symlinks in an allowed directory, as a
// task that can write there would, and asks to mount through them: every
// one is refused, whatever it points at, and nothing is bound.
func TestHostMountSymlinkAttack(t *testing.T) {
	dir := t.TempDir()
	shared := filepath.Join(dir, "shared")
	if err := os.MkdirAll(filepath.Join(shared, "real", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{
		"x":       "/",                           // the host's root
		"etc":     "/etc",                        // a host directory
		"rel":     "../..",                       // out by a relative link
		"inside":  "real",                        // even one that stays inside
		"dirlink": filepath.Join(shared, "real"), // an absolute link to inside
		"loop":    "loop",                        // a loop
	} {
		if err := os.Symlink(target, filepath.Join(shared, link)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/", filepath.Join(shared, "real", "sub", "up")); err != nil {
		t.Fatal(err)
	}
	allowed := []HostPath{{Path: shared, ReadWrite: true}}
	for _, src := range []string{"x", "x/etc", "etc", "rel", "inside", "inside/sub", "dirlink/sub", "loop", "real/sub/up", "real/sub/up/etc/shadow"} {
		t.Run(src, func(t *testing.T) {
			h, fake := newFakeHostMounts(t, allowed)
			_, err := h.Stage("t1", map[string]string{LabelHostMounts: filepath.Join(shared, src) + ":/mnt:rw"})
			if !errors.Is(err, ErrNotAllowed) {
				t.Fatalf("mount of %s: err = %v, want %v", src, err, ErrNotAllowed)
			}
			if len(fake.binds) != 0 {
				t.Errorf("bound %v", fake.binds)
			}
		})
	}
	// The real directory next to them still mounts.
	h, fake := newFakeHostMounts(t, allowed)
	if _, err := h.Stage("t1", map[string]string{LabelHostMounts: shared + "/real/sub:/mnt"}); err != nil {
		t.Fatal(err)
	}
	if len(fake.binds) != 1 || fake.binds[0].Ino != inode(t, filepath.Join(shared, "real", "sub")) {
		t.Errorf("bound %v, want the real directory", fake.binds)
	}
}

// TestHostMountSwapAfterCheck is the race: a task that can write to the
// shared directory swaps the checked directory for a symlink to the host's
// root after the check and before the mount. What is mounted is the
// directory that was checked (now under its new name), and the task's
// mount names the agent's staging point, never a path the task controls.
func TestHostMountSwapAfterCheck(t *testing.T) {
	dir := t.TempDir()
	shared := filepath.Join(dir, "shared")
	data := filepath.Join(shared, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	checked := inode(t, data)
	h, fake := newFakeHostMounts(t, []HostPath{{Path: shared, ReadWrite: true}})
	fake.beforeBind = func(string) {
		if err := os.Rename(data, data+".moved"); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/", data); err != nil {
			t.Fatal(err)
		}
	}
	got, err := h.Stage("t1", map[string]string{LabelHostMounts: data + ":/data:rw"})
	if err != nil {
		t.Fatal(err)
	}
	if len(fake.binds) != 1 {
		t.Fatalf("binds %v, want one", fake.binds)
	}
	if b := fake.binds[0]; b.Ino != checked || b.Path != data+".moved" {
		t.Errorf("bound %+v, want the checked directory (inode %d, now %s.moved)", b, checked, data)
	}
	if want := filepath.Join(h.Dir, "t1", "0"); len(got) != 1 || got[0].Source != want {
		t.Errorf("mounts %v, want one from the staging point %s", got, want)
	}
}

// TestHostMountsReleaseAndReap: Release unmounts every staging point of a
// task before removing it (and fails, removing nothing, while a mount
// stays); Reap releases the tasks not kept.
func TestHostMountsReleaseAndReap(t *testing.T) {
	dir := t.TempDir()
	h, fake := newFakeHostMounts(t, []HostPath{{Path: dir}})
	for _, id := range []string{"keep", "gone"} {
		if _, err := h.Stage(id, map[string]string{LabelHostMounts: dir + ":/a," + dir + ":/b"}); err != nil {
			t.Fatal(err)
		}
	}
	fake.unmounts = nil
	reaped, err := h.Reap(map[string]bool{"keep": true})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"gone"}, reaped); diff != "" {
		t.Errorf("reaped (-want +got):\n%s", diff)
	}
	want := []string{filepath.Join(h.Dir, "gone", "0"), filepath.Join(h.Dir, "gone", "1")}
	if diff := cmp.Diff(want, fake.unmounts); diff != "" {
		t.Errorf("unmounts (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(filepath.Join(h.Dir, "keep", "1")); err != nil {
		t.Errorf("kept task's staging point: %v", err)
	}
	for _, id := range []string{"keep", "keep", "never"} { // twice: idempotent
		if err := h.Release(id); err != nil {
			t.Errorf("release %s: %v", id, err)
		}
	}
	if ents, _ := os.ReadDir(h.Dir); len(ents) != 0 {
		t.Errorf("left %v", ents)
	}
	for _, id := range []string{"", "..", "a/b"} {
		if _, err := h.Stage(id, map[string]string{LabelHostMounts: dir + ":/a"}); !errors.Is(err, ErrNotAllowed) {
			t.Errorf("stage for task %q: %v, want refused", id, err)
		}
	}
}

// TestHostPathRootMayBeASymlink: the allowed root is the host's config and
// may itself be reached through a symlink.
func TestHostPathRootMayBeASymlink(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "real", "a"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "real"), filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	fd, _, err := openHostPath([]HostPath{{Path: filepath.Join(dir, "link")}}, filepath.Join(dir, "link", "a"))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	if want := inode(t, filepath.Join(dir, "real", "a")); st.Ino != want {
		t.Errorf("opened inode %d, want %d (real/a)", st.Ino, want)
	}
}
