package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/pkg/tasklog"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// isoEnv is a private containerd and registry with busybox, a Runtime
// writing plain log files, and a disk directory for quota'd root
// filesystems.
type isoEnv struct {
	image   string
	img     runtime.Image // image, pulled
	rt      *runtime.Runtime
	logDir  string
	diskDir string
	disks   *isolation.Disks
}

func newIsoEnv(t *testing.T) *isoEnv {
	t.Helper()
	ctd := testenv.StartContainerd(t)
	reg := testenv.StartRegistry(t)
	e := &isoEnv{image: testenv.PushBusybox(t, reg, "test/busybox", "iso"), logDir: t.TempDir()}
	rt, err := runtime.New(context.Background(), runtime.Config{
		Address: ctd.Address, PlainHTTPRegistries: []string{reg.Host}, LogDir: e.logDir,
	})
	if err != nil {
		t.Fatalf("runtime.New: %v", err)
	}
	t.Cleanup(func() { rt.Close() })
	e.rt = rt
	if e.img, err = rt.Pull(context.Background(), e.image); err != nil {
		t.Fatalf("pull: %v", err)
	}
	// Not under t.TempDir: its cleanup would run before ours can unmount.
	e.diskDir, err = os.MkdirTemp("", "titus-iso-disks-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if e.disks != nil {
			if _, err := e.disks.Reap(context.Background(), nil); err != nil {
				t.Errorf("reap disks: %v", err)
			}
		}
		if err := os.RemoveAll(e.diskDir); err != nil {
			t.Errorf("remove disk dir: %v", err)
		}
	})
	if e.disks, err = isolation.NewDisks(e.diskDir); err != nil {
		t.Fatal(err)
	}
	return e
}

func isoID(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// isoTask is a container of a task spec with the isolation options.
type isoTask struct {
	spec task.Spec
	cs   runtime.ContainerSpec
	exit <-chan runtime.ExitStatus
	pid  uint32
}

// start launches spec hardened by isolation.SpecOpts; with DiskMiB it runs
// on a quota'd root filesystem. Everything is torn down at cleanup.
func (e *isoEnv) start(t *testing.T, spec task.Spec, netnsPath string) *isoTask {
	t.Helper()
	return e.startWith(t, spec, netnsPath, isolation.Options{})
}

// startWith is start with the host's isolation options o.
func (e *isoEnv) startWith(t *testing.T, spec task.Spec, netnsPath string, o isolation.Options) *isoTask {
	t.Helper()
	ctx := context.Background()
	spec.Image = e.image
	spec.Normalize()
	it := &isoTask{spec: spec}
	it.cs = runtime.ContainerSpec{
		ID: spec.ID, Image: e.img, Args: spec.Args(), NetNSPath: netnsPath,
		SpecOpts: isolation.SpecOpts(&spec, o),
	}
	t.Cleanup(func() { e.teardown(t, it) })
	if spec.Resources.DiskMiB > 0 {
		lowers, err := e.rt.ImageView(ctx, spec.ID, e.img)
		if err != nil {
			t.Fatalf("image view: %v", err)
		}
		setup := e.disks.Setup
		if spec.Labels[isolation.LabelUserNS] == "true" {
			setup = e.disks.SetupUserNS
		}
		d, err := setup(ctx, spec.ID, spec.Resources.DiskMiB, lowers)
		if err != nil {
			t.Fatalf("disk setup: %v", err)
		}
		it.cs.RootfsPath = d.RootfsPath
		if d.UserNS != nil {
			it.cs.SpecOpts = append(it.cs.SpecOpts, isolation.WithUserNS(d.UserNS))
		}
	}
	if err := e.rt.Create(ctx, it.cs); err != nil {
		t.Fatalf("create %s: %v", spec.ID, err)
	}
	pid, err := e.rt.Start(ctx, spec.ID)
	if err != nil {
		t.Fatalf("start %s: %v", spec.ID, err)
	}
	it.pid = pid
	if it.exit, err = e.rt.Wait(ctx, spec.ID); err != nil {
		t.Fatalf("wait %s: %v", spec.ID, err)
	}
	return it
}

// teardown undoes start in the task runner's order: container, disk, view.
// Safe to repeat.
func (e *isoEnv) teardown(t *testing.T, it *isoTask) {
	t.Helper()
	ctx := context.Background()
	_ = e.rt.Kill(ctx, it.spec.ID, syscall.SIGKILL)
	if err := e.rt.Delete(ctx, it.spec.ID); err != nil {
		t.Errorf("delete %s: %v", it.spec.ID, err)
	}
	if it.spec.Resources.DiskMiB > 0 {
		if err := e.disks.Teardown(ctx, it.spec.ID); err != nil {
			t.Errorf("disk teardown %s: %v", it.spec.ID, err)
		}
		if err := e.rt.RemoveView(ctx, it.spec.ID); err != nil {
			t.Errorf("remove view %s: %v", it.spec.ID, err)
		}
	}
}

func (it *isoTask) wait(t *testing.T) runtime.ExitStatus {
	t.Helper()
	select {
	case s := <-it.exit:
		if s.Err != nil {
			t.Fatalf("wait %s: %v", it.spec.ID, s.Err)
		}
		return s
	case <-time.After(time.Minute):
		t.Fatalf("%s did not exit within a minute", it.spec.ID)
	}
	return runtime.ExitStatus{}
}

func (e *isoEnv) output(t *testing.T, id string) string {
	t.Helper()
	b, err := os.ReadFile(tasklog.Path(e.logDir, id))
	if err != nil {
		t.Fatalf("log of %s: %v", id, err)
	}
	return string(b)
}

func sh(script string) []string { return []string{"sh", "-c", script} }

func TestIsolation(t *testing.T) {
	begin(t)
	e := newIsoEnv(t)
	t.Run("Hardening", func(t *testing.T) { testHardening(t, e) })
	t.Run("InitReapsZombies", func(t *testing.T) { testInitReapsZombies(t, e) })
	t.Run("InitForwardsSIGTERM", func(t *testing.T) { testInitForwardsSIGTERM(t, e) })
	t.Run("DiskQuota", func(t *testing.T) { testDiskQuota(t, e) })
	t.Run("UserNamespacePerTask", func(t *testing.T) { testUserNS(t, e) })
	t.Run("BackendOnXFS", func(t *testing.T) { testBackendOnXFS(t, e) })
	t.Run("OOMKilled", func(t *testing.T) { testOOM(t, e) })
	t.Run("CPULimit", func(t *testing.T) { testCPULimit(t, e, 0) })
	t.Run("CPULimitWithBurst", func(t *testing.T) { testCPULimit(t, e, 500) })
	t.Run("CPUBurst", func(t *testing.T) { testCPUBurst(t, e) })
	t.Run("CgroupFiles", func(t *testing.T) { testCgroupFiles(t, e) })
	t.Run("ForkBomb", func(t *testing.T) { testForkBomb(t, e) })
	t.Run("DiskCyclesLeaveNothing", func(t *testing.T) { testDiskCycles(t, e) })
	t.Run("DiskReapAfterCrash", func(t *testing.T) { testDiskReap(t, e) })
}

// testHardening runs each forbidden action in a task; each must fail.
func testHardening(t *testing.T, e *isoEnv) {
	checks := []struct{ name, cmd, want string }{
		{"unshare user ns", "unshare -U true", "Operation not permitted"},
		{"unshare mount ns", "unshare -m true", "Operation not permitted"},
		{"mount", "mount -t tmpfs none /mnt", "permission denied"},
		{"raw socket", "ping -c 1 -W 1 127.0.0.1", "ermission denied"},
		{"packet socket", "arping -c 1 -w 1 -I lo 127.0.0.1", "Operation not permitted"},
		{"load module", "echo junk > /tmp/x.ko; insmod /tmp/x.ko", "Operation not permitted"},
		{"write /proc/sys", "echo 1 > /proc/sys/kernel/ns_last_pid", "Read-only file system"},
		{"write /sys", "mkdir /sys/fs/cgroup/x || echo 1 > /sys/kernel/profiling", "Read-only file system"},
		{"masked /proc/kcore", "test -s /proc/kcore && echo readable || echo empty", "empty"},
		{"mknod device", "mknod /tmp/sda b 8 0 && head -c1 /tmp/sda", "Operation not permitted"},
	}
	var script strings.Builder
	for i, c := range checks {
		fmt.Fprintf(&script, "echo '@@%d'; (%s) 2>&1; echo \"@@rc=$?\"\n", i, c.cmd)
	}
	script.WriteString("echo '@@status'; grep -E '^(NoNewPrivs|Seccomp|CapEff):' /proc/self/status; echo \"@@pid1 $(tr '\\0' ' ' </proc/1/cmdline)\"; cat /proc/self/oom_score_adj\n")
	spec := task.Spec{ID: isoID("harden"), Command: sh(script.String()), Resources: task.Resources{Pids: 64}}
	it := e.start(t, spec, "")
	if s := it.wait(t); s.Code != 0 {
		t.Errorf("exit = %+v, want 0", s)
	}
	out := e.output(t, spec.ID)
	sections := strings.Split(out, "@@")
	for i, c := range checks {
		var got string
		for _, s := range sections {
			if rest, ok := strings.CutPrefix(s, strconv.Itoa(i)+"\n"); ok {
				got = rest
			}
		}
		if !strings.Contains(got, c.want) {
			t.Errorf("%s (%s): output %q, want it refused with %q", c.name, c.cmd, got, c.want)
		}
	}
	for _, want := range []string{"NoNewPrivs:\t1", "Seccomp:\t2", "CapEff:\t00000000a80405fb", "pid1 " + isolation.InitMountPath + " -s -g -- sh -c", "\n500\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("task status lacks %q:\n%s", want, out[strings.Index(out, "@@status"):])
		}
	}
}

