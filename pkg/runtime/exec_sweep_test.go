package runtime

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestStaleExecCgroups: below the task cgroups, the exec session cgroups
// whose session is not live in this process are stale; a live session's,
// a file of the same name and the task cgroup itself are not.
func TestStaleExecCgroups(t *testing.T) {
	root := t.TempDir()
	a, b := filepath.Join(root, "titus", "a"), filepath.Join(root, "titus", "b")
	for _, d := range []string{a + "/titus-exec-exec-old1", a + "/titus-exec-exec-live", b + "/titus-exec-exec-old2", b + "/other"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(b+"/titus-exec-exec-file", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var live liveExecs
	live.add("exec-live")
	got := staleExecCgroups([]string{a, b, filepath.Join(root, "gone")}, live.has)
	want := map[string]string{"exec-old1": a + "/titus-exec-exec-old1", "exec-old2": b + "/titus-exec-exec-old2"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("stale (-want +got):\n%s", d)
	}
	live.remove("exec-live")
	if got := staleExecCgroups([]string{a}, live.has); len(got) != 2 {
		t.Errorf("after the session ended: %v, want both of a's", got)
	}
}

// TestSweepExecCgroupSparesTheTask: sweeping a dead agent's session kills
// what is in the session's cgroup (the exec and what it started) and
// removes it; the task's own processes, in the parent, are never
// signalled.
func TestSweepExecCgroupSparesTheTask(t *testing.T) {
	task := "/cg/freezer/titus/web"
	dir := task + "/" + execCg
	f := &fakeCgroups{files: map[string]string{task + "/cgroup.procs": "10 11", dir + "/cgroup.procs": "20 21"}}
	if err := sweepExecCgroup(f, dir, false); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"write " + dir + "/freezer.state FROZEN",
		"kill 20 killed", "kill 21 killed",
		"write " + dir + "/freezer.state THAWED",
		"rmdir " + dir,
	}
	if d := cmp.Diff(want, f.ops); d != "" {
		t.Errorf("ops (-want +got):\n%s", d)
	}
	if f.files[task+"/cgroup.procs"] != "10 11" {
		t.Errorf("the task's own processes were touched: %q", f.files[task+"/cgroup.procs"])
	}
}
