//go:build vmguest

package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// These tests run only in the VM lane's guest (see vm_systemd_test.go):
// Debian's cloud kernel, cgroup v2 only, systemd PID 1 (so the agent's
// containerd.cgroupDriver auto picks systemd) and /tmp on XFS mounted
// with prjquota (so a disk directory there gets the XFS backend).

// projID is a file's XFS project ID as xfs_io reads it.
func projID(t *testing.T, path string) uint32 {
	t.Helper()
	out, err := exec.Command("xfs_io", "-r", "-c", "lsproj", path).CombinedOutput()
	if err != nil {
		t.Fatalf("xfs_io lsproj %s: %v\n%s", path, err, out)
	}
	_, v, ok := strings.Cut(strings.TrimSpace(string(out)), "projid = ")
	n, err := strconv.ParseUint(v, 10, 32)
	if !ok || err != nil {
		t.Fatalf("xfs_io lsproj %s: %q", path, out)
	}
	return uint32(n)
}

// TestVMXFSQuotaNotEscapable: on a real XFS disk mounted with prjquota,
// tasks try to move their own file, and the root of their overlay (whose
// project new files inherit), to another project and to project 0 (no
// limit) with FS_IOC_FSSETXATTR through overlayfs, which passes the call
// to the XFS upper directory. A plain task runs without CAP_FOWNER there
// (the agent drops it on XFS-quota hosts); a task in its own user
// namespace keeps CAP_FOWNER in it. For both every try fails, the files on
// the disk keep the task's project, and writing past the quota into the
// attacked file still fails.
func TestVMXFSQuotaNotEscapable(t *testing.T) {
	begin(t)
	parent := userNSDir(t) // on the guest's /tmp: XFS with prjquota
	diskDir := filepath.Join(parent, "disks")
	if out, err := exec.Command("findmnt", "-no", "FSTYPE,OPTIONS", "--target", parent).Output(); err != nil ||
		!strings.HasPrefix(string(out), "xfs ") || !strings.Contains(string(out), "prjquota") {
		t.Fatalf("%s is on %q (%v), want xfs with prjquota", parent, out, err)
	}
	e := newAgentEnvConfig(t, "isolation:\n  diskDir: "+diskDir+"\n")
	probe := testenv.ToolBinary(t, "fsxattr-probe")
	img := testenv.PushBusyboxWith(t, e.reg, "busybox-probe", "latest", map[string]string{"bin/fsxattr-probe": probe})
	script := `grep CapEff /proc/self/status; echo seed > /tmp/f; ` +
		`echo "probe /"; fsxattr-probe /; echo "probe /tmp/f"; fsxattr-probe /tmp/f; ` +
		`dd if=/dev/zero of=/tmp/f bs=1M count=40 2>&1; echo "dd rc=$?"; echo attack-done; exec sleep 100000`
	tasks := map[string]bool{"xfs-plain": false, "xfs-userns": true} // id: CAP_FOWNER expected
	for id, userNS := range tasks {
		s := e.spec(id, "sh", "-c", script)
		s.Image, s.Resources.DiskMib = img, 16
		if userNS {
			s.Labels = map[string]string{isolation.LabelUserNS: "true"}
		}
		e.launch(s)
		t.Cleanup(func() { e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: id}) })
	}
	for id, wantFowner := range tasks {
		e.waitLog(id, "attack-done")
		out, _ := e.cli("task", "logs", id)
		t.Logf("%s output:\n%s", id, out)
		var capEff uint64
		for _, l := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
				capEff, _ = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			}
		}
		if got := capEff&(1<<3) != 0; got != wantFowner {
			t.Errorf("%s: CAP_FOWNER %v (CapEff %#x), want %v", id, got, capEff, wantFowner)
		}
		for _, want := range []string{"FSGETXATTR: ok", "FSSETXATTR: EPERM", "FSSETXATTR-HIGHBITS: EPERM", "FSSETXATTR-PROJ0: EPERM"} {
			if n := strings.Count(out, want+"\n"); n != 2 {
				t.Errorf("%s: %q printed %d times, want 2 (the overlay's root and /tmp/f)", id, want, n)
			}
		}
		// On the disk: the task's project, as the agent recorded it, on
		// the upper directory and the attacked file.
		b, err := os.ReadFile(filepath.Join(diskDir, "projects", id))
		if err != nil {
			t.Fatalf("%s: no project ID recorded (is the XFS backend in use?): %v", id, err)
		}
		want, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
		if err != nil || want == 0 {
			t.Fatalf("%s: recorded project ID %q: %v", id, b, err)
		}
		upper := filepath.Join(diskDir, "mnt", id, "upper")
		for _, p := range []string{upper, filepath.Join(upper, "tmp", "f")} {
			if got := projID(t, p); uint64(got) != want {
				t.Errorf("%s is in project %d, want the task's %d", p, got, want)
			}
		}
		// The quota still holds: XFS answers a project over its hard
		// limit with ENOSPC (EDQUOT is for user and group quotas).
		if !strings.Contains(out, "No space left on device") && !strings.Contains(out, "Disk quota exceeded") || strings.Contains(out, "dd rc=0") {
			t.Errorf("%s: dd of 40 MiB into a 16 MiB disk did not fail with ENOSPC/EDQUOT", id)
		}
		if fi, err := os.Stat(filepath.Join(upper, "tmp", "f")); err != nil || fi.Size() > 17<<20 {
			t.Errorf("%s: the attacked file grew past the quota: %v, %v", id, fi, err)
		}
	}
	for id := range tasks {
		e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: id})
		e.waitFinal(id)
	}
	e.assertNoLeftovers()
}