// testInitReapsZombies orphans a short-lived child while the task's own
// process (exec'd sleep) never waits: the orphan is reparented to PID 1,
// which must reap it. The same task without the init keeps the zombie,
// which shows the check can see one.
func testInitReapsZombies(t *testing.T, e *isoEnv) {
	const script = `sh -c 'sleep 0.2 & exit 0'; echo orphaned; exec sleep 60`
	for _, tc := range []struct {
		name       string
		opts       isolation.Options
		wantZombie bool
	}{
		{"with init", isolation.Options{}, false},
		{"without init", isolation.Options{NoInit: true}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := task.Spec{ID: isoID("zombie"), Command: sh(script), Resources: task.Resources{Pids: 16}}
			it := e.startWith(t, spec, "", tc.opts)
			eventually(t, "orphan made", func() bool { return strings.Contains(e.readOutput(spec.ID), "orphaned") })
			if tc.wantZombie {
				eventually(t, "a zombie without an init", func() bool { return len(zombieChildren(t, it.pid)) > 0 })
				return
			}
			// The orphan's sleep 0.2 has ended well within 2 s; with the init
			// it is reaped at once.
			time.Sleep(2 * time.Second)
			if zombies := zombieChildren(t, it.pid); len(zombies) > 0 {
				t.Errorf("zombie children of the task's PID 1 (host pid %d): %v", it.pid, zombies)
			}
		})
	}
}

// zombieChildren lists the host pids of zombies whose parent is ppid.
func zombieChildren(t *testing.T, ppid uint32) []string {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...; comm may hold spaces, so cut at the last ')'.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(b)[i+1:])
		if len(fields) >= 2 && fields[0] == "Z" && fields[1] == strconv.FormatUint(uint64(ppid), 10) {
			out = append(out, filepath.Base(filepath.Dir(f)))
		}
	}
	return out
}

// testInitForwardsSIGTERM: SIGTERM to the task reaches its process through
// the init. The process is an exec'd sleep with no handler: as PID 1 it
// would ignore SIGTERM, as the init's child it dies of it (128+15).
func testInitForwardsSIGTERM(t *testing.T, e *isoEnv) {
	spec := task.Spec{ID: isoID("sigterm"), Command: sh("echo ready; exec sleep 600")}
	it := e.start(t, spec, "")
	eventually(t, "task ready", func() bool { return strings.Contains(e.readOutput(spec.ID), "ready") })
	if err := e.rt.Kill(context.Background(), spec.ID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if s := it.wait(t); s.Code != 143 || s.OOMKilled {
		t.Errorf("exit = %+v, want 143 (the sleep killed by the forwarded SIGTERM)", s)
	}
}

func (e *isoEnv) readOutput(id string) string {
	b, _ := os.ReadFile(tasklog.Path(e.logDir, id))
	return string(b)
}

// testDiskQuota writes past a 32 MiB disk: ENOSPC inside, the host's
// filesystem holds no more than the quota.
func testDiskQuota(t *testing.T, e *isoEnv) {
	var before syscall.Statfs_t
	if err := syscall.Statfs(e.diskDir, &before); err != nil {
		t.Fatal(err)
	}
	spec := task.Spec{ID: isoID("disk"), Resources: task.Resources{DiskMiB: 32},
		Command: sh("dd if=/dev/zero of=/fill bs=1M count=100 2>&1; echo \"rc=$?\"; ls -l /fill; df -k / | tail -1")}
	it := e.start(t, spec, "")
	it.wait(t)
	out := e.output(t, spec.ID)
	if !strings.Contains(out, "No space left on device") || strings.Contains(out, "rc=0") {
		t.Errorf("dd past the quota: %q, want ENOSPC", out)
	}
	// What the task wrote, on the host: the loop backend's image file, or
	// the file itself in the task's directory under an XFS project quota.
	img := filepath.Join(e.diskDir, "images", spec.ID+".img")
	if e.disks.Backend() == isolation.BackendXFSQuota {
		img = filepath.Join(e.diskDir, "mnt", spec.ID, "upper", "fill")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(img, &st); err != nil {
		t.Fatalf("%s backend: %v", e.disks.Backend(), err)
	}
	if used := st.Blocks * 512; used > 34<<20 {
		t.Errorf("%s uses %d bytes on the host, want at most the 32 MiB quota", img, used)
	}
	if e.disks.Backend() == isolation.BackendLoopExt4 {
		assertDirectIOLoop(t, img)
	}
	var after syscall.Statfs_t
	if err := syscall.Statfs(e.diskDir, &after); err != nil {
		t.Fatal(err)
	}
	if grew := (int64(before.Bfree) - int64(after.Bfree)) * after.Bsize; grew > 40<<20 {
		t.Errorf("host filesystem lost %d bytes, want at most the quota", grew)
	}
	e.teardown(t, it)
	assertNoDiskLeftovers(t, e, spec.ID)
}

// assertDirectIOLoop checks that img's loop device does direct I/O in
// 4 KiB sectors: a buffered one caches every block twice and wrote at a
// fraction of the host's throughput.
func assertDirectIOLoop(t *testing.T, img string) {
	t.Helper()
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		if b, err := os.ReadFile(f); err != nil || strings.TrimSpace(string(b)) != img {
			continue
		}
		dev := filepath.Dir(filepath.Dir(f))
		dio, _ := os.ReadFile(filepath.Join(dev, "loop", "dio"))
		bs, _ := os.ReadFile(filepath.Join(dev, "queue", "logical_block_size"))
		if strings.TrimSpace(string(dio)) != "1" || strings.TrimSpace(string(bs)) != "4096" {
			t.Errorf("%s: dio %q, sector size %q; want direct I/O in 4096-byte sectors", dev, dio, bs)
		}
		return
	}
	t.Errorf("no loop device backed by %s", img)
}

// testBackendOnXFS puts the disk directory on a real XFS filesystem: with
// project quotas (where the kernel has them) the XFS backend is chosen,
// without (this test bed: no CONFIG_QUOTA) loop-ext4 is. Either way a task
// writing past its disk gets ENOSPC and nothing is left afterwards.
func testBackendOnXFS(t *testing.T, e *isoEnv) {
	dir, err := os.MkdirTemp("", "titus-iso-xfs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	img, mnt := filepath.Join(dir, "xfs.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][]string{{"truncate", "-s", "320M", img}, {"mkfs.xfs", "-q", img}} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", c, err, out)
		}
	}
	quota := exec.Command("mount", "-o", "loop,prjquota", img, mnt).Run() == nil
	if !quota {
		if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
			t.Fatalf("mount xfs: %v: %s", err, out)
		}
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount xfs: %v: %s", err, out)
		}
	})
	d, err := isolation.NewDisks(filepath.Join(mnt, "disks"))
	if err != nil {
		t.Fatal(err)
	}
	want := isolation.BackendLoopExt4
	if quota {
		want = isolation.BackendXFSQuota
	}
	t.Logf("xfs with project quotas: %v; backend %s", quota, d.Backend())
	if d.Backend() != want {
		t.Fatalf("backend on xfs (prjquota %v) = %s, want %s", quota, d.Backend(), want)
	}
	xe := *e
	xe.disks, xe.diskDir = d, filepath.Join(mnt, "disks")
	spec := task.Spec{ID: isoID("xfs"), Resources: task.Resources{DiskMiB: 16},
		Command: sh("dd if=/dev/zero of=/fill bs=1M count=40 2>&1; echo \"rc=$?\"")}
	it := xe.start(t, spec, "")
	it.wait(t)
	if out := xe.output(t, spec.ID); !strings.Contains(out, "No space left on device") || strings.Contains(out, "rc=0") {
		t.Errorf("dd past the %s quota: %q, want ENOSPC", d.Backend(), out)
	}
	xe.teardown(t, it)
	if left, err := d.Quota.List(context.Background()); err != nil || len(left) > 0 {
		t.Errorf("left on xfs after teardown: %v, %v", left, err)
	}
	assertNoDiskLeftovers(t, &xe, spec.ID)
}

