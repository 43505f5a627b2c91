package isolation

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func exists(t *testing.T, p string) bool {
	t.Helper()
	_, err := os.Stat(p)
	return err == nil
}

func TestLoopDisksSetupTeardown(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	sys := newFakeSystem()
	d := newDisks(NewLoopQuota(dir, sys), dir, sys)

	disk, err := d.Setup(ctx, "t1", 64, []string{"/l/2", "/l/1"})
	if err != nil {
		t.Fatal(err)
	}
	want := &Disk{
		TaskID: "t1", Backend: BackendLoopExt4, ImagePath: dir + "/images/t1.img", Path: dir + "/mnt/t1",
		RootfsPath: dir + "/rootfs/t1", LogDir: dir + "/mnt/t1/logs",
	}
	if diff := cmp.Diff(want, disk); diff != "" {
		t.Errorf("disk (-want +got):\n%s", diff)
	}
	wantCalls := []string{
		"mkfs.ext4 -q -F -b 4096 -m 0 -O ^has_journal -E lazy_itable_init=1,lazy_journal_init=1,nodiscard D/images/t1.img.tmp",
		"losetup --find --show --direct-io=on --sector-size 4096 D/images/t1.img",
		"mount -t ext4 -o noatime /dev/loop3 D/mnt/t1",
		"mount -t overlay -o lowerdir=/l/2:/l/1,upperdir=D/mnt/t1/upper,workdir=D/mnt/t1/work overlay D/rootfs/t1",
	}
	if diff := cmp.Diff(wantCalls, sys.take(dir)); diff != "" {
		t.Errorf("setup calls (-want +got):\n%s", diff)
	}
	if st, err := os.Stat(disk.ImagePath); err != nil || st.Size() != 64<<20 {
		t.Errorf("image = %v, %v; want a 64 MiB sparse file", st, err)
	}

	// Again (a restarted agent repeating prestart): nothing new.
	if _, err := d.Setup(ctx, "t1", 64, []string{"/l/2", "/l/1"}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{}, sys.take(dir), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("repeated setup calls (-want +got):\n%s", diff)
	}

	for range 2 {
		if err := d.Teardown(ctx, "t1"); err != nil {
			t.Fatal(err)
		}
	}
	wantCalls = []string{"umount D/rootfs/t1", "umount D/mnt/t1", "losetup -j D/images/t1.img"}
	if diff := cmp.Diff(wantCalls, sys.take(dir)); diff != "" {
		t.Errorf("teardown calls (-want +got):\n%s", diff)
	}
	for _, p := range []string{disk.ImagePath, disk.Path, disk.RootfsPath} {
		if exists(t, p) {
			t.Errorf("%s left behind", p)
		}
	}
}

func TestLoopRemoveDetachesStrayLoop(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	sys := newFakeSystem()
	q := NewLoopQuota(dir, sys)
	if _, err := q.Create(ctx, "t1", 16); err != nil {
		t.Fatal(err)
	}
	// A crash between attach and mount: not mounted, loop still bound.
	delete(sys.mounted, dir+"/mnt/t1")
	sys.outputs["losetup -j"] = "/dev/loop7: [2049]:1234 (" + dir + "/images/t1.img)\n"
	sys.take(dir)
	if err := q.Remove(ctx, "t1"); err != nil {
		t.Fatal(err)
	}
	want := []string{"losetup -j D/images/t1.img", "losetup -d /dev/loop7"}
	if diff := cmp.Diff(want, sys.take(dir)); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
}

func TestLoopCreateFailureLeavesNothing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	sys := newFakeSystem()
	sys.fail["mkfs.ext4"] = errors.New("boom")
	q := NewLoopQuota(dir, sys)
	if _, err := q.Create(ctx, "t1", 16); err == nil {
		t.Fatal("Create succeeded, want the mkfs error")
	}
	ids, err := q.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 0 {
		t.Errorf("List = %v after a failed create, want none", ids)
	}
}

