package isolation

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMoveMount moves a mount whose parent is private (MS_MOVE) and one
// whose parent is shared, as / is on a systemd host (the kernel refuses
// MS_MOVE there: bind, then unmount). Either way the filesystem is at the
// new place only.
func TestMoveMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounts need root")
	}
	for _, prop := range []struct {
		name string
		flag uintptr
	}{{"private parent", unix.MS_PRIVATE}, {"shared parent", unix.MS_SHARED}} {
		t.Run(prop.name, func(t *testing.T) {
			dir := t.TempDir()
			parent, from, to := filepath.Join(dir, "parent"), filepath.Join(dir, "parent", "from"), filepath.Join(dir, "to")
			for _, p := range []string{parent, to} {
				if err := os.Mkdir(p, 0o700); err != nil {
					t.Fatal(err)
				}
			}
			mustMount := func(src, target, fstype string, flags uintptr) {
				t.Helper()
				if err := unix.Mount(src, target, fstype, flags, ""); err != nil {
					t.Fatalf("mount %s: %v", target, err)
				}
			}
			mustMount("tmpfs", parent, "tmpfs", 0)
			t.Cleanup(func() {
				for _, p := range []string{to, from, parent} {
					for unix.Unmount(p, unix.MNT_DETACH) == nil {
					}
				}
			})
			mustMount("", parent, "", prop.flag)
			if err := os.Mkdir(from, 0o700); err != nil {
				t.Fatal(err)
			}
			mustMount("tmpfs", from, "tmpfs", 0)
			if err := os.WriteFile(filepath.Join(from, "marker"), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := (hostSystem{}).MoveMount(from, to); err != nil {
				t.Fatalf("MoveMount: %v", err)
			}
			if _, err := os.Stat(filepath.Join(to, "marker")); err != nil {
				t.Errorf("not at the new place: %v", err)
			}
			if m, err := (hostSystem{}).Mounted(from); err != nil || m {
				t.Errorf("still mounted at the old place: %v %v", m, err)
			}
		})
	}
}