// testUserNS runs two tasks that asked for a user namespace: each is root
// inside, owns its root filesystem, and is a different unprivileged user
// on the host; the files it writes belong to that user.
func testUserNS(t *testing.T, e *isoEnv) {
	const base, size = 1 << 24, 65536
	if err := e.disks.EnableUserNS(isolation.IDRanges{Base: base, Size: size, Count: 64}); err != nil {
		t.Fatal(err)
	}
	const script = `read -r inside host n </proc/self/uid_map; echo "map $inside $host $n"; echo "uid $(id -u)"; ` +
		`echo hi > /etc/owned && stat -c 'owner %n %u:%g' /bin/busybox /etc/owned; (unshare -m true) 2>&1; echo "unshare=$?"; echo done; exec sleep 60`
	hostRoots := map[uint64]string{}
	var its []*isoTask
	for i := range 2 {
		spec := task.Spec{ID: isoID(fmt.Sprintf("userns%d", i)), Command: sh(script),
			Labels: map[string]string{isolation.LabelUserNS: "true"}, Resources: task.Resources{DiskMiB: 32, Pids: 32}}
		it := e.start(t, spec, "")
		its = append(its, it)
		eventually(t, spec.ID+" done", func() bool { return strings.Contains(e.readOutput(spec.ID), "done") })
		out := e.output(t, spec.ID)
		var inside, host, n uint64
		if _, err := fmt.Sscanf(out[strings.Index(out, "map "):], "map %d %d %d", &inside, &host, &n); err != nil {
			t.Fatalf("%s: uid_map: %v\n%s", spec.ID, err, out)
		}
		if inside != 0 || host < base || (host-base)%size != 0 || n != size {
			t.Errorf("%s: uid_map 0→%d×%d (inside %d), want root mapped onto a range of %d from %d", spec.ID, host, n, inside, size, base)
		}
		if other, dup := hostRoots[host]; dup {
			t.Errorf("%s and %s share host root %d", other, spec.ID, host)
		}
		hostRoots[host] = spec.ID
		// The image's files (ID-mapped lower layers) and its own are root's.
		for _, want := range []string{"uid 0\n", "owner /bin/busybox 0:0\n", "owner /etc/owned 0:0\n", "unshare=1"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s: output lacks %q:\n%s", spec.ID, want, out)
			}
		}
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", it.pid))
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("\nUid:\t%d\t%d\t%d\t%d\n", host, host, host, host); !strings.Contains(string(status), want) {
			t.Errorf("%s: host view of its init lacks %q:\n%s", spec.ID, want, status)
		}
		var st syscall.Stat_t
		owned := filepath.Join(e.diskDir, "mnt", spec.ID, "upper", "etc", "owned")
		if err := syscall.Stat(owned, &st); err != nil || uint64(st.Uid) != host {
			t.Errorf("%s: %s owned by %d (%v), want host uid %d", spec.ID, owned, st.Uid, err, host)
		}
	}
	for _, it := range its {
		e.teardown(t, it)
		assertNoDiskLeftovers(t, e, it.spec.ID)
	}
}

func testOOM(t *testing.T, e *isoEnv) {
	spec := task.Spec{ID: isoID("oom"), Resources: task.Resources{MemoryMiB: 16},
		Command: sh(`x=0123456789abcdef; while true; do x="$x$x"; done`)}
	it := e.start(t, spec, "")
	if s := it.wait(t); !s.OOMKilled || s.Code != 137 {
		t.Errorf("exit = %+v, want OOM-killed with 137", s)
	}
}