func TestDisksRejectBadInput(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	sys := newFakeSystem()
	d := newDisks(NewLoopQuota(dir, sys), dir, sys)
	for _, tc := range []struct {
		id     string
		size   int64
		lowers []string
	}{
		{id: "../etc", size: 1, lowers: []string{"/l"}},
		{id: "", size: 1, lowers: []string{"/l"}},
		{id: strings.Repeat("a", 129), size: 1, lowers: []string{"/l"}},
		{id: "t1", size: 0, lowers: []string{"/l"}},
		{id: "t1", size: 1},
	} {
		if _, err := d.Setup(ctx, tc.id, tc.size, tc.lowers); err == nil {
			t.Errorf("Setup(%q, %d, %v) succeeded", tc.id, tc.size, tc.lowers)
		}
	}
	if calls := sys.take(dir); len(calls) != 0 {
		t.Errorf("calls = %v, want none", calls)
	}
}

func TestCheckTaskIDLength(t *testing.T) {
	if err := checkTaskID(strings.Repeat("a", 128)); err != nil {
		t.Errorf("128 characters: %v", err)
	}
	if err := checkTaskID(strings.Repeat("a", 129)); !errors.Is(err, ErrInvalidTaskID) {
		t.Errorf("129 characters: %v, want ErrInvalidTaskID", err)
	}
}

func TestDisksReap(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	sys := newFakeSystem()
	d := newDisks(NewLoopQuota(dir, sys), dir, sys)
	for _, id := range []string{"t1", "t2"} {
		if _, err := d.Setup(ctx, id, 16, []string{"/l"}); err != nil {
			t.Fatal(err)
		}
	}
	// t3: the agent died while making its image.
	if err := os.WriteFile(filepath.Join(dir, "images", "t3.img.tmp"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	reaped, err := d.Reap(ctx, map[string]bool{"t2": true})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"t1", "t3"}, reaped); diff != "" {
		t.Errorf("reaped (-want +got):\n%s", diff)
	}
	left, err := d.Quota.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"t2"}, left); diff != "" {
		t.Errorf("left (-want +got):\n%s", diff)
	}
	if !sys.mounted[dir+"/rootfs/t2"] || sys.mounted[dir+"/rootfs/t1"] {
		t.Errorf("mounts after reap = %v", sys.mounted)
	}
}

func TestXFSQuota(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	sys := newFakeSystem()
	q := NewXFSQuota(dir, "/xfs", sys)

	d1, err := q.Create(ctx, "t1", 100)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&Disk{TaskID: "t1", Backend: BackendXFSQuota, Path: dir + "/mnt/t1"}, d1); diff != "" {
		t.Errorf("disk (-want +got):\n%s", diff)
	}
	id1, err := q.readProjectID("t1")
	if err != nil {
		t.Fatal(err)
	}
	if id1 < xfsProjectBase {
		t.Errorf("project id %d below %d", id1, xfsProjectBase)
	}
	// Repeating keeps the project; another task gets its own.
	if _, err := q.Create(ctx, "t1", 100); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Create(ctx, "t2", 50); err != nil {
		t.Fatal(err)
	}
	id2, _ := q.readProjectID("t2")
	if id2 == id1 {
		t.Errorf("t1 and t2 share project %d", id1)
	}
	p1, p2 := itoa(id1), itoa(id2)
	want := []string{
		"xfs_quota -x -c project -s -p D/mnt/t1 " + p1 + " /xfs",
		"xfs_quota -x -c limit -p bhard=100m " + p1 + " /xfs",
		"xfs_quota -x -c project -s -p D/mnt/t1 " + p1 + " /xfs",
		"xfs_quota -x -c limit -p bhard=100m " + p1 + " /xfs",
		"xfs_quota -x -c project -s -p D/mnt/t2 " + p2 + " /xfs",
		"xfs_quota -x -c limit -p bhard=50m " + p2 + " /xfs",
	}
	if diff := cmp.Diff(want, sys.take(dir)); diff != "" {
		t.Errorf("create calls (-want +got):\n%s", diff)
	}

	for range 2 {
		if err := q.Remove(ctx, "t1"); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff([]string{"xfs_quota -x -c limit -p bhard=0 " + p1 + " /xfs"}, sys.take(dir)); diff != "" {
		t.Errorf("remove calls (-want +got):\n%s", diff)
	}
	ids, err := q.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"t2"}, ids); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
}