// TestVMCgroupV2Agent: under the systemd driver on cgroup v2, the
// health check's controller probe reports the controllers; a task's scope
// lives in its own slice, which gives a limit's cpu.max, cpu.max.burst
// and pids.max (systemd sets cpu.max, runc the burst), and
// keeps its memory accounting (memory.events, memory.peak) past the
// task's exit until the agent deletes the task, and which is then gone.
func TestVMCgroupV2Agent(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	h, err := e.client.Health(e.ctx(), &agentv1.HealthRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range h.GetChecks() {
		if c.GetName() == "kernel" {
			if !c.GetOk() || !strings.Contains(c.GetDetail(), "cgroup v2 (") || !strings.Contains(c.GetDetail(), " memory ") {
				t.Errorf("kernel check: ok %v, %q; want ok with the v2 controllers listed", c.GetOk(), c.GetDetail())
			}
		}
	}

	id := fmt.Sprintf("v2-%d", os.Getpid())
	s := e.spec(id, "sh", "-c", "echo up; exec sleep 100000")
	s.Resources.CpuMillicores, s.Resources.CpuBurstMillicores, s.Resources.MemoryMib, s.Resources.Pids = 500, 250, 64, 50
	e.launch(s)
	pid := e.waitState(id, stRunning, 60*time.Second).GetPid()
	cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	slice := fmt.Sprintf("/titus.slice/titus-titus.slice/titus-titus-%s.slice", strings.ReplaceAll(id, "-", `\x2d`))
	scope := slice + "/titus-" + id + ".scope"
	if got := strings.TrimSpace(string(cg)); got != "0::"+scope {
		t.Fatalf("task cgroup %q, want 0::%s", got, scope)
	}
	for f, want := range map[string]string{"cpu.max": "50000 100000", "cpu.max.burst": "25000", "memory.max": "67108864", "pids.max": "50"} {
		if b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", scope, f)); err != nil || strings.TrimSpace(string(b)) != want {
			t.Errorf("%s = %q (%v), want %q", f, b, err, want)
		}
	}
	e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: id})
	tk := e.waitFinal(id)
	if tk.GetState() != stKilled {
		t.Errorf("state %s, want killed", tk.GetState())
	}
	e.assertNoLeftovers()
	// Deleting the task stopped its slice: no cgroup, no unit left.
	deadline := time.Now().Add(testenv.Scaled(30 * time.Second))
	for {
		_, err := os.Stat(filepath.Join("/sys/fs/cgroup", slice))
		if os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the task's slice %s outlived the task: %v", slice, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
