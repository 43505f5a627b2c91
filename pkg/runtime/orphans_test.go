package runtime

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/moby/sys/mountinfo"
)

func TestParseShimCmdline(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want shimProc
		ok   bool
	}{
		{"daemon", []string{"/usr/bin/containerd-shim-runc-v2", "-namespace", "titus", "-id", "t1", "-address", "/run/c.sock"},
			shimProc{ID: "t1", Namespace: "titus", Addr: "/run/c.sock"}, true},
		{"debug, other order, = form", []string{"containerd-shim-runc-v2", "--address=/run/c.sock", "-debug", "-id", "t1", "-namespace=titus"},
			shimProc{ID: "t1", Namespace: "titus", Addr: "/run/c.sock"}, true},
		{"start command", []string{"containerd-shim-runc-v2", "-namespace", "titus", "-address", "/run/c.sock", "-publish-binary", "/bin/c", "-id", "t1", "start"}, shimProc{}, false},
		{"not a shim", []string{"/bin/sleep", "-namespace", "titus", "-id", "t1", "-address", "/run/c.sock"}, shimProc{}, false},
		{"no id", []string{"containerd-shim-runc-v2", "-namespace", "titus", "-address", "/run/c.sock"}, shimProc{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parseShimCmdline([]byte(strings.Join(tt.args, "\x00") + "\x00"))
			if ok != tt.ok {
				t.Fatalf("ok = %v, want %v", ok, tt.ok)
			}
			got.cmdline = nil
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(shimProc{})); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestSameAddress(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"/run/c.sock", "unix:///run/c.sock", true},
		{"/run//c.sock", "/run/c.sock", true},
		{"/run/c.sock", "/run/c.sock2", false},
	} {
		if got := sameAddress(tc.a, tc.b); got != tc.want {
			t.Errorf("sameAddress(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestStaleTempMount(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "snapshots")
	live := filepath.Join(root, "3", "fs")
	lower := filepath.Join(root, "1", "fs")
	for _, d := range []string{live, lower} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	gone := filepath.Join(root, "9", "fs")
	ours := map[string]bool{live: true}
	for _, tc := range []struct {
		name, fstype, opts string
		want               bool
	}{
		{"our container's snapshot", "overlay", "rw,lowerdir=" + live + ":" + lower, true},
		{"a removed snapshot", "overlay", "rw,lowerdir=" + gone + ":" + lower, true},
		{"upperdir of ours", "overlay", "rw,lowerdir=" + lower + ",upperdir=" + live + ",workdir=" + root + "/3/work", true},
		{"only shared layers", "overlay", "rw,lowerdir=" + lower, false},
		{"another containerd's", "overlay", "rw,lowerdir=/other/root/9/fs:" + lower, false},
		{"relative layers", "overlay", "rw,lowerdir=9/fs:1/fs", false},
		{"not an overlay", "ext4", "rw", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := staleTempMount(&mountinfo.Info{FSType: tc.fstype, VFSOptions: tc.opts}, root, ours)
			if got != tc.want {
				t.Errorf("staleTempMount = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestRemoveShimState(t *testing.T) {
	dir := t.TempDir()
	sockets := filepath.Join(dir, "s")
	if err := os.Mkdir(sockets, 0o700); err != nil {
		t.Fatal(err)
	}
	s := shimProc{ID: "t1", Namespace: "titus", Addr: "/tmp/ctd1/c.sock"}
	l, err := net.Listen("unix", shimSocket(sockets, s.Addr, s.Namespace, s.ID, false))
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	other := filepath.Join(sockets, "other")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "state", "io.containerd.runtime.v2.task", "titus", "t1")
	notBundle := filepath.Join(dir, "elsewhere", "t2")
	for _, d := range []string{filepath.Join(bundle, "rootfs"), notBundle} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	s.Bundle = bundle
	if err := removeShimState(sockets, s); err != nil {
		t.Fatal(err)
	}
	t2 := shimProc{ID: "t2", Namespace: "titus", Addr: s.Addr, Bundle: notBundle}
	if err := removeShimState(sockets, t2); err != nil {
		t.Fatal(err)
	}
	var left []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() || p == notBundle {
			left = append(left, strings.TrimPrefix(p, dir))
		}
		return nil
	})
	if diff := cmp.Diff([]string{"/elsewhere/t2", "/s/other"}, left); diff != "" {
		t.Errorf("left (-want +got):\n%s", diff)
	}
}

// TestKillShim kills a process dressed as a shim of one address and
// namespace, and its child, found through the real procfs; a look-alike
// serving another address is untouched.
func TestKillShim(t *testing.T) {
	addr := filepath.Join(t.TempDir(), "c.sock")
	start := func(address string) *exec.Cmd {
		cmd := &exec.Cmd{Path: "/bin/sh", Args: []string{"containerd-shim-runc-v2", "-c", "sleep 300 & wait", "-namespace", "titus", "-id", "t1", "-address", address}}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			for _, k := range descendants("/proc", cmd.Process.Pid) {
				_ = syscall.Kill(k, syscall.SIGKILL)
			}
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
		return cmd
	}
	cmd, other := start(addr), start(addr+"2")
	var kids []int
	deadline := time.Now().Add(10 * time.Second)
	// Wait until the child has exec'd sleep: until then the forked sh still
	// shows its parent's shim-like command line.
	execd := func(pids []int) bool {
		if len(pids) != 1 {
			return false
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pids[0]))
		return err == nil && strings.HasPrefix(string(b), "sleep")
	}
	for !execd(kids) && time.Now().Before(deadline) {
		kids = descendants("/proc", cmd.Process.Pid)
		time.Sleep(10 * time.Millisecond)
	}
	if len(kids) != 1 {
		t.Fatalf("children of the fake shim = %v, want the sleep", kids)
	}
	shims := findShims("/proc", "unix://"+addr, "titus")
	if len(shims) != 1 || shims[0].Pid != cmd.Process.Pid || shims[0].ID != "t1" {
		t.Fatalf("findShims = %+v, want pid %d", shims, cmd.Process.Pid)
	}
	killed, err := killShim("/proc", shims[0])
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(kids, killed); diff != "" {
		t.Errorf("killed (-want +got):\n%s", diff)
	}
	if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("fake shim ended with %v, want killed", err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for processRuns("/proc", kids[0]) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if processRuns("/proc", kids[0]) {
		t.Errorf("child %d of the shim survived", kids[0])
	}
	if err := syscall.Kill(other.Process.Pid, 0); err != nil {
		t.Errorf("the other address's shim was killed: %v", err)
	}
}

// TestRemoveRuncState removes a runc create's leftover that never saved
// its state, and leaves alone a container whose init still runs and was
// not the killed shim's.
func TestRemoveRuncState(t *testing.T) {
	root := t.TempDir()
	defer func(orig string) { cgroupRoot = orig }(cgroupRoot)
	cgroupRoot = t.TempDir()
	ns := filepath.Join(root, "titus")
	half, live := filepath.Join(ns, "half"), filepath.Join(ns, "live")
	for _, d := range []string{half, live} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mkfifo(filepath.Join(d, "exec.fifo"), 0o622); err != nil {
			t.Fatal(err)
		}
	}
	state := []byte(`{"init_process_pid":` + strconv.Itoa(os.Getpid()) + `}`)
	if err := os.WriteFile(filepath.Join(live, "state.json"), state, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"half", "live", "none"} {
		if err := removeRuncState(context.Background(), root, shimProc{ID: id, Namespace: "titus"}, []int{1 << 30}); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
	if _, err := os.Stat(half); !os.IsNotExist(err) {
		t.Errorf("half-created runc state left: %v", err)
	}
	if _, err := os.Stat(filepath.Join(live, "state.json")); err != nil {
		t.Errorf("a live container's runc state was removed: %v", err)
	}
}

func TestRemoveEmptyCgroups(t *testing.T) {
	root := t.TempDir()
	// An exec session's cgroup left below (the agent died mid-session)
	// does not keep the task's.
	empty := []string{filepath.Join(root, "freezer", "titus", "half", execCgroupPrefix+"exec-1"),
		filepath.Join(root, "memory", "titus", "half"), filepath.Join(root, "pids", "titus", "half"), filepath.Join(root, "freezer", "titus", "half")}
	busy := filepath.Join(root, "cpu", "titus", "half") // stands for a cgroup with processes
	other := filepath.Join(root, "memory", "titus", "other")
	for _, d := range append(empty, busy, other) {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(busy, "cgroup.procs"), []byte("42\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := removeEmptyCgroups(root, "titus", "half"); err != nil {
		t.Fatal(err)
	}
	for _, d := range empty {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("empty cgroup %s left: %v", d, err)
		}
	}
	for _, d := range []string{busy, other} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s removed: %v", d, err)
		}
	}
}