func TestXFSQuotaCommandFails(t *testing.T) {
	dir := t.TempDir()
	sys := newFakeSystem()
	sys.fail["xfs_quota -x -c limit"] = errors.New("quota not on")
	q := NewXFSQuota(dir, "/xfs", sys)
	if _, err := q.Create(context.Background(), "t1", 10); err == nil {
		t.Fatal("Create succeeded, want the xfs_quota error")
	}
	// Whatever it left is listed, so Reap can find it.
	ids, _ := q.List(context.Background())
	if diff := cmp.Diff([]string{"t1"}, ids); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
}

func TestHasProjectQuota(t *testing.T) {
	for opts, want := range map[string]bool{
		"rw,relatime,attr2,inode64,logbufs=8,logbsize=32k,prjquota": true,
		"rw,pquota":            true,
		"rw,relatime,noquota":  false,
		"rw,usrquota,grpquota": false,
		"rw,pqnoenforce":       false,
	} {
		if got := hasProjectQuota(opts); got != want {
			t.Errorf("hasProjectQuota(%q) = %v, want %v", opts, got, want)
		}
	}
}

func TestDetectBackendHere(t *testing.T) {
	// This test bed has no quota support: whatever the filesystem, the
	// temp dir must fall back to loop-ext4.
	got, _, err := detectBackend(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if got != BackendLoopExt4 {
		t.Errorf("backend = %s, want %s", got, BackendLoopExt4)
	}
}

func itoa(v uint32) string { return strconv.FormatUint(uint64(v), 10) }

// busySystem answers "target is busy" to the first busy umounts.
type busySystem struct {
	*fakeSystem
	busy int
}

func (b *busySystem) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if name == "umount" && b.busy > 0 {
		b.busy--
		b.fakeSystem.calls = append(b.fakeSystem.calls, "umount (busy) "+args[len(args)-1])
		return nil, errors.New("umount: " + args[len(args)-1] + ": target is busy")
	}
	return b.fakeSystem.Run(ctx, name, args...)
}

func TestTeardownWaitsOutABusyMount(t *testing.T) {
	first := busyRetries.first
	busyRetries.first = time.Millisecond
	t.Cleanup(func() { busyRetries.first = first })
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		busy    int
		wantErr bool
	}{
		{"busy for a moment", 2, false},
		{"busy for good", 100, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			sys := &busySystem{fakeSystem: newFakeSystem()}
			d := newDisks(NewLoopQuota(dir, sys), dir, sys)
			if _, err := d.Setup(ctx, "t1", 16, []string{"/l"}); err != nil {
				t.Fatal(err)
			}
			sys.busy = tc.busy
			err := d.Teardown(ctx, "t1")
			if (err != nil) != tc.wantErr {
				t.Fatalf("Teardown = %v, wantErr %v", err, tc.wantErr)
			}
			if !tc.wantErr && (sys.mounted[dir+"/rootfs/t1"] || sys.mounted[dir+"/mnt/t1"]) {
				t.Errorf("still mounted: %v", sys.mounted)
			}
			if tc.wantErr && !sys.mounted[dir+"/rootfs/t1"] {
				t.Errorf("gave up but the rootfs is unmounted")
			}
		})
	}
}

func TestLoopMountFailureDetachesTheDevice(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	sys := newFakeSystem()
	sys.fail["mount -t ext4"] = errors.New("wrong fs type")
	q := NewLoopQuota(dir, sys)
	if _, err := q.Create(ctx, "t1", 16); err == nil {
		t.Fatal("Create succeeded, want the mount error")
	}
	calls := sys.take(dir)
	want := []string{"mount -t ext4 -o noatime /dev/loop3 D/mnt/t1", "losetup -d /dev/loop3"}
	if diff := cmp.Diff(want, calls[len(calls)-2:]); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
}