// testCPULimit runs two busy loops at 500 millicores (with burst
// millicores of burst allowance) and reads the cgroup's
// CPU usage over a few seconds: at most half a core (+10%), and at least
// 0.45 unless the machine itself was too busy to give it that. A missing
// limit shows as ~2 cores in every window. Too little usage is blamed on
// the limit only when the task was throttled in most CFS periods of the
// window (it hit its quota and still got less); on a loaded machine (the
// VM lane runs beside this suite) it is simply not scheduled, not
// throttled, and the window is retried, then logged. A burst allowance
// (cpu.max.burst) must not raise the average: a task always busy never
// leaves quota unused to spend later (an allowance read as extra quota
// shows as a full core).
func testCPULimit(t *testing.T, e *isoEnv, burst int64) {
	spec := task.Spec{ID: isoID("cpu"), Resources: task.Resources{CPUMillicores: 500, CPUBurstMillicores: burst},
		Command: sh("while :; do :; done & while :; do :; done")}
	it := e.start(t, spec, "")
	usage := cpuUsageReader(t, it.pid)
	throttle := cpuThrottleReader(t, it.pid)
	time.Sleep(500 * time.Millisecond) // both loops running
	var got, throttled float64
	for range 3 {
		p0, n0 := throttle()
		u0, t0 := usage(), time.Now()
		time.Sleep(3 * time.Second)
		u1, t1 := usage(), time.Now()
		p1, n1 := throttle()
		got = float64(u1-u0) / float64(t1.Sub(t0).Nanoseconds())
		throttled = 0
		if p1 > p0 {
			throttled = float64(n1-n0) / float64(p1-p0)
		}
		if got > 0.55 {
			t.Fatalf("cpu usage %.3f cores, want at most 0.5 +10%% (the limit does not hold)", got)
		}
		if got >= 0.45 {
			return
		}
		t.Logf("cpu usage %.3f cores, throttled in %.0f%% of periods", got, throttled*100)
	}
	if throttled > 0.5 {
		t.Errorf("cpu usage %.3f cores while throttled in %.0f%% of periods: the limit holds the task below its 0.5 cores", got, throttled*100)
		return
	}
	t.Logf("cpu usage %.3f cores, below 0.45 but throttled in only %.0f%% of periods: the machine was busy, the limit is not to blame", got, throttled*100)
}

// testCPUBurst: a task with a burst allowance that works in spurts (about
// 0.2 s of CPU on each of two loops, then 0.3 s of sleep, in which its
// unused quota accrues up to the allowance) runs above its quota in some
// periods: the kernel counts them in cpu.stat's nr_bursts (v1 and v2,
// Linux 5.14+), which stays 0 for a task without an allowance.
func testCPUBurst(t *testing.T, e *isoEnv) {
	spurts := sh(`b() { while :; do i=0; while [ $i -lt 60000 ]; do i=$((i+1)); done; sleep 0.3; done; }; b & b & wait`)
	with := e.start(t, task.Spec{ID: isoID("burst"), Command: spurts, Resources: task.Resources{CPUMillicores: 500, CPUBurstMillicores: 500}}, "")
	without := e.start(t, task.Spec{ID: isoID("noburst"), Command: spurts, Resources: task.Resources{CPUMillicores: 500}}, "")
	withStat, withoutStat := cpuStatReader(t, with.pid), cpuStatReader(t, without.pid)
	deadline := time.Now().Add(testenv.Scaled(20 * time.Second))
	// Until the task with an allowance burst and the other ran at least
	// 20 CFS periods (its chances to burst, were it allowed to).
	for withStat()["nr_bursts"] == 0 || withoutStat()["nr_periods"] < 20 {
		if time.Now().After(deadline) {
			t.Fatalf("cpu.stat of the task with a burst allowance: %v, without: %v; want nr_bursts > 0 in the first, both running",
				withStat(), withoutStat())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := withoutStat()["nr_bursts"]; n != 0 {
		t.Errorf("the task without an allowance burst %d times", n)
	}
	t.Logf("with an allowance: %v; without: %v", withStat(), withoutStat())
}

// cpuStatReader returns a reader of pid's cgroup cpu.stat (v1 or v2) as
// numbers by name.
func cpuStatReader(t *testing.T, pid uint32) func() map[string]int64 {
	t.Helper()
	dir := ""
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		dir = cgroupDir(t, pid, "")
	} else {
		dir = cgroupDir(t, pid, "cpu")
	}
	return func() map[string]int64 {
		b, err := os.ReadFile(filepath.Join(dir, "cpu.stat"))
		if err != nil {
			t.Fatalf("cpu.stat: %v", err)
		}
		m := map[string]int64{}
		for line := range strings.Lines(string(b)) {
			k, v, _ := strings.Cut(strings.TrimSpace(line), " ")
			m[k], _ = strconv.ParseInt(v, 10, 64)
		}
		return m
	}
}

// cpuThrottleReader returns a reader of pid's cgroup CFS counters
// (nr_periods, nr_throttled from cpu.stat), on cgroup v1 or v2.
func cpuThrottleReader(t *testing.T, pid uint32) func() (periods, throttled int) {
	t.Helper()
	stat := cpuStatReader(t, pid)
	return func() (int, int) {
		m := stat()
		return int(m["nr_periods"]), int(m["nr_throttled"])
	}
}

// testCgroupFiles reads back what runc wrote into the tasks' cgroups: CFS
// quota and shares, a burst allowance, shares only for cpuBurst, cpuset
// pinning, memory without swap, the pids limit.
func testCgroupFiles(t *testing.T, e *isoEnv) {
	_, err := os.Stat("/sys/fs/cgroup/cgroup.controllers")
	v2 := err == nil
	for _, tc := range []struct {
		name   string
		res    task.Resources
		opts   isolation.Options
		v1, v2 map[string]string
	}{
		{
			name: "limited", res: task.Resources{CPUMillicores: 500, MemoryMiB: 64, Pids: 32},
			v1: map[string]string{
				"cpu/cpu.cfs_quota_us": "50000", "cpu/cpu.cfs_period_us": "100000", "cpu/cpu.shares": "512",
				"memory/memory.limit_in_bytes": "67108864", "memory/memory.memsw.limit_in_bytes": "67108864", "pids/pids.max": "32",
			},
			v2: map[string]string{"cpu.max": "50000 100000", "memory.max": "67108864", "memory.swap.max": "0", "pids.max": "32"},
		},
		{
			name: "burst allowance", res: task.Resources{CPUMillicores: 500, CPUBurstMillicores: 200},
			v1: map[string]string{"cpu/cpu.cfs_quota_us": "50000", "cpu/cpu.cfs_period_us": "100000", "cpu/cpu.cfs_burst_us": "20000"},
			v2: map[string]string{"cpu.max": "50000 100000", "cpu.max.burst": "20000"},
		},
		{
			name: "burst pinned to cpu 1", res: task.Resources{CPUMillicores: 500, CPUBurst: true}, opts: isolation.Options{CPUSet: "1"},
			v1: map[string]string{"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.shares": "512", "cpuset/cpuset.cpus": "1"},
			v2: map[string]string{"cpu.max": "max 100000", "cpuset.cpus": "1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := task.Spec{ID: isoID("cg"), Command: sh("sleep 60"), Resources: tc.res}
			it := e.startWith(t, spec, "", tc.opts)
			want := tc.v1
			if v2 {
				want = tc.v2
			}
			got := map[string]string{}
			for f := range want {
				controller, file, ok := strings.Cut(f, "/")
				if !ok {
					controller, file = "", f
				}
				b, err := os.ReadFile(filepath.Join(cgroupDir(t, it.pid, controller), file))
				if err != nil {
					t.Fatal(err)
				}
				got[f] = strings.TrimSpace(string(b))
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("cgroup files (-want +got):\n%s", diff)
			}
		})
	}
}

// cgroupDir is pid's cgroup directory of a v1 controller, or on v2 ("")
// its unified one.
func cgroupDir(t *testing.T, pid uint32, controller string) string {
	t.Helper()
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(cg)) {
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if controller == "" && parts[0] == "0" && parts[1] == "" {
			return filepath.Join("/sys/fs/cgroup", parts[2])
		}
		if controller != "" && slices.Contains(strings.Split(parts[1], ","), controller) {
			return filepath.Join("/sys/fs/cgroup", controller, parts[2])
		}
	}
	t.Fatalf("no %q cgroup for pid %d in %s", controller, pid, cg)
	return ""
}

