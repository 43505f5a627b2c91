package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"golang.org/x/sys/unix"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/task"

	"github.com/titus-agent/titus-agent/pkg/runtime"
)

// TestRuntimeContainerdKilledRightAfterStart kills containerd with SIGKILL
// the moment Start returns, round after round, and checks that every task
// started just before is still there after containerd restarts: running,
// its pid unchanged, and its true exit reported by a new Wait. (The chaos
// soak lost about one task per ten containerd kills this way: "container
// is gone" right after the restart.)
func TestRuntimeContainerdKilledRightAfterStart(t *testing.T) {
	begin(t)
	e := newRuntimeEnv(t)
	ctx := testCtx(t)
	e.pulled(t, ctx)
	const rounds, perRound = 6, 3
	for round := range rounds {
		ids := make([]string, perRound)
		pids := make([]uint32, perRound)
		var wg sync.WaitGroup
		for i := range ids {
			ids[i] = uniqueID(fmt.Sprintf("ctdkill%d", round))
			wg.Go(func() {
				pids[i] = e.run(t, ctx, runtime.ContainerSpec{ID: ids[i], Args: []string{"sh", "-c", untilGo + "; exit 7"}})
			})
		}
		wg.Wait()
		e.ctd.Kill9Restart(t)
		for i, id := range ids {
			// The client may still be backing off from the dead socket.
			var st runtime.ContainerStatus
			var err error
			eventually(t, "the runtime reconnected", func() bool {
				st, err = e.rt.Status(ctx, id)
				return err == nil || !strings.Contains(err.Error(), "connection")
			})
			if err != nil || st.State != runtime.StateRunning || st.Pid != pids[i] {
				t.Fatalf("round %d: task %s started right before containerd was killed: status %+v, %v; want running pid %d\ncontainerd log:\n%s", round, id, st, err, pids[i], e.ctd.Proc.Log())
			}
			ch, err := e.rt.Wait(ctx, id)
			if err != nil {
				t.Fatalf("round %d: wait %s after the restart: %v", round, id, err)
			}
			letGo(t, e.rt, id)
			if s := waitExit(t, ch); s.Err != nil || s.Code != 7 {
				t.Errorf("round %d: exit of %s = %+v; want 7", round, id, s)
			}
		}
	}
}

// TestAgentTaskContainerdDidNotRestore: containerd restarts without
// restoring a running task (as it did to about one task in ten
// containerd kills of the chaos soak, "container is gone"): here its
// bundle is hidden from the restarted containerd, so the task's shim and
// process live on outside it. The agent must not leave them running
// unwatched and unaccounted for (another tenant's IP, a task the
// scheduler has replaced running twice): the task ends Lost saying what
// containerd lacked and what was killed, and its process is gone.
func TestAgentTaskContainerdDidNotRestore(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	e.launch(e.spec("unrestored", "sleep", "1000"))
	tk := e.waitState("unrestored", stRunning, 30*time.Second)
	if tk.GetState() != stRunning {
		t.Fatalf("task %s %s %q, want Running", tk.GetState(), tk.GetReason(), tk.GetMessage())
	}
	pid := tk.GetPid()
	_ = e.ctd.Proc.Cmd.Process.Kill()
	_ = e.ctd.Proc.Cmd.Wait()
	bundles := filepath.Join(e.ctd.State, "io.containerd.runtime.v2.task", "titus")
	hidden := filepath.Join(bundles, ".unrestored")
	if err := os.Rename(filepath.Join(bundles, "unrestored"), hidden); err != nil {
		t.Fatalf("hide the bundle from containerd: %v", err)
	}
	t.Cleanup(func() {
		_ = mount.UnmountRecursive(filepath.Join(hidden, "rootfs"), unix.MNT_DETACH)
		_ = os.RemoveAll(hidden)
	})
	e.ctd.Kill9Restart(t)
	tk = e.waitFinal("unrestored")
	wantState(t, tk, agentv1.TaskState_TASK_STATE_LOST, task.ReasonAgentRestartLost, -1)
	if msg := tk.GetMessage(); !strings.Contains(msg, "no task") || !strings.Contains(msg, "killed what was left of it") {
		t.Errorf("message %q: want what containerd lacked and what was killed", msg)
	}
	eventually(t, "the unrestored task's process gone", func() bool {
		return processGone(pid)
	})
	_ = mount.UnmountRecursive(filepath.Join(hidden, "rootfs"), unix.MNT_DETACH)
	_ = os.RemoveAll(hidden)
	e.assertNoLeftovers()
}

// processGone: no such process, or only its zombie.
func processGone(pid uint32) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && (f[0] == "Z" || f[0] == "X")
}
