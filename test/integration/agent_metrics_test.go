package integration

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/test/testenv"
)

func TestAgentMetrics(t *testing.T) {
	begin(t)
	e := &agentEnv{t: t}
	e.ctd = testenv.StartContainerd(t)
	e.reg = testenv.StartRegistry(t)
	e.image = testenv.PushBusybox(t, e.reg, "busybox", "latest")
	addr := testenv.Addr(testenv.FreePort(t))
	e.agent = testenv.StartAgent(t, testenv.AgentOptions{Containerd: e.ctd.Address, PlainHTTP: []string{e.reg.Host}, Config: fmt.Sprintf("metricsListen: %q\n", addr)})
	e.dir, e.socket, e.client = e.agent.Dir, e.agent.Socket, e.agent.Client

	e.launch(e.spec("ok", "true"))
	e.launch(e.spec("bad", "sh", "-c", "exit 2"))
	e.waitFinal("ok")
	e.waitFinal("bad")
	want := []string{
		`titus_agent_launch_duration_seconds_count{phase="pull"} 2`,
		`titus_agent_launch_duration_seconds_count{phase="start"} 2`,
		`titus_agent_launch_duration_seconds_count{phase="container_create"} 2`,
		`titus_agent_launch_duration_seconds_count{phase="task_create"} 2`,
		`titus_agent_launch_duration_seconds_count{phase="task_start"} 2`,
		`titus_agent_launch_duration_seconds_count{phase="accept"} 2`,
		`titus_agent_launch_duration_seconds_count{phase="total"} 2`,
		`titus_agent_launch_duration_seconds_count{phase="launch"} 2`,
		`titus_agent_tasks_finished_total{state="Finished"} 1`,
		`titus_agent_task_failures_total{cause="user"} 1`,
		`titus_agent_task_failures_total{cause="platform"} 0`,
		`grpc_server_handled_total{grpc_code="OK",grpc_method="LaunchTask"`,
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/metrics")
		var body string
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
		}
		var missing []string
		for _, w := range want {
			if !strings.Contains(body, w) {
				missing = append(missing, w)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics missing %v (err %v)", missing, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The same steps are in the task's record, with the transitions.
	got, err := e.client.GetTask(t.Context(), &agentv1.GetTaskRequest{Id: "ok"})
	if err != nil {
		t.Fatal(err)
	}
	steps := map[agentv1.TaskState][]string{}
	for _, tr := range got.GetTransitions() {
		for _, s := range tr.GetSteps() {
			if s.GetTook().AsDuration() <= 0 || s.GetStart().AsTime().Before(got.GetTransitions()[0].GetTime().AsTime()) {
				t.Errorf("step %s: start %v took %v", s.GetName(), s.GetStart().AsTime(), s.GetTook().AsDuration())
			}
			steps[tr.GetState()] = append(steps[tr.GetState()], s.GetName())
		}
	}
	slices.Sort(steps[agentv1.TaskState_TASK_STATE_STARTING])
	want2 := map[agentv1.TaskState][]string{
		agentv1.TaskState_TASK_STATE_STARTING: {"disk", "hostmounts", "image", "image.fetch", "secrets"}, // network provider none; the first launch fetches the image
		agentv1.TaskState_TASK_STATE_RUNNING:  {"container.create", "task.create", "task.start", "container"},
	}
	if diff := cmp.Diff(want2, steps); diff != "" {
		t.Errorf("launch steps by transition (-want +got):\n%s", diff)
	}
}