// cpuUsageReader returns a reader of the cumulative CPU time (ns) of pid's
// cgroup, on cgroup v1 (cpuacct.usage) or v2 (cpu.stat usage_usec).
func cpuUsageReader(t *testing.T, pid uint32) func() int64 {
	t.Helper()
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	var file string
	for line := range strings.Lines(string(cg)) {
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if strings.Contains(","+parts[1]+",", ",cpuacct,") {
			file = filepath.Join("/sys/fs/cgroup/cpuacct", parts[2], "cpuacct.usage")
		} else if parts[0] == "0" && parts[1] == "" && file == "" {
			file = filepath.Join("/sys/fs/cgroup", parts[2], "cpu.stat")
		}
	}
	read := func() (int64, error) {
		b, err := os.ReadFile(file)
		if err != nil {
			return 0, err
		}
		s := string(b)
		if strings.HasSuffix(file, "cpu.stat") {
			for line := range strings.Lines(s) {
				if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
					us, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
					return us * 1000, err
				}
			}
			return 0, fmt.Errorf("no usage_usec in %s", file)
		}
		return strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	}
	if _, err := read(); err != nil {
		t.Fatalf("cpu usage of pid %d (%q): %v", pid, file, err)
	}
	return func() int64 {
		v, err := read()
		if err != nil {
			t.Fatalf("cpu usage: %v", err)
		}
		return v
	}
}

// testForkBomb: the pids limit holds and the runtime keeps answering.
func testForkBomb(t *testing.T, e *isoEnv) {
	const limit = 64
	spec := task.Spec{ID: isoID("bomb"), Resources: task.Resources{Pids: limit, CPUMillicores: 500},
		Command: sh(`f() { f | f & }; f; sleep 30`)}
	it := e.start(t, spec, "")
	pidsDir := pidsCgroup(t, it.pid)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// At least 3 s of bomb, and until the kernel has refused a fork (an
	// emulated guest takes longer to reach the limit).
	start, deadline := time.Now(), time.Now().Add(testenv.Scaled(3*time.Second))
	for time.Now().Before(deadline) {
		cur := readInt(t, filepath.Join(pidsDir, "pids.current"))
		if cur > limit {
			t.Fatalf("pids.current = %d above the limit %d", cur, limit)
		}
		if _, err := e.rt.Version(ctx); err != nil {
			t.Fatalf("runtime unresponsive during the fork bomb: %v", err)
		}
		ev, _ := os.ReadFile(filepath.Join(pidsDir, "pids.events"))
		if time.Since(start) > 3*time.Second && strings.HasPrefix(string(ev), "max ") && strings.TrimSpace(string(ev)) != "max 0" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	events, err := os.ReadFile(filepath.Join(pidsDir, "pids.events"))
	if err != nil || !strings.HasPrefix(string(events), "max ") || strings.TrimSpace(string(events)) == "max 0" {
		t.Errorf("pids.events = %q, %v; want forks refused at the limit", events, err)
	}
	if err := e.rt.Kill(ctx, spec.ID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	it.wait(t)
}

func pidsCgroup(t *testing.T, pid uint32) string {
	t.Helper()
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(cg)) {
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) == 3 && parts[1] == "pids" {
			return filepath.Join("/sys/fs/cgroup/pids", parts[2])
		}
		if len(parts) == 3 && parts[0] == "0" && parts[1] == "" {
			return filepath.Join("/sys/fs/cgroup", parts[2])
		}
	}
	t.Fatalf("no pids cgroup for %d in %s", pid, cg)
	return ""
}

func readInt(t *testing.T, path string) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func testDiskCycles(t *testing.T, e *isoEnv) {
	cycles := 50 // the issue asks for 50 launch + teardown cycles
	if inVMGuest {
		// 4 s a cycle in the emulated guest: 10 show the XFS backend's
		// project ids and quotas released and reused just as well.
		cycles = 10
	}
	var ids []string
	for i := range cycles {
		spec := task.Spec{ID: isoID(fmt.Sprintf("cycle%d", i)), Resources: task.Resources{DiskMiB: 64},
			Command: sh("echo hi > /file && cat /file")}
		it := e.start(t, spec, "")
		if s := it.wait(t); s.Code != 0 {
			t.Fatalf("cycle %d: exit %+v: %s", i, s, e.output(t, spec.ID))
		}
		e.teardown(t, it)
		ids = append(ids, spec.ID)
	}
	for _, id := range ids {
		assertNoDiskLeftovers(t, e, id)
	}
	if e.disks.Backend() == isolation.BackendXFSQuota {
		testProjectIDReused(t, e)
	}
}

// testProjectIDReused: on the XFS backend a task's project ID, once its
// disk is torn down, goes to the next task it falls to. Two task IDs whose
// hashes pick the same project ID (the allocation's: FNV-1a of the task ID
// mod 2^30, probed past IDs in use): the second gets the first's ID once
// the first has ended, the next one up had the first leaked its record.
func testProjectIDReused(t *testing.T, e *isoEnv) {
	seen := map[uint32]string{}
	prefix := isoID("proj")
	var a, b string
	for i := 0; a == ""; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		h := fnv.New32a()
		h.Write([]byte(id))
		k := h.Sum32() % (1 << 30)
		if o, ok := seen[k]; ok {
			a, b = o, id
		}
		seen[k] = id
	}
	project := func(id string) int64 { return readInt(t, filepath.Join(e.diskDir, "projects", id)) }
	run := func(id string) int64 {
		it := e.start(t, task.Spec{ID: id, Resources: task.Resources{DiskMiB: 16}, Command: sh("true")}, "")
		it.wait(t)
		p := project(id)
		e.teardown(t, it)
		assertNoDiskLeftovers(t, e, id)
		return p
	}
	pa := run(a)
	if pb := run(b); pb != pa {
		t.Errorf("task %s got project %d after %s (project %d) ended, want the same ID reused (%d would mean the first was not released)", b, pb, a, pa, pa+1)
	}
}

// testDiskReap: an agent that died with disks mounted; a new one reaps them.
func testDiskReap(t *testing.T, e *isoEnv) {
	ctx := context.Background()
	id, kept := isoID("crash"), isoID("kept")
	for _, x := range []string{id, kept} {
		lowers, err := e.rt.ImageView(ctx, x, e.img)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = e.rt.RemoveView(ctx, x) })
		if _, err := e.disks.Setup(ctx, x, 16, lowers); err != nil {
			t.Fatal(err)
		}
	}
	restarted, err := isolation.NewDisks(e.diskDir)
	if err != nil {
		t.Fatal(err)
	}
	reaped, err := restarted.Reap(ctx, map[string]bool{kept: true})
	if err != nil || len(reaped) != 1 || reaped[0] != id {
		t.Errorf("Reap = %v, %v; want [%s]", reaped, err, id)
	}
	assertNoDiskLeftovers(t, e, id)
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); !strings.Contains(string(mi), kept) {
		t.Errorf("kept disk %s was unmounted", kept)
	}
	if err := restarted.Teardown(ctx, kept); err != nil {
		t.Fatal(err)
	}
	assertNoDiskLeftovers(t, e, kept)
}

