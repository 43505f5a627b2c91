package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// containerPid is the pid of a container's task as containerd sees it
// (0 when it has none or is not running).
func (e *agentEnv) containerPid(id string) string {
	out, err := e.ctr("task", "ls")
	if err != nil {
		e.t.Fatalf("ctr task ls: %v %s", err, out)
	}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) == 3 && f[0] == id && f[2] == "RUNNING" {
			return f[1]
		}
	}
	return ""
}

// killContainer ends a container the agent does not manage.
func (e *agentEnv) killContainer(id string) {
	_, _ = e.ctr("task", "kill", "-s", "KILL", id)
	for range 50 {
		if e.containerPid(id) == "" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, _ = e.ctr("task", "rm", "-f", id)
	_, _ = e.ctr("container", "rm", id)
}

// The attack on the agent's bookkeeping: a task's record cannot be read
// after a restart (here overwritten with garbage). Its container used to be
// taken for unknown and SIGKILLed; it must keep running (the record is
// quarantined), while a genuinely unknown container is still reaped.
// Then a corrupt tasks.db stops the agent with an error naming the file,
// and the restored file brings the agent back with the task untouched.
func TestAgentCorruptRecordKeepsContainerRunning(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	e.launch(e.spec("victim", "sleep", "1000"))
	e.launch(e.spec("healthy", "sleep", "1000"))
	e.waitState("victim", stRunning, 30*time.Second)
	e.waitState("healthy", stRunning, 30*time.Second)
	t.Cleanup(func() { e.killContainer("victim") })
	pid := e.containerPid("victim")
	if pid == "" {
		t.Fatal("victim has no running container")
	}
	e.stop()

	db := filepath.Join(e.dir, "state", "tasks.db")
	b, err := bolt.Open(db, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("tasks")).Put([]byte("victim"), []byte(`{"spec":{"id":"victim","resources":`))
	}); err != nil {
		t.Fatal(err)
	}
	b.Close()
	e.plantOrphan("stranger")
	e.start()

	e.waitNoContainer("stranger") // the reaper ran
	time.Sleep(time.Second)
	if got := e.containerPid("victim"); got != pid {
		t.Fatalf("victim's container: pid %q after the restart, want %q still running\nagent log:\n%s", got, pid, e.agent.Log())
	}
	if log := e.agent.Log(); !strings.Contains(log, "quarantined") {
		t.Errorf("agent log does not mention the quarantine:\n%s", log)
	}
	if _, err := e.client.GetTask(e.ctx(), &agentv1.GetTaskRequest{Id: "healthy"}); err != nil {
		t.Errorf("the healthy task after the restart: %v", err)
	}
	e.waitState("healthy", stRunning, 10*time.Second)

	// A corrupt state file: the agent refuses to start, says which file
	// and what to do, and does not touch it or any container.
	e.stop()
	good, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	garbage := bytes.Repeat([]byte("\xde\xad\xbe\xef"), 4096)
	if err := os.WriteFile(db, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, testenv.AgentBinary(t), e.agent.Args...).CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("agent on a corrupt tasks.db: err %v (ctx %v), want it to exit with an error\n%s", err, ctx.Err(), out)
	}
	for _, want := range []string{"agent state file is corrupt", db, "mv " + db} {
		if !strings.Contains(string(out), want) {
			t.Errorf("agent output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "another agent") {
		t.Errorf("agent blames another agent:\n%s", out)
	}
	if after, _ := os.ReadFile(db); !bytes.Equal(after, garbage) {
		t.Error("the agent changed the corrupt file")
	}
	if got := e.containerPid("victim"); got != pid {
		t.Errorf("victim after the refused start: pid %q, want %q", got, pid)
	}
	if err := os.WriteFile(db, good, 0o600); err != nil {
		t.Fatal(err)
	}
	e.start()
	e.waitState("healthy", stRunning, 10*time.Second)
	if got := e.containerPid("victim"); got != pid {
		t.Errorf("victim after the second restart: pid %q, want %q", got, pid)
	}
	if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: "healthy", GracePeriodSeconds: 1}); err != nil {
		t.Fatal(err)
	}
	e.waitFinal("healthy")
}

// uidMap is the first line of a process's uid_map, fields joined by one
// space.
func uidMap(t *testing.T, pid string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + pid + "/uid_map")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(strings.Fields(strings.SplitN(string(b), "\n", 2)[0]), " ")
}

// The attack on user-namespace ranges: a task chowns its own root
// directory (where the agent used to read its range back from) and the
// agent restarts. Its range is unchanged, and a new task is not handed it:
// with two slots held, a third task is refused instead of sharing the
// first task's host IDs.
func TestAgentUserNSRangeSurvivesChownAndRestart(t *testing.T) {
	begin(t)
	parent := userNSDir(t)
	e := newAgentEnvConfig(t, "isolation:\n  diskDir: "+filepath.Join(parent, "disks")+"\n  userNamespaces:\n    maxTasks: 2\n")
	label := map[string]string{isolation.LabelUserNS: "true"}
	a := e.spec("chowner", "sh", "-c", "chown 1:1 / && echo chowned; exec sleep 1000")
	a.Labels, a.Resources.DiskMib = label, 32
	b := e.spec("neighbour", "sleep", "1000")
	b.Labels, b.Resources.DiskMib = label, 32
	e.launch(a)
	e.launch(b)
	e.waitState("chowner", stRunning, 30*time.Second)
	e.waitState("neighbour", stRunning, 30*time.Second)
	e.waitLog("chowner", "chowned")
	mapA, mapB := uidMap(t, e.containerPid("chowner")), uidMap(t, e.containerPid("neighbour"))
	if mapA == mapB || strings.HasPrefix(mapA, "0 0 ") {
		t.Fatalf("uid maps %q and %q: want two distinct unprivileged ranges", mapA, mapB)
	}

	e.stop()
	e.start()
	e.waitState("chowner", stRunning, 30*time.Second)
	if got := uidMap(t, e.containerPid("chowner")); got != mapA {
		t.Errorf("chowner's uid map after the restart %q, want %q", got, mapA)
	}
	c := e.spec("third", "sleep", "1000")
	c.Labels, c.Resources.DiskMib = label, 32
	e.launch(c)
	tk := e.waitState("third", stRunning, 30*time.Second)
	if tk.GetState() == stRunning {
		t.Errorf("a third task runs with two slots held: uid map %q (chowner %q, neighbour %q)",
			uidMap(t, e.containerPid("third")), mapA, mapB)
	} else if !strings.Contains(tk.GetMessage(), "in use") {
		t.Errorf("third task: %s %s %q, want refused for lack of a range", tk.GetState(), tk.GetReason(), tk.GetMessage())
	}
	for _, id := range []string{"chowner", "neighbour", "third"} {
		_, _ = e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: id, GracePeriodSeconds: 1})
		e.waitFinal(id)
	}
	e.assertNoLeftovers()
}
