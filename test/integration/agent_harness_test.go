package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/test/testenv"
)

var (
	buildOnce sync.Once
	agentBin  string
	buildErr  error
)

// titusAgentBinary builds cmd/titus-agent once per test binary.
func titusAgentBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "titus-agent-bin")
		if err == nil {
			err = os.Chmod(dir, 0o755)
		}
		if err != nil {
			buildErr = err
			return
		}
		agentBin = filepath.Join(dir, "titus-agent")
		out, err := exec.Command("go", "build", "-o", agentBin, "github.com/titus-agent/titus-agent/cmd/titus-agent").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("build titus-agent: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return agentBin
}

// agentEnv is a private containerd + registry with a busybox image, and an
// agent daemon process that can be killed and restarted.
type agentEnv struct {
	t          *testing.T
	ctd        *testenv.Containerd
	reg        *testenv.Registry
	image      string
	dir        string
	socket     string
	extraArgs  []string
	proc       *testenv.Process
	conn       *grpc.ClientConn
	client     agentv1.AgentClient
	generation int
}

func newAgentEnv(t *testing.T, extraArgs ...string) *agentEnv {
	t.Helper()
	e := &agentEnv{t: t, extraArgs: extraArgs}
	e.ctd = testenv.StartContainerd(t)
	e.reg = testenv.StartRegistry(t)
	e.image = testenv.PushBusybox(t, e.reg, "busybox", "latest")
	dir, err := os.MkdirTemp("/tmp", "ta")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e.dir = dir
	e.socket = filepath.Join(dir, "agent.sock")
	e.start()
	return e
}

func (e *agentEnv) args() []string {
	return append([]string{"daemon", "--config", filepath.Join(e.dir, "none.yaml"),
		"--socket", e.socket,
		"--state-dir", filepath.Join(e.dir, "state"),
		"--log-dir", filepath.Join(e.dir, "logs"),
		"--containerd", e.ctd.Address,
		"--plain-http-registry", e.reg.Host,
	}, e.extraArgs...)
}

func (e *agentEnv) start() {
	t := e.t
	t.Helper()
	if err := os.WriteFile(filepath.Join(e.dir, "none.yaml"), []byte("logLevel: debug\nmetricsListen: \"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.generation++
	cmd := exec.Command(titusAgentBinary(t), e.args()...)
	e.proc = testenv.StartProcess(t, e.dir, fmt.Sprintf("agent-%d", e.generation), cmd)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(e.socket); err == nil {
			break
		}
		if time.Now().After(deadline) || e.proc.Cmd.ProcessState != nil {
			t.Fatalf("agent did not come up:\n%s", e.proc.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+e.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	e.conn = conn
	e.client = agentv1.NewAgentClient(conn)
	t.Cleanup(func() { conn.Close() })
	// Wait until it answers.
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := e.client.Version(ctx, &agentv1.VersionRequest{})
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not answering: %v\n%s", err, e.proc.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill9 kills the agent daemon without any chance to clean up.
func (e *agentEnv) kill9() {
	e.t.Helper()
	_ = e.proc.Cmd.Process.Signal(syscall.SIGKILL)
	_, _ = e.proc.Cmd.Process.Wait()
	e.conn.Close()
	_ = os.Remove(e.socket)
}

// stop stops the agent gracefully (SIGTERM): tasks must keep running.
func (e *agentEnv) stop() {
	e.t.Helper()
	e.proc.Stop()
	e.conn.Close()
}

func (e *agentEnv) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
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
		e.t.Fatalf("launch %s: %v\nagent log:\n%s", spec.GetId(), err, tailLog(e.proc.Log()))
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
	deadline := time.Now().Add(timeout)
	for {
		tk := e.get(id)
		if tk.GetState() >= s {
			return tk
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("task %s stuck in %s (%s: %s), want %s\nagent log:\n%s", id, tk.GetState(), tk.GetReason(), tk.GetMessage(), s, tailLog(e.proc.Log()))
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
	deadline := time.Now().Add(30 * time.Second)
	for {
		found := false
		for _, c := range e.containers() {
			found = found || c == id
		}
		if !found {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("container %s still exists\n%s", id, tailLog(e.proc.Log()))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *agentEnv) waitLog(id, want string) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
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
	deadline := time.Now().Add(30 * time.Second)
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
		mounts, _ := os.ReadFile("/proc/self/mountinfo")
		for _, line := range strings.Split(string(mounts), "\n") {
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
			e.t.Fatalf("leftovers after tasks ended: %v\n%s", left, tailLog(e.proc.Log()))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
