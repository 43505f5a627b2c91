package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// TestAgentStateDiskFull: with the agent's state directory on a full
// filesystem, a launch the state file has no room for is refused with a
// clear ResourceExhausted error and recorded nowhere; running tasks keep
// running; once there is space, launches work again, and the state file
// is intact (a kill -9 and restart re-adopts the running task). That a
// final state which cannot be written holds its container until it can is
// TestFinalStateWrittenBeforeTeardown's subject (bbolt reuses free pages,
// so which write meets the full disk is not up to the test).
func TestAgentStateDiskFull(t *testing.T) {
	begin(t)
	stateDir, err := os.MkdirTemp("/tmp", "tstate")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testenv.RemoveDir(stateDir) })
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "titus-test-state", stateDir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	e := newAgentEnv(t, "--state-dir", stateDir)
	e.launch(e.spec("steady", "sleep", "1000"))
	pid := e.waitState("steady", stRunning, 60*time.Second).GetPid()

	filler := filepath.Join(stateDir, "filler")
	if out, err := exec.Command("dd", "if=/dev/zero", "of="+filler, "bs=64k").CombinedOutput(); err == nil || !strings.Contains(string(out), "No space left") {
		t.Fatalf("filling the state dir: %v %s", err, out)
	}
	// Records of 210 KiB (an image that does not exist: accepted ones end at once)
	// until the state file must grow and cannot.
	big := map[string]string{}
	for i := range 7 {
		big[fmt.Sprintf("BIG%d", i)] = strings.Repeat("x", 30<<10)
	}
	var refused string
	for i := 0; i < 100 && refused == ""; i++ {
		s := e.spec(fmt.Sprintf("big-%d", i), "true")
		s.Image = e.reg.Host + "/nope:latest"
		s.Env = big
		_, err := e.client.LaunchTask(e.ctx(), &agentv1.LaunchTaskRequest{Spec: s})
		switch {
		case err == nil:
			e.waitFinal(s.GetId())
		case status.Code(err) == codes.ResourceExhausted && strings.Contains(err.Error(), "state disk full"):
			refused = s.GetId()
		default:
			t.Fatalf("launch on a full state disk: %v, want ResourceExhausted naming the full state disk", err)
		}
	}
	if refused == "" {
		t.Fatal("100 launches of 210 KiB records all fit on a full 4 MiB state disk")
	}
	if _, err := e.client.GetTask(e.ctx(), &agentv1.GetTaskRequest{Id: refused}); status.Code(err) != codes.NotFound {
		t.Fatalf("the refused task %s is known: %v", refused, err)
	}
	if tk := e.get("steady"); tk.GetState() != stRunning || tk.GetPid() != pid {
		t.Fatalf("steady on a full state disk: %s pid %d, want Running pid %d", tk.GetState(), tk.GetPid(), pid)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	e.launch(e.spec("after", "sleep", "1000"))
	e.waitState("after", stRunning, 60*time.Second)
	e.kill9()
	e.start()
	if tk := e.waitState("steady", stRunning, 60*time.Second); tk.GetPid() != pid {
		t.Fatalf("steady after restart: pid %d, want %d", tk.GetPid(), pid)
	}
	for _, id := range []string{"steady", "after"} {
		e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: id})
		e.waitFinal(id)
	}
	e.assertNoLeftovers()
}