// assertNoDiskLeftovers checks that nothing of task id remains: no mount,
// loop device, file or cgroup.
func assertNoDiskLeftovers(t *testing.T, e *isoEnv, id string) {
	t.Helper()
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), id) {
		t.Errorf("mounts of %s left", id)
	}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		if b, _ := os.ReadFile(f); strings.Contains(string(b), id) {
			t.Errorf("loop device %s still backed by %s", filepath.Dir(filepath.Dir(f)), strings.TrimSpace(string(b)))
		}
	}
	// projects: the XFS backend's project ID record (released with the
	// disk, so the ID is free for another task).
	for _, sub := range []string{"images", "mnt", "rootfs", "projects"} {
		if left, _ := filepath.Glob(filepath.Join(e.diskDir, sub, id+"*")); len(left) > 0 {
			t.Errorf("files left: %v", left)
		}
	}
	cgs, _ := filepath.Glob("/sys/fs/cgroup/*/" + runtime.DefaultNamespace + "/" + id)
	if v2, err := os.Stat(filepath.Join("/sys/fs/cgroup", runtime.DefaultNamespace, id)); err == nil && v2.IsDir() {
		cgs = append(cgs, "v2")
	}
	if len(cgs) > 0 {
		t.Errorf("cgroups of %s left: %v", id, cgs)
	}
}

// TestIsolationBandwidth shapes a task's netns to 40 Mbps and measures
// both directions between two tasks (busybox nc) on either side of a host
// bridge, then the same with the limit cleared.
//
// In the VM lane's emulated guest a TCP stream between two tasks runs at
// only 2-6 Mbps when the host is loaded (measured 2026-12-03, load 19):
// there the task is shaped to 1 Mbps with transfers of 640 KiB (about 5 s),
// and only the upper bound is held to 15%, as a rate below the limit
// measures the host's load, not the shaping. The qdiscs' rate is read back
// exactly in both lanes.
func TestIsolationBandwidth(t *testing.T) {
	begin(t)
	e := newIsoEnv(t)
	mbps, size, low := int64(40), 16<<20, 0.85 // 16 MiB: ~3.4 s at 40 Mbps
	if inVMGuest {
		mbps, size, low = 1, 640<<10, 0.3
	}
	suffix := isoID("")[1:]
	br := "tbr" + suffix
	nsTask, nsPeer := "titus-bwt-"+suffix, "titus-bwp-"+suffix
	taskIP, peerIP := "198.18.77.1", "198.18.77.2"
	ipCmd(t, "link", "add", br, "type", "bridge")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", br).Run() })
	ipCmd(t, "link", "set", br, "up")
	for _, n := range []struct{ ns, host, ip string }{{nsTask, "tbt" + suffix, taskIP}, {nsPeer, "tbp" + suffix, peerIP}} {
		ipCmd(t, "netns", "add", n.ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n.ns).Run() })
		ipCmd(t, "link", "add", n.host, "type", "veth", "peer", "name", "eth0", "netns", n.ns)
		t.Cleanup(func() { _ = exec.Command("ip", "link", "del", n.host).Run() })
		ipCmd(t, "link", "set", n.host, "master", br, "up")
		ipCmd(t, "-n", n.ns, "addr", "add", n.ip+"/24", "dev", "eth0")
		ipCmd(t, "-n", n.ns, "link", "set", "eth0", "up")
		ipCmd(t, "-n", n.ns, "link", "set", "lo", "up")
	}
	nsPath := "/run/netns/" + nsTask
	bw := isolation.NewBandwidth()
	ctx := context.Background()

	// Nothing asked: no qdisc of ours anywhere.
	if err := bw.Limit(ctx, nsPath, "", 0); err != nil {
		t.Fatal(err)
	}
	if q := rootQdisc(t, "", "tbt"+suffix); q == "tbf" {
		t.Fatalf("a task without a limit got a tbf")
	}
	if err := bw.Limit(ctx, nsPath, "", mbps); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := bw.Clear(context.Background(), nsPath, ""); err != nil {
			t.Errorf("clear: %v", err)
		}
	})
	if q1, q2 := rootQdisc(t, "", "tbt"+suffix), rootQdisc(t, nsPath, "eth0"); q1 != "tbf" || q2 != "tbf" {
		t.Fatalf("root qdiscs = %s (host), %s (task); want tbf on both", q1, q2)
	}
	// The rate and the bucket as the kernel has them (the bucket is a time
	// at the rate; once it arrived as 2 ms and no frame fitted at 1 Mbps).
	want := isolation.TBFFor(mbps)
	for _, q := range []*netlink.Tbf{rootTBF(t, "", "tbt"+suffix), rootTBF(t, nsPath, "eth0")} {
		bucket := netlink.Xmitsize(q.Rate, q.Buffer)
		if q.Rate != want.Rate || q.Limit != want.Limit || bucket < want.Burst*99/100 || bucket > want.Burst*101/100 {
			t.Fatalf("tbf on link %d: rate %d B/s, bucket %d B, limit %d B; want %d, %d, %d", q.LinkIndex, q.Rate, bucket, q.Limit, want.Rate, want.Burst, want.Limit)
		}
	}

	check := func(dir string, bytesPerSec float64) {
		t.Helper()
		got := bytesPerSec * 8 / 1e6
		t.Logf("%s: %.1f Mbps", dir, got)
		if got < float64(mbps)*low || got > float64(mbps)*1.15 {
			t.Errorf("%s: %.1f Mbps, want %d Mbps, %.0f%% to 115%%", dir, got, mbps, low*100)
		}
	}
	peerPath := "/run/netns/" + nsPeer
	check("from task", ncTransfer(t, e, "bwout", nsPath, peerPath, peerIP, 5001, size))
	check("to task", ncTransfer(t, e, "bwin", peerPath, nsPath, taskIP, 5002, size))

	// The same transfer with the limit cleared is far faster: the
	// measurement does see a missing limit.
	if err := bw.Clear(ctx, nsPath, ""); err != nil {
		t.Fatal(err)
	}
	got := ncTransfer(t, e, "bwfree", nsPath, peerPath, peerIP, 5003, size) * 8 / 1e6
	t.Logf("from task, limit cleared: %.1f Mbps", got)
	if got < float64(mbps)*1.5 {
		t.Errorf("without the limit: %.1f Mbps, want well above %d", got, mbps)
	}
	if q1, q2 := rootQdisc(t, "", "tbt"+suffix), rootQdisc(t, nsPath, "eth0"); q1 == "tbf" || q2 == "tbf" {
		t.Errorf("root qdiscs after clearing = %s (host), %s (task); want no tbf", q1, q2)
	}
}

// ncTransfer sends n bytes with busybox nc from a task in the netns txNS
// to a task listening in rxNS at rxIP:port, and returns the rate in bytes
// per second seen on the receiver's eth0 (sampled every 20 ms, from the
// first byte to the last; frames with their headers, as tc counts them).
func ncTransfer(t *testing.T, e *isoEnv, name, txNS, rxNS, rxIP string, port, n int) float64 {
	t.Helper()
	// The listener's stdin never ends (nc would half-close at stdin's end):
	// nc ends when the sender's data does, and wc tells what came.
	rx := task.Spec{ID: isoID(name + "rx"), Command: sh(fmt.Sprintf("sleep 120 | nc -l -p %d | wc -c", port))}
	rit := e.start(t, rx, rxNS)
	eventually(t, rx.ID+" listening", func() bool { return listening(rit.pid, port) })
	h := netlinkAt(t, rxNS)
	defer h.Close()
	rxBytes := func() uint64 {
		l, err := h.LinkByName("eth0")
		if err != nil || l.Attrs().Statistics == nil {
			t.Fatalf("eth0 in %s: %v", rxNS, err)
		}
		return l.Attrs().Statistics.RxBytes
	}
	base := rxBytes()
	tx := task.Spec{ID: isoID(name + "tx"), Command: sh(fmt.Sprintf("dd if=/dev/zero bs=65536 count=%d 2>/dev/null | nc %s %d", n/65536, rxIP, port))}
	e.start(t, tx, txNS)
	const tick = 20 * time.Millisecond
	var first, last time.Time
	var got uint64
	for deadline := time.Now().Add(90 * time.Second); got < uint64(n); time.Sleep(tick) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d of %d bytes after 90 s", name, got, n)
		}
		got = rxBytes() - base
		if now := time.Now(); got > 0 && first.IsZero() {
			first = now
		} else if got >= uint64(n) {
			last = now
		}
	}
	eventually(t, rx.ID+" counted", func() bool { return strings.TrimSpace(e.readOutput(rx.ID)) != "" })
	if out := strings.TrimSpace(e.output(t, rx.ID)); out != strconv.Itoa(n) {
		t.Errorf("%s: the receiving task got %s bytes, want %d", name, out, n)
	}
	return float64(got) / max(last.Sub(first), tick).Seconds()
}

