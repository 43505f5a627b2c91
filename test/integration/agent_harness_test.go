package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// agentEnv is a private containerd + registry with a busybox image, and an
// agent daemon process that can be killed and restarted.
type agentEnv struct {
	t      *testing.T
	ctd    *testenv.Containerd
	reg    *testenv.Registry
	image  string
	agent  *testenv.Agent
	dir    string
	socket string
	client agentv1.AgentClient
}

func newAgentEnv(t *testing.T, extra ...string) *agentEnv {
	t.Helper()
	return newAgentEnvConfig(t, "", extra...)
}

// newAgentEnvConfig is newAgentEnv with the agent's YAML config file.
func newAgentEnvConfig(t *testing.T, config string, extra ...string) *agentEnv {
	t.Helper()
	return newAgentEnvContainerd(t, testenv.StartContainerd(t), config, extra...)
}

// newAgentEnvContainerd is newAgentEnvConfig on a containerd of the test's.
func newAgentEnvContainerd(t *testing.T, ctd *testenv.Containerd, config string, extra ...string) *agentEnv {
	t.Helper()
	e := &agentEnv{t: t, ctd: ctd}
	e.reg = testenv.StartRegistry(t)
	e.image = testenv.PushBusybox(t, e.reg, "busybox", "latest")
	e.agent = testenv.StartAgent(t, testenv.AgentOptions{Containerd: e.ctd.Address, PlainHTTP: []string{e.reg.Host}, Config: config, Extra: extra})
	e.dir, e.socket, e.client = e.agent.Dir, e.agent.Socket, e.agent.Client
	return e
}

// start restarts the agent over the same state.
func (e *agentEnv) start() {
	e.agent.Start()
	e.client = e.agent.Client
}

func (e *agentEnv) kill9() { e.agent.Kill9() }
func (e *agentEnv) stop()  { e.agent.Stop() }

func titusAgentBinary(t *testing.T) string { return testenv.AgentBinary(t) }

func (e *agentEnv) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Scaled(60*time.Second))
	e.t.Cleanup(cancel)
	return ctx
}

func (e *agentEnv) spec(id string, cmd ...string) *agentv1.TaskSpec {
	return &agentv1.TaskSpec{
		Id:                     id,
		OwnerEmail:             "tests@example.com",
		Image:                  e.image,
		Command:                cmd,
		Resources:              &agentv1.Resources{CpuMillicores: 500, MemoryMib: 64},
		KillGracePeriodSeconds: 2,
	}
}

func (e *agentEnv) launch(spec *agentv1.TaskSpec) *agentv1.Task {
	e.t.Helper()
	resp, err := e.client.LaunchTask(e.ctx(), &agentv1.LaunchTaskRequest{Spec: spec})
	if err != nil {
		e.t.Fatalf("launch %s: %v\nagent log:\n%s", spec.GetId(), err, e.agent.Log())
	}
	return resp.GetTask()
}

func (e *agentEnv) get(id string) *agentv1.Task {
	e.t.Helper()
	tk, err := e.client.GetTask(e.ctx(), &agentv1.GetTaskRequest{Id: id})
	if err != nil {
		e.t.Fatalf("get %s: %v", id, err)
	}
	return tk
}

