package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// TestRolloutFailuresSurviveLeaderKill: a rollout to a crashing image
// (maxFailures 4) counts its failures in the job's etcd record; the leader
// is SIGKILLed after the second, and the standby rolls back after two
// more: 4 launches of the bad image in all, not 2 + 4. The standby shows
// the count and the progress deadline's clock the dead leader stored.
func TestRolloutFailuresSurviveLeaderKill(t *testing.T) {
	begin(t)
	endpoints := startEtcd(t)
	first, firstProc := startReplica(t, endpoints)
	waitUntil(t, "first replica leads", 60*time.Second, func() (bool, string) {
		out, err := first.cli("job", "ls")
		return err == nil, out
	})
	second, _ := startReplica(t, endpoints)
	both := &schedProc{t: t, addr: first.addr + "," + second.addr, dir: first.dir}
	etcd, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoints}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { etcd.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	crash := func(s *task.Spec) (time.Duration, int32) {
		if s.Image == "registry.example/x:bad" {
			return 300 * time.Millisecond, 1
		}
		return -1, 0
	}
	agents := simAgents(t, ctx, both.addr, crash, "az-a", "az-b")
	// The bad image's tasks never turn Healthy before they crash.
	for _, a := range agents {
		a.Tasks.SetHealth(func(s *task.Spec) task.HealthStatus {
			if s.Image == "registry.example/x:bad" {
				return task.HealthStarting
			}
			return task.HealthHealthy
		})
	}
	waitUntil(t, "agents registered", 30*time.Second, func() (bool, string) {
		out, _ := both.cli("agent", "ls")
		return strings.Count(out, "connected") == 2, out
	})
	jobFile := func(image string) string {
		return fmt.Sprintf(`ownerEmail: tests@example.com
application: it
service:
  min: 2
  desired: 2
  max: 2
  update: {maxSurge: "1", maxUnavailable: "0", maxFailures: 4, progressDeadlineSeconds: 3600}
task:
  image: %q
  command: [serve]
  resources: {cpuMillicores: 500, memoryMib: 64}
  healthCheck: {kind: exec, command: ["true"], interval: 1s, timeout: 500ms, healthyThreshold: 1, unhealthyThreshold: 3}
`, image)
	}
	id := both.submit(jobFile("registry.example/x:1"))
	waitUntil(t, "2 running", 30*time.Second, func() (bool, string) {
		n := 0
		for _, a := range agents {
			n += len(a.Tasks.Running())
		}
		return n == 2, fmt.Sprint(n)
	})
	f := filepath.Join(first.dir, "bad.yaml")
	if err := os.WriteFile(f, []byte(jobFile("registry.example/x:bad")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := both.cli("job", "update", id, "-f", f); err != nil {
		t.Fatalf("job update: %v\n%s", err, out)
	}
	// The record in etcd, as the standby will load it.
	var stored *schedv1.Rollout
	waitUntil(t, "2 failures stored in etcd", 60*time.Second, func() (bool, string) {
		resp, err := etcd.Get(ctx, "/titus/jobs/"+id)
		if err != nil || len(resp.Kvs) == 0 {
			return false, fmt.Sprint(err)
		}
		j := &schedv1.Job{}
		if err := proto.Unmarshal(resp.Kvs[0].Value, j); err != nil {
			return false, err.Error()
		}
		stored = j.GetRollout()
		return stored.GetFailures() >= 2, fmt.Sprint(stored)
	})
	if stored.GetFailures() != 2 || !strings.Contains(stored.GetLastFailure(), "NonZeroExit") || stored.GetProgressAt() == nil {
		t.Fatalf("stored rollout %v, want 2 failures, the last one named, and the deadline's clock", stored)
	}
	_ = syscall.Kill(firstProc.Cmd.Process.Pid, syscall.SIGKILL)
	_ = firstProc.Cmd.Wait()

	waitUntil(t, "the standby leads", 60*time.Second, func() (bool, string) {
		out, err := second.cli("job", "ls")
		return err == nil, out
	})
	r := second.jobJSON(id)["rollout"].(map[string]any)
	if at, err := time.Parse(time.RFC3339Nano, fmt.Sprint(r["progressAt"])); err != nil || !at.Equal(stored.GetProgressAt().AsTime()) {
		t.Errorf("the standby's deadline clock %v, want the stored %v", r["progressAt"], stored.GetProgressAt().AsTime())
	}
	if n, _ := r["failures"].(float64); n < 2 {
		t.Errorf("the standby counts %v failures, want at least the 2 stored: %v", r["failures"], r)
	}
	waitUntil(t, "rolled back by the standby", 60*time.Second, func() (bool, string) {
		r := second.jobJSON(id)["rollout"].(map[string]any)
		return r["state"] == "STATE_ROLLED_BACK", fmt.Sprint(r)
	})
	r = second.jobJSON(id)["rollout"].(map[string]any)
	if !strings.Contains(fmt.Sprint(r["reason"]), "4 consecutive failures") {
		t.Errorf("reason %q, want 4 consecutive failures", r["reason"])
	}
	bad := 0
	for _, a := range agents {
		for id, n := range a.Tasks.Launches() {
			if n > 1 {
				t.Errorf("task %s launched %d times", id, n)
			}
		}
		for _, v := range a.Tasks.List() {
			if v.Spec.Image == "registry.example/x:bad" {
				bad++
			}
		}
	}
	if bad != 4 {
		t.Errorf("%d launches of the bad image, want 4 (the standby went on counting from the stored 2)", bad)
	}
}