// listening reports whether pid's network namespace has a TCP listener on
// port.
func listening(pid uint32, port int) bool {
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(b)) {
			fields := strings.Fields(line)
			if len(fields) > 3 && strings.HasSuffix(fields[1], fmt.Sprintf(":%04X", port)) && fields[3] == "0A" {
				return true
			}
		}
	}
	return false
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %v: %v: %s", args, err, out)
	}
}

func rootQdisc(t *testing.T, nsPath, dev string) string {
	t.Helper()
	h := netlinkAt(t, nsPath)
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	qs, err := h.QdiscList(l)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_ROOT {
			return q.Type()
		}
	}
	return ""
}

// rootTBF is dev's root tbf qdisc in the netns at nsPath ("" = this one).
func rootTBF(t *testing.T, nsPath, dev string) *netlink.Tbf {
	t.Helper()
	h := netlinkAt(t, nsPath)
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	qs, err := h.QdiscList(l)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		if tbf, ok := q.(*netlink.Tbf); ok && q.Attrs().Parent == netlink.HANDLE_ROOT {
			return tbf
		}
	}
	t.Fatalf("no root tbf on %s in %q", dev, nsPath)
	return nil
}

func netlinkAt(t *testing.T, nsPath string) *netlink.Handle {
	t.Helper()
	if nsPath == "" {
		h, err := netlink.NewHandle()
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestAgentUserNamespaceAndHostPaths: through the agent, a task labelled
// for a user namespace runs as root inside and an unprivileged range
// outside; a task without the label keeps the host's IDs; asking without a
// disk is refused as an invalid spec. Host paths: only the allowlisted one
// is mounted (read-only), anything else is refused at launch.
func TestAgentUserNamespaceAndHostPaths(t *testing.T) {
	begin(t)
	parent := userNSDir(t)
	shared := filepath.Join(parent, "shared")
	if err := os.MkdirAll(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(shared, "hello"), []byte("from-the-host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newAgentEnvConfig(t, "isolation:\n  diskDir: "+filepath.Join(parent, "disks")+"\n  allowedHostPaths: ["+shared+"]\n")
	label := map[string]string{isolation.LabelUserNS: "true"}

	mounted := e.spec("hostpath", "sh", "-c", "cat /data/hello; echo x > /data/hello || echo read-only")
	mounted.Labels = map[string]string{isolation.LabelHostMounts: shared + ":/data"}
	refused := e.spec("etc", "true")
	refused.Labels = map[string]string{isolation.LabelHostMounts: "/etc:/data"}
	device := e.spec("dev", "true")
	device.Labels = map[string]string{isolation.LabelDevices: "/dev/sda"}
	e.launch(mounted)
	// Refused at the door (InvalidArgument), before anything is made for them.
	for _, s := range []*agentv1.TaskSpec{refused, device} {
		if _, err := e.client.LaunchTask(e.ctx(), &agentv1.LaunchTaskRequest{Spec: s}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "not allowed") {
			t.Errorf("launch %s: %v, want InvalidArgument, not allowed", s.GetId(), err)
		}
	}
	wantState(t, e.waitFinal("hostpath"), stFinished, task.ReasonCompleted, 0)
	if out, _ := e.cli("task", "logs", "hostpath"); !strings.Contains(out, "from-the-host") || !strings.Contains(out, "read-only") {
		t.Errorf("allowlisted host path: %q, want its file readable and not writable", out)
	}

	ns := e.spec("ns", "sh", "-c", "cat /proc/self/uid_map; echo uid=$(id -u); echo x > /etc/mine && stat -c owner=%u /etc/mine")
	ns.Labels, ns.Resources.DiskMib = label, 32
	plain := e.spec("plain", "cat", "/proc/self/uid_map")
	nodisk := e.spec("nodisk", "true")
	nodisk.Labels = label
	for _, s := range []*agentv1.TaskSpec{ns, plain} {
		e.launch(s)
	}
	// A user namespace without a disk quota is refused at the door too.
	if _, err := e.client.LaunchTask(e.ctx(), &agentv1.LaunchTaskRequest{Spec: nodisk}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "needs a disk quota") {
		t.Errorf("user namespace without a disk: %v, want InvalidArgument, needs a disk quota", err)
	}
	wantState(t, e.waitFinal("ns"), stFinished, task.ReasonCompleted, 0)
	wantState(t, e.waitFinal("plain"), stFinished, task.ReasonCompleted, 0)
	out, err := e.cli("task", "logs", "ns")
	if err != nil {
		t.Fatalf("logs: %v %s", err, out)
	}
	f := strings.Fields(out)
	if len(f) < 3 || f[0] != "0" || f[1] == "0" || f[2] != "65536" || !strings.Contains(out, "uid=0\n") || !strings.Contains(out, "owner=0\n") {
		t.Errorf("task in its user namespace printed %q, want root mapped onto an unprivileged range of 65536 and owning its files", out)
	}
	if out, err := e.cli("task", "logs", "plain"); err != nil || !strings.HasPrefix(strings.Join(strings.Fields(out), " "), "0 0 4294967295") {
		t.Errorf("a task that asked for nothing: uid_map %q (%v), want the host's", out, err)
	}
	e.assertNoLeftovers()
}

// TestAgentForkBombStaysResponsive: a fork bomb launched through the agent
// is held at its pids limit while the agent keeps answering, the host
// still forks, the agent launches and runs a neighbour to completion, and
// kills the bomb. The VM lane runs it too (cgroup v2, systemd scopes).
func TestAgentForkBombStaysResponsive(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	const limit = 64
	// Each bomb process forks two more and then sleeps: the bomb grows
	// exponentially to its limit and stays there. (The classic f|f& died
	// out by chance: at the limit every process's next fork failed at once,
	// on runc 1.1.5 and 1.5.3 alike.) The init's two forks come first, so a
	// refused fork never ends the task.
	bomb := e.spec("bomb", "sh", "-c", "f() { f & f & exec sleep 600; }; f")
	bomb.Resources.Pids, bomb.Resources.CpuMillicores = limit, 500
	bomb.KillGracePeriodSeconds = 1
	e.launch(bomb)
	pid := e.waitState("bomb", stRunning, 30*time.Second).GetPid()
	pidsDir := pidsCgroup(t, pid)
	eventually(t, "the bomb at its limit", func() bool { return readInt(t, filepath.Join(pidsDir, "pids.current")) >= limit-4 })

	e.launch(e.spec("neighbour", "echo", "still-here"))
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, herr := e.client.Health(ctx, &agentv1.HealthRequest{})
		_, lerr := e.client.ListTasks(ctx, &agentv1.ListTasksRequest{})
		cancel()
		if herr != nil || lerr != nil {
			t.Fatalf("agent unresponsive during the fork bomb: health %v, list %v", herr, lerr)
		}
		// The host still forks: the bomb's processes count against its
		// own pids.max only.
		if out, err := exec.Command("sh", "-c", "echo host-forks").CombinedOutput(); err != nil || string(out) != "host-forks\n" {
			t.Fatalf("the host cannot fork during the fork bomb: %v %q", err, out)
		}
		if cur := readInt(t, filepath.Join(pidsDir, "pids.current")); cur > limit {
			t.Fatalf("pids.current = %d above the limit %d", cur, limit)
		}
	}
	wantState(t, e.waitFinal("neighbour"), stFinished, task.ReasonCompleted, 0)
	if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: "bomb"}); err != nil {
		t.Fatal(err)
	}
	if tk := e.waitFinal("bomb"); tk.GetState() != stKilled {
		t.Errorf("bomb = %s/%s, want Killed", tk.GetState(), tk.GetReason())
	}
	e.assertNoLeftovers()
}

// newUserNSNetAgent is an agent with a local network whose netns and disk
// directories are under parent, where a task's unprivileged root can reach
// them.
func newUserNSNetAgent(t *testing.T) (e *agentEnv, parent string) {
	t.Helper()
	parent = userNSDir(t)
	ln := newLocalNet(t)
	cfg := strings.ReplaceAll(ln.peered(), "{{DIR}}/netns", filepath.Join(parent, "netns")) +
		"isolation:\n  diskDir: " + filepath.Join(parent, "disks") + "\n"
	return newAgentEnvConfig(t, cfg), parent
}

// TestAgentUserNamespaceWithNetwork: a task in its own user namespace also
// gets its VPC address, resolv.conf and hosts (bind mounts its root must
// reach) and answers on its address.
func TestAgentUserNamespaceWithNetwork(t *testing.T) {
	begin(t)
	e, _ := newUserNSNetAgent(t)
	s := e.spec("web", "sh", "-c", "cat /proc/self/uid_map /etc/resolv.conf; mkdir -p /www && echo hello-from-userns > /www/index.html && exec httpd -f -p 8080 -h /www")
	s.Labels, s.Resources.DiskMib = map[string]string{isolation.LabelUserNS: "true"}, 32
	e.launch(s)
	e.launch(e.spec("client", "sleep", "1000"))
	tk := e.waitState("web", stRunning, 30*time.Second)
	e.waitState("client", stRunning, 30*time.Second)
	ip := tk.GetNetwork().GetIpv4()
	// The task's own view; an exec into such a task is
	// TestExecUserNamespaceTask's.
	e.waitLog("web", "nameserver")
	if out, _ := e.cli("task", "logs", "web"); strings.HasPrefix(strings.Join(strings.Fields(out), " "), "0 0 ") || !strings.Contains(out, "nameserver 198.18.0.2") {
		t.Fatalf("in the task: %q, want a user namespace and the agent's resolv.conf", out)
	}
	var body string
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		out, code := httpGet(e, "client", ip)
		if code == 0 {
			body = out
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("task at %s unreachable from its neighbour: %d %s", ip, code, out)
		}
	}
	if !strings.Contains(body, "hello-from-userns") {
		t.Errorf("task answered %q", body)
	}
	for _, id := range []string{"web", "client"} {
		if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: id, GracePeriodSeconds: 1}); err != nil {
			t.Fatal(err)
		}
		e.waitFinal(id)
	}
	e.assertNoLeftovers()
}

