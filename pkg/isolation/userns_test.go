package isolation

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/google/go-cmp/cmp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// userNSDisks is a loop-backed Disks on a fake system with user namespaces
// from two slots of 65536 IDs at 1<<24.
func userNSDisks(t *testing.T, dir string, sys *fakeSystem) *Disks {
	t.Helper()
	d := newDisks(NewLoopQuota(dir, sys), dir, sys)
	if err := d.EnableUserNS(IDRanges{Base: 1 << 24, Size: 65536, Count: 2}); err != nil {
		t.Fatal(err)
	}
	return d
}

// searchableTempDir is a temp dir whose parent others may pass (t.TempDir's
// parent is 0700).
func searchableTempDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(filepath.Dir(dir), 0o711); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestSetupUserNS(t *testing.T) {
	ctx := context.Background()
	dir := searchableTempDir(t)
	sys := newFakeSystem()

	plain := newDisks(NewLoopQuota(dir, sys), dir, sys)
	if _, err := plain.SetupUserNS(ctx, "t0", 16, []string{"/l"}); !errors.Is(err, ErrUserNSUnavailable) {
		t.Fatalf("SetupUserNS without ranges: %v, want ErrUserNSUnavailable", err)
	}
	if err := plain.Teardown(ctx, "t0"); err != nil {
		t.Fatal(err)
	}
	sys.take(dir)

	d := userNSDisks(t, dir, sys)
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o711 {
		t.Fatalf("disk dir mode = %v, %v; want 0711", st.Mode(), err)
	}
	d1, err := d.SetupUserNS(ctx, "t1", 16, []string{"/l/2", "/l/1"})
	if err != nil {
		t.Fatal(err)
	}
	d2, err := d.SetupUserNS(ctx, "t2", 16, []string{"/l/1"})
	if err != nil {
		t.Fatal(err)
	}
	r1, r2 := d1.UserNS.HostRoot(), d2.UserNS.HostRoot()
	if r1 == r2 || (r1 != 1<<24 && r1 != 1<<24+65536) || (r2 != 1<<24 && r2 != 1<<24+65536) {
		t.Fatalf("host roots %d and %d, want the two distinct slots", r1, r2)
	}
	want := &UserNS{
		UIDMap: []specs.LinuxIDMapping{{ContainerID: 0, HostID: r1, Size: 65536}},
		GIDMap: []specs.LinuxIDMapping{{ContainerID: 0, HostID: r1, Size: 65536}},
	}
	if diff := cmp.Diff(want, d1.UserNS); diff != "" {
		t.Errorf("t1's user namespace (-want +got):\n%s", diff)
	}
	for _, sub := range []string{"upper", "work"} {
		if uid, err := ownerUID(filepath.Join(d1.Path, sub)); err != nil || uid != r1 {
			t.Errorf("t1's %s owned by %d (%v), want %d", sub, uid, err, r1)
		}
	}
	calls := sys.take(dir)
	wantMount := "mount -t overlay -o lowerdir=/l/2:/l/1,upperdir=D/mnt/t1/upper,workdir=D/mnt/t1/work," +
		"uidmap=0:" + itoa(r1) + ":65536,gidmap=0:" + itoa(r1) + ":65536 overlay D/rootfs/t1"
	if !slices.Contains(calls, wantMount) {
		t.Errorf("calls %q lack t1's overlay mount %q", calls, wantMount)
	}

	// Both slots taken: a third task is refused, nothing is mounted for it.
	if _, err := d.SetupUserNS(ctx, "t3", 16, []string{"/l"}); err == nil {
		t.Fatal("a third user namespace out of two slots")
	}
	if sys.mounted[dir+"/rootfs/t3"] {
		t.Error("t3's rootfs mounted after its user namespace was refused")
	}
	if err := d.Teardown(ctx, "t3"); err != nil {
		t.Fatal(err)
	}

	// A restarted agent finds t1's range from its record.
	restarted := userNSDisks(t, dir, sys)
	restarted.RestoreUserNS(map[string]*UserNS{"t1": d1.UserNS, "t2": d2.UserNS})
	again, err := restarted.SetupUserNS(ctx, "t1", 16, []string{"/l/2", "/l/1"})
	if err != nil || again.UserNS.HostRoot() != r1 {
		t.Fatalf("t1 after a restart: %+v, %v; want host root %d", again, err, r1)
	}

	// t2's disk gone, its range goes to the next task.
	if err := d.Teardown(ctx, "t2"); err != nil {
		t.Fatal(err)
	}
	d4, err := d.SetupUserNS(ctx, "t4", 16, []string{"/l"})
	if err != nil || d4.UserNS.HostRoot() != r2 {
		t.Fatalf("t4: %+v, %v; want t2's former host root %d", d4, err, r2)
	}
}