// waitState polls until the task reaches at least state s.
func (e *agentEnv) waitState(id string, s agentv1.TaskState, timeout time.Duration) *agentv1.Task {
	e.t.Helper()
	deadline := time.Now().Add(testenv.Scaled(timeout))
	for {
		tk := e.get(id)
		if tk.GetState() >= s {
			return tk
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("task %s stuck in %s (%s: %s), want %s\nagent log:\n%s", id, tk.GetState(), tk.GetReason(), tk.GetMessage(), s, e.agent.Log())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func (e *agentEnv) waitFinal(id string) *agentv1.Task {
	e.t.Helper()
	tk := e.waitState(id, agentv1.TaskState_TASK_STATE_FINISHED, 60*time.Second)
	// wait until teardown has happened (container gone) too
	return tk
}

func tailLog(s string) string {
	lines := strings.Split(s, "\n")
	if len(lines) > 60 {
		lines = lines[len(lines)-60:]
	}
	return strings.Join(lines, "\n")
}

// cli runs the titus-agent CLI against this env's socket.
func (e *agentEnv) cli(args ...string) (string, error) {
	cmd := exec.Command(titusAgentBinary(e.t), append([]string{"--socket", e.socket}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func wantState(t *testing.T, tk *agentv1.Task, state agentv1.TaskState, reason task.Reason, exit int32) {
	t.Helper()
	if tk.GetState() != state || tk.GetReason() != string(reason) || tk.GetExitCode() != exit {
		t.Fatalf("task %s = %s/%s exit %d (%s), want %s/%s exit %d", tk.GetSpec().GetId(), tk.GetState(), tk.GetReason(), tk.GetExitCode(), tk.GetMessage(), state, reason, exit)
	}
}

// ctr runs containerd's own CLI against the private containerd.
func (e *agentEnv) ctr(args ...string) (string, error) {
	bin := testenv.LookPath(e.t, "ctr")
	cmd := exec.Command(bin, append([]string{"--address", e.ctd.Address, "-n", "titus"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out) + stderr.String(), err
	}
	return string(out), nil
}

// ctrExec runs a command in a task behind the agent's back.
func (e *agentEnv) ctrExec(id string, args ...string) (string, error) {
	return e.ctr(append([]string{"task", "exec", "--exec-id", fmt.Sprintf("poke%d", time.Now().UnixNano()), id}, args...)...)
}

// plantOrphan starts a container labelled as the agent's that the agent
// never launched.
func (e *agentEnv) plantOrphan(id string) {
	e.t.Helper()
	out, err := e.ctr("run", "-d", "--label", "titus.agent/managed=true", "--label", "titus.agent/task-id="+id, e.image, id, "sleep", "1000")
	if err != nil {
		e.t.Fatalf("plant orphan: %v\n%s", err, out)
	}
}

func (e *agentEnv) containers() []string {
	out, err := e.ctr("containers", "ls", "-q")
	if err != nil {
		e.t.Fatalf("ctr containers ls: %v %s", err, out)
	}
	return strings.Fields(out)
}

func (e *agentEnv) waitNoContainer(id string) {
	e.t.Helper()
	deadline := time.Now().Add(testenv.Scaled(30 * time.Second))
	for {
		found := false
		for _, c := range e.containers() {
			found = found || c == id
		}
		if !found {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("container %s still exists\n%s", id, e.agent.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *agentEnv) waitLog(id, want string) {
	e.t.Helper()
	deadline := time.Now().Add(testenv.Scaled(30 * time.Second))
	for {
		out, _ := e.cli("task", "logs", id)
		if strings.Contains(out, want) {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("log of %s never showed %q: %q", id, want, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// assertNoLeftovers waits for teardown of every finished task and then
// checks that no container, active snapshot or rootfs mount is left.
func (e *agentEnv) assertNoLeftovers() {
	e.t.Helper()
	deadline := time.Now().Add(testenv.Scaled(30 * time.Second))
	for {
		var left []string
		list, err := e.client.ListTasks(e.ctx(), &agentv1.ListTasksRequest{All: true})
		if err != nil {
			e.t.Fatal(err)
		}
		live := map[string]bool{}
		for _, tk := range list.GetTasks() {
			if !task.StateFromProto(tk.GetState()).Terminal() {
				live[tk.GetSpec().GetId()] = true
			}
		}
		for _, c := range e.containers() {
			if !live[c] {
				left = append(left, "container "+c)
			}
		}
		snaps, _ := e.ctr("snapshots", "ls")
		for _, line := range strings.Split(snaps, "\n") {
			f := strings.Fields(line)
			if len(f) >= 3 && (f[2] == "Active" || f[2] == "View") && !live[f[0]] {
				left = append(left, "snapshot "+f[0])
			}
		}
		staged := e.dir + "/state/hostmounts/"
		if ents, err := os.ReadDir(staged); err == nil {
			for _, d := range ents {
				if !live[d.Name()] {
					left = append(left, "staging dir "+staged+d.Name())
				}
			}
		}
		mounts, _ := os.ReadFile("/proc/self/mountinfo")
		for _, line := range strings.Split(string(mounts), "\n") {
			if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], staged) {
				if id, _, _ := strings.Cut(strings.TrimPrefix(f[4], staged), "/"); !live[id] {
					left = append(left, "staged host path "+f[4])
				}
			}
			if strings.Contains(line, e.ctd.State) && strings.Contains(line, "rootfs") {
				ok := false
				for id := range live {
					ok = ok || strings.Contains(line, "/"+id+"/")
				}
				if !ok {
					left = append(left, "mount "+strings.Fields(line)[4])
				}
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("leftovers after tasks ended: %v\n%s", left, e.agent.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// eventLog collects the agent's WatchEvents stream.
type eventLog struct {
	t   *testing.T
	mu  sync.Mutex
	evs []*agentv1.TaskEvent
	err error
}

// watch subscribes to every task event; it returns once the agent has
// confirmed the subscription, so no later event is missed.
func (e *agentEnv) watch() *eventLog {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	e.t.Cleanup(cancel)
	stream, err := e.client.WatchEvents(ctx, &agentv1.WatchEventsRequest{})
	if err != nil {
		e.t.Fatalf("watch events: %v", err)
	}
	if _, err := stream.Header(); err != nil {
		e.t.Fatalf("watch events: no subscription: %v", err)
	}
	l := &eventLog{t: e.t}
	go func() {
		for {
			ev, err := stream.Recv()
			l.mu.Lock()
			if err != nil {
				l.err = err
				l.mu.Unlock()
				return
			}
			l.evs = append(l.evs, ev)
			l.mu.Unlock()
		}
	}()
	return l
}

// until waits for task id's event in state final and returns all of the
// task's events so far.
func (l *eventLog) until(id string, final agentv1.TaskState) []*agentv1.TaskEvent {
	l.t.Helper()
	deadline := time.Now().Add(testenv.Scaled(60 * time.Second))
	for {
		l.mu.Lock()
		var mine []*agentv1.TaskEvent
		done := false
		for _, ev := range l.evs {
			if ev.GetTaskId() == id {
				mine = append(mine, ev)
				done = done || ev.GetTransition().GetState() == final
			}
		}
		err := l.err
		l.mu.Unlock()
		if done {
			return mine
		}
		if err != nil || time.Now().After(deadline) {
			l.t.Fatalf("no %s event for %s (stream: %v); got %v", final, id, err, mine)
		}
		time.Sleep(25 * time.Millisecond)
	}
}