// userNSDir is a directory for a user-namespace test's disks and netns:
// searchable (not listable) by the tasks' unprivileged roots, and removed
// with whatever is still mounted or looped in it.
func userNSDir(t *testing.T) string {
	t.Helper()
	parent, err := os.MkdirTemp("", "titus-userns-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testenv.RemoveDir(parent) })
	if err := os.Chmod(parent, 0o711); err != nil {
		t.Fatal(err)
	}
	return parent
}

// TestAgentCPUBurstAllowance: through the agent's API a task gets the CFS
// burst allowance it asks for (read back from cpu.cfs_burst_us or
// cpu.max.burst), and a tenant asking more than its quota, or an
// allowance on top of no quota (cpu_burst), or, on a host that requires a
// quota (isolation.requireCPUQuota), no quota at all, is refused naming
// the field, with nothing recorded.
func TestAgentCPUBurstAllowance(t *testing.T) {
	begin(t)
	e := newAgentEnvConfig(t, "isolation:\n  requireCPUQuota: true\n")
	for _, tc := range []struct {
		name             string
		cpu, burst       int64
		noQuota          bool
		refusedWithField string
	}{
		{name: "above-quota", cpu: 500, burst: 501, refusedWithField: "resources.cpu_burst_millicores"},
		{name: "a-core-over-max", cpu: 1000, burst: task.MaxCPUMillicores, refusedWithField: "resources.cpu_burst_millicores"},
		{name: "negative", cpu: 500, burst: -1, refusedWithField: "resources.cpu_burst_millicores"},
		{name: "without-quota", cpu: 500, burst: 100, noQuota: true, refusedWithField: "resources.cpu_burst_millicores"},
		{name: "no-quota-on-a-quota-host", cpu: 500, noQuota: true, refusedWithField: "resources.cpu_burst"},
	} {
		s := e.spec("burst-"+tc.name, "true")
		s.Resources.CpuMillicores, s.Resources.CpuBurstMillicores, s.Resources.CpuBurst = tc.cpu, tc.burst, tc.noQuota
		_, err := e.client.LaunchTask(e.ctx(), &agentv1.LaunchTaskRequest{Spec: s})
		if err == nil || !strings.Contains(err.Error(), tc.refusedWithField) || !strings.Contains(err.Error(), "InvalidArgument") {
			t.Errorf("%s: %v, want InvalidArgument naming %s", tc.name, err, tc.refusedWithField)
		}
		if _, err := e.client.GetTask(e.ctx(), &agentv1.GetTaskRequest{Id: s.Id}); err == nil {
			t.Errorf("%s: the refused task was recorded", tc.name)
		}
	}
	s := e.spec("burst-ok", "sleep", "600")
	s.Resources.CpuMillicores, s.Resources.CpuBurstMillicores = 500, 500
	s.KillGracePeriodSeconds = 1
	e.launch(s)
	pid := e.waitState("burst-ok", stRunning, 60*time.Second).GetPid()
	want := map[string]string{"cpu/cpu.cfs_quota_us": "50000", "cpu/cpu.cfs_burst_us": "50000"}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		want = map[string]string{"cpu.max": "50000 100000", "cpu.max.burst": "50000"}
	}
	got := map[string]string{}
	for f := range want {
		controller, file, ok := strings.Cut(f, "/")
		if !ok {
			controller, file = "", f
		}
		b, err := os.ReadFile(filepath.Join(cgroupDir(t, pid, controller), file))
		if err != nil {
			t.Fatal(err)
		}
		got[f] = strings.TrimSpace(string(b))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("the task's cgroup (-want +got):\n%s", diff)
	}
	if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: "burst-ok"}); err != nil {
		t.Fatal(err)
	}
	e.waitFinal("burst-ok")
	e.assertNoLeftovers()
}