func TestIDRangesValidate(t *testing.T) {
	for _, tc := range []struct {
		r    IDRanges
		okay bool
	}{
		{IDRanges{Base: 1 << 24, Size: 65536, Count: 4096}, true},
		{IDRanges{Base: 0, Size: 65536, Count: 1}, false},
		{IDRanges{Base: 1 << 24, Size: 0, Count: 1}, false},
		{IDRanges{Base: 1 << 24, Size: 65536, Count: 0}, false},
		{IDRanges{Base: 1 << 31, Size: 1 << 16, Count: 1 << 16}, false},
	} {
		if err := tc.r.Validate(); (err == nil) != tc.okay {
			t.Errorf("%+v.Validate() = %v, want ok=%v", tc.r, err, tc.okay)
		}
	}
}

func TestEnableUserNSNeedsSearchableParents(t *testing.T) {
	dir := t.TempDir() // its parent is 0700
	sys := newFakeSystem()
	d := newDisks(NewLoopQuota(dir, sys), dir, sys)
	if err := d.EnableUserNS(IDRanges{Base: 1 << 24, Size: 65536, Count: 2}); err == nil {
		t.Fatal("enabled below a directory others cannot pass")
	}
}

func TestWithUserNSSysfs(t *testing.T) {
	u := IDRanges{Base: 1 << 24, Size: 65536, Count: 1}.userNS(0)
	sysfs := specs.Mount{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "ro"}}
	hostSys := specs.Mount{Destination: "/sys", Type: "bind", Source: "/sys", Options: []string{"rbind", "nosuid", "noexec", "nodev", "ro"}}
	for _, tc := range []struct {
		name  string
		netns specs.LinuxNamespace
		want  specs.Mount
	}{
		{"own network namespace: its own sysfs", specs.LinuxNamespace{Type: specs.NetworkNamespace}, sysfs},
		{"joins the agent's netns: the host's /sys read-only", specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/run/netns/t1"}, hostSys},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &oci.Spec{Mounts: []specs.Mount{sysfs}, Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{tc.netns}}}
			if err := oci.ApplyOpts(context.Background(), nil, &containers.Container{ID: "t1"}, s, WithUserNS(u)); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]specs.Mount{tc.want}, s.Mounts); diff != "" {
				t.Errorf("mounts (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(u.UIDMap, s.Linux.UIDMappings); diff != "" {
				t.Errorf("uid maps (-want +got):\n%s", diff)
			}
		})
	}
}

// The attack: a task owns its root directory (the overlay's upper dir) and
// chowns it, which used to be where its range was read back from. After an
// agent restart its range comes from its record: unchanged, and no new
// task is handed the same host IDs.
func TestUserNSRangeSurvivesChownAndRestart(t *testing.T) {
	ctx := context.Background()
	dir := searchableTempDir(t)
	sys := newFakeSystem()
	d := userNSDisks(t, dir, sys)
	d1, err := d.SetupUserNS(ctx, "t1", 16, []string{"/l"})
	if err != nil {
		t.Fatal(err)
	}
	d2, err := d.SetupUserNS(ctx, "t2", 16, []string{"/l"})
	if err != nil {
		t.Fatal(err)
	}
	r1 := d1.UserNS.HostRoot()
	// Inside its namespace the task is root: "chown 1:1 /" lands on the
	// host as r1+1.
	if err := os.Lchown(filepath.Join(d1.Path, "upper"), int(r1)+1, int(r1)+1); err != nil {
		t.Fatal(err)
	}
	// The agent restarts and learns the ranges from its records. (Without
	// them, as before, t3 was handed t1's range here.)
	d = userNSDisks(t, dir, sys)
	d.RestoreUserNS(map[string]*UserNS{"t1": d1.UserNS, "t2": d2.UserNS})
	if d3, err := d.SetupUserNS(ctx, "t3", 16, []string{"/l"}); err == nil {
		t.Errorf("t3 got host root %d with both slots held (t1 %d, t2 %d): two tasks share host IDs",
			d3.UserNS.HostRoot(), r1, d2.UserNS.HostRoot())
	}
	if err := d.Teardown(ctx, "t3"); err != nil {
		t.Fatal(err)
	}
	again, err := d.SetupUserNS(ctx, "t1", 16, []string{"/l"})
	if err != nil || again.UserNS.HostRoot() != r1 {
		t.Fatalf("t1 after chown and restart: %+v, %v; want host root %d", again, err, r1)
	}
	// Its directories are its range's root's again.
	if uid, err := ownerUID(filepath.Join(d1.Path, "upper")); err != nil || uid != r1 {
		t.Errorf("t1's upper owned by %d (%v), want %d", uid, err, r1)
	}
}

func TestIDRangesOverlapping(t *testing.T) {
	r := IDRanges{Base: 1000, Size: 100, Count: 3}
	for _, tt := range []struct {
		host, size uint32
		want       []uint32
	}{
		{1000, 100, []uint32{0}},
		{1100, 100, []uint32{1}},
		{1050, 100, []uint32{0, 1}},
		{0, 5000, []uint32{0, 1, 2}},
		{900, 100, nil},
		{1300, 10, nil},
		{1299, 10, []uint32{2}},
	} {
		if diff := cmp.Diff(tt.want, r.overlapping(tt.host, tt.size)); diff != "" {
			t.Errorf("[%d,+%d) (-want +got):\n%s", tt.host, tt.size, diff)
		}
	}
}
