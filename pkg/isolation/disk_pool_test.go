package isolation

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/refill"
)

// recStats records a pool's takes and ready counts.
type recStats struct {
	mu     sync.Mutex
	events []string
}

func (r *recStats) PoolTake(pool string, hit bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf("take %s hit=%t", pool, hit))
}

func (r *recStats) PoolReady(pool string, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf("ready %s %d", pool, n))
}

func (r *recStats) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.events
	r.events = nil
	return out
}

// newTestDiskPool is loop disks in dir with a pool of sizes whose images
// are named <size>-00000001.img, ...; nothing runs in the background.
func newTestDiskPool(t *testing.T, sizes ...DiskPoolSize) (*Disks, *LoopQuota, *DiskPool, *fakeSystem, *recStats, string) {
	t.Helper()
	dir := t.TempDir()
	sys := newFakeSystem()
	q := NewLoopQuota(dir, sys)
	st := &recStats{}
	p, err := q.EnablePool(DiskPoolConfig{Sizes: sizes, Stats: st})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	p.random = func() (string, error) { n++; return fmt.Sprintf("%08x", n), nil }
	st.take()
	return newDisks(q, dir, sys), q, p, sys, st, dir
}

func poolFiles(t *testing.T, dir string) []string {
	t.Helper()
	names, err := listDir(filepath.Join(dir, "pool"))
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func TestDiskPoolFill(t *testing.T) {
	_, _, p, sys, st, dir := newTestDiskPool(t, DiskPoolSize{SizeMiB: 64, Count: 2}, DiskPoolSize{SizeMiB: 128, Count: 1})
	if !p.fill(context.Background()) {
		t.Fatal("fill failed")
	}
	mkfs := "mkfs.ext4 -q -F -b 4096 -m 0 -O ^has_journal -E lazy_itable_init=1,lazy_journal_init=1,nodiscard "
	var want []string
	for _, n := range []string{"64-00000001", "64-00000002", "128-00000003"} {
		want = append(want, mkfs+"D/pool/"+n+".img.tmp",
			"losetup --find --show --direct-io=on --sector-size 4096 D/pool/"+n+".img",
			"mount -t ext4 -o noatime /dev/loop3 D/pool/"+n+".mnt")
	}
	if diff := cmp.Diff(want, sys.take(dir)); diff != "" {
		t.Errorf("fill (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"128-00000003.img", "128-00000003.mnt", "64-00000001.img", "64-00000001.mnt", "64-00000002.img", "64-00000002.mnt"}, poolFiles(t, dir)); diff != "" {
		t.Errorf("pool files (-want +got):\n%s", diff)
	}
	if st, err := os.Stat(filepath.Join(dir, "pool", "128-00000003.img")); err != nil || st.Size() != 128<<20 {
		t.Errorf("pooled image = %v, %v; want a 128 MiB sparse file", st, err)
	}
	if diff := cmp.Diff([]string{"ready disk-64MiB 1", "ready disk-64MiB 2", "ready disk-128MiB 1"}, st.take()); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
	p.fill(context.Background()) // full: nothing more
	if calls := sys.take(dir); len(calls) != 0 {
		t.Errorf("fill of a full pool: %v", calls)
	}
}

func TestDiskPoolSetupTakesAPooledImage(t *testing.T) {
	ctx := context.Background()
	d, _, p, sys, st, dir := newTestDiskPool(t, DiskPoolSize{SizeMiB: 64, Count: 1})
	p.fill(ctx)
	sys.take(dir)
	st.take()
	disk, err := d.Setup(ctx, "t1", 64, []string{"/l/1"})
	if err != nil {
		t.Fatal(err)
	}
	// No mkfs, loop attach or ext4 mount on the launch's path: the
	// pooled image is the task's now, its mount moved to the task's place.
	want := []string{
		"mount --move D/pool/64-00000001.mnt D/mnt/t1",
		"mount -t overlay -o lowerdir=/l/1,upperdir=D/mnt/t1/upper,workdir=D/mnt/t1/work overlay D/rootfs/t1",
	}
	if diff := cmp.Diff(want, sys.take(dir)); diff != "" {
		t.Errorf("setup (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"take disk hit=true", "ready disk-64MiB 0"}, st.take()); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
	if st, err := os.Stat(disk.ImagePath); err != nil || st.Size() != 64<<20 {
		t.Errorf("task image = %v, %v", st, err)
	}
	if left := poolFiles(t, dir); len(left) != 0 {
		t.Errorf("pool still holds %v", left)
	}
	if m, _ := sys.Mounted(disk.Path); !m {
		t.Errorf("task disk %s not mounted", disk.Path)
	}

	// Teardown deletes the image: it never goes back to the pool.
	p.fill(ctx)
	if err := d.Teardown(ctx, "t1"); err != nil {
		t.Fatal(err)
	}
	if exists(t, disk.ImagePath) || p.Ready(64) != 1 {
		t.Fatalf("after teardown: image left %t, pool %d", exists(t, disk.ImagePath), p.Ready(64))
	}
	sys.take(dir)

	// Another size formats its own and is neither a hit nor a miss; an
	// empty pool's size is a miss and formats its own.
	st.take()
	if _, err := d.Setup(ctx, "t2", 32, []string{"/l/1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Setup(ctx, "t3", 64, []string{"/l/1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Setup(ctx, "t4", 64, []string{"/l/1"}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"take disk hit=true", "ready disk-64MiB 0", "take disk hit=false"}, st.take()); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
	calls := sys.take(dir)
	mkfs := 0
	for _, c := range calls {
		if len(c) > 9 && c[:9] == "mkfs.ext4" {
			mkfs++
		}
	}
	if mkfs != 2 {
		t.Errorf("want mkfs for t2 and t4 only: %v", calls)
	}

	// Again for t3 (a restarted agent repeating prestart): its image
	// stays, nothing is taken.
	p.fill(ctx)
	sys.take(dir)
	if _, err := d.Setup(ctx, "t3", 64, []string{"/l/1"}); err != nil {
		t.Fatal(err)
	}
	if p.Ready(64) != 1 {
		t.Fatal("repeated setup took from the pool")
	}
}

func TestDiskPoolCloseAndPurge(t *testing.T) {
	ctx := context.Background()
	_, q, p, _, _, dir := newTestDiskPool(t, DiskPoolSize{SizeMiB: 64, Count: 2})
	p.Start(ctx)
	p.refill.Kick()
	for p.Ready(64) < 2 {
		time.Sleep(time.Millisecond)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if left := poolFiles(t, dir); len(left) != 0 {
		t.Fatalf("close left %v", left)
	}
	if _, ok := p.take(64); ok {
		t.Fatal("a closed pool handed out an image")
	}

	// What a killed agent left (a mounted disk, one attached but not
	// mounted, a half-formatted image) goes at the next start, the pool
	// on or off: unmounted first, then detached, then removed.
	sys := q.sys.(*fakeSystem)
	sys.take(dir)
	for _, n := range []string{"64-0000000a.img", "64-0000000b.img.tmp", "64-0000000c.img"} {
		if err := os.WriteFile(filepath.Join(dir, "pool", n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "pool", "64-0000000a.mnt"), 0o700); err != nil {
		t.Fatal(err)
	}
	sys.mounted[filepath.Join(dir, "pool", "64-0000000a.mnt")] = true
	sys.outputs["losetup -j "+filepath.Join(dir, "pool", "64-0000000a.img")] = "/dev/loop7: []: (" + filepath.Join(dir, "pool", "64-0000000a.img") + ")\n"
	sys.outputs["losetup -j "+filepath.Join(dir, "pool", "64-0000000c.img")] = "/dev/loop8: []: (" + filepath.Join(dir, "pool", "64-0000000c.img") + ")\n"
	removed, err := q.PurgePool(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"64-0000000a.mnt", "64-0000000a.img", "64-0000000b.img.tmp", "64-0000000c.img"}, removed); diff != "" {
		t.Errorf("purged (-want +got):\n%s", diff)
	}
	wantCalls := []string{
		"umount D/pool/64-0000000a.mnt",
		"losetup -j D/pool/64-0000000a.img", "losetup -d /dev/loop7",
		"losetup -j D/pool/64-0000000c.img", "losetup -d /dev/loop8",
	}
	if diff := cmp.Diff(wantCalls, sys.take(dir)); diff != "" {
		t.Errorf("purge (-want +got):\n%s", diff)
	}
	if left := poolFiles(t, dir); len(left) != 0 {
		t.Fatalf("purge left %v", left)
	}
	// The task reaper never takes the pool for a task.
	if ids, err := q.List(ctx); err != nil || len(ids) != 0 {
		t.Fatalf("List = %v, %v", ids, err)
	}
}

// A pooled disk whose mount cannot be moved to the task is unmounted,
// detached and deleted, and the task gets a freshly formatted one.
func TestDiskPoolHandOverFailure(t *testing.T) {
	ctx := context.Background()
	d, _, p, sys, _, dir := newTestDiskPool(t, DiskPoolSize{SizeMiB: 64, Count: 1})
	p.fill(ctx)
	sys.take(dir)
	sys.fail["mount --move"] = fmt.Errorf("invalid argument")
	sys.outputs["losetup -j "+filepath.Join(dir, "images", "t1.img")] = "/dev/loop3: []: (" + filepath.Join(dir, "images", "t1.img") + ")\n"
	if _, err := d.Setup(ctx, "t1", 64, []string{"/l/1"}); err != nil {
		t.Fatal(err)
	}
	delete(sys.outputs, "losetup -j "+filepath.Join(dir, "images", "t1.img"))
	mkfs := "mkfs.ext4 -q -F -b 4096 -m 0 -O ^has_journal -E lazy_itable_init=1,lazy_journal_init=1,nodiscard "
	want := []string{
		"mount --move D/pool/64-00000001.mnt D/mnt/t1",
		"umount D/pool/64-00000001.mnt",
		"losetup -j D/images/t1.img", "losetup -d /dev/loop3",
		mkfs + "D/images/t1.img.tmp",
		"losetup --find --show --direct-io=on --sector-size 4096 D/images/t1.img",
		"mount -t ext4 -o noatime /dev/loop3 D/mnt/t1",
		"mount -t overlay -o lowerdir=/l/1,upperdir=D/mnt/t1/upper,workdir=D/mnt/t1/work overlay D/rootfs/t1",
	}
	if diff := cmp.Diff(want, sys.take(dir)); diff != "" {
		t.Errorf("setup (-want +got):\n%s", diff)
	}
	if left := poolFiles(t, dir); len(left) != 0 {
		t.Errorf("pool still holds %v", left)
	}
}

func TestDiskPoolFormatFailure(t *testing.T) {
	_, _, p, sys, _, dir := newTestDiskPool(t, DiskPoolSize{SizeMiB: 64, Count: 1})
	sys.fail["mkfs.ext4"] = fmt.Errorf("no space")
	if p.fill(context.Background()) {
		t.Fatal("fill reported success")
	}
	if left := poolFiles(t, dir); len(left) != 0 || p.Ready(64) != 0 {
		t.Fatalf("a half-made image is in the pool: %v", left)
	}
}

func TestDiskPoolConfig(t *testing.T) {
	q := NewLoopQuota(t.TempDir(), newFakeSystem())
	for _, sizes := range [][]DiskPoolSize{nil, {{SizeMiB: 0, Count: 1}}, {{SizeMiB: 64, Count: 0}}, {{SizeMiB: 64, Count: 1}, {SizeMiB: 64, Count: 2}}} {
		if _, err := q.EnablePool(DiskPoolConfig{Sizes: sizes}); err == nil {
			t.Errorf("EnablePool(%v) accepted", sizes)
		}
	}
}

// While a launch is on its critical path the refill formats nothing (it
// waits for the launch, here until its context ends); once the launch is
// done it fills.
func TestDiskPoolFillYieldsToLaunches(t *testing.T) {
	_, _, p, sys, _, dir := newTestDiskPool(t, DiskPoolSize{SizeMiB: 64, Count: 1})
	gate := &refill.Gate{}
	p.refill.YieldTo(gate)
	leave := gate.Enter()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	p.fill(ctx)
	if calls := sys.take(dir); len(calls) != 0 {
		t.Errorf("fill during a launch: %v", calls)
	}
	leave()
	if !p.fill(context.Background()) || p.Ready(64) != 1 {
		t.Errorf("fill after the launch: %d ready, want 1", p.Ready(64))
	}
}
