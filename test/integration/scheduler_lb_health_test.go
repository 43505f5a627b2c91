package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"
)

// lbHealthOf reads each live task's load balancer health from `task ls -o json`.
func (b *lbBed) lbHealthOf(job string) map[string]string {
	out, err := b.sched.cli("task", "ls", "--job", job, "-o", "json")
	if err != nil {
		return nil
	}
	var l struct {
		Tasks []struct {
			IP      string `json:"ip"`
			Targets []struct {
				State          string `json:"state"`
				LBHealth       string `json:"lbHealth"`
				LBHealthReason string `json:"lbHealthReason"`
			} `json:"targets"`
		} `json:"tasks"`
	}
	if json.Unmarshal([]byte(out), &l) != nil {
		return nil
	}
	got := map[string]string{}
	for _, tk := range l.Tasks {
		for _, r := range tk.Targets {
			got[tk.IP] = r.State + "/" + r.LBHealth
		}
	}
	return got
}

var (
	memberRE = regexp.MustCompile(`(?s)<member>.*?</member>`)
	idRE     = regexp.MustCompile(`<Id>([^<]*)</Id>`)
	healthRE = regexp.MustCompile(`(?s)<TargetHealth>.*?</TargetHealth>`)
)

// TestSchedulerLoadBalancerTargetHealth: a rollout counts a new task
// available only once the load balancer itself reports its target
// healthy (DescribeTargetHealth), not merely Healthy on its agent. moto
// runs no health checks: it reports every registered ip target healthy at
// once, which the test checks first. The load balancer's failing checks
// are then played by a proxy in front of moto that answers
// DescribeTargetHealth with the new targets unhealthy
// (Target.ResponseCodeMismatch, as an ALB getting 502s): the update's new
// task, Healthy on its agent and registered, never counts, and the
// rollout rolls back at its deadline naming the group and the reason,
// while the old revision's targets stay registered throughout.
func TestSchedulerLoadBalancerTargetHealth(t *testing.T) {
	begin(t)
	t0 := time.Now()
	phase := func(what string) { t.Logf("%5.1fs %s", time.Since(t0).Seconds(), what) }
	b := newLBBedProxied(t, true)
	phase("bed up")
	job := b.sched.submit(b.jobFile("1"))
	v1 := b.waitInSync("both tasks registered", job, 2)
	phase("registered")

	// What moto says of registered ip targets: healthy, at once.
	out, err := b.elb.DescribeTargetHealth(context.Background(), &elbv2.DescribeTargetHealthInput{TargetGroupArn: aws.String(b.tg)})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range out.TargetHealthDescriptions {
		if d.TargetHealth == nil || d.TargetHealth.State != types.TargetHealthStateEnumHealthy {
			t.Fatalf("moto reports %s as %+v: the test assumes moto calls every registered ip target healthy", aws.ToString(d.Target.Id), d.TargetHealth)
		}
	}
	waitUntil(t, "the scheduler records the load balancer's view", 30*time.Second, func() (bool, string) {
		h := b.lbHealthOf(job)
		n := 0
		for _, v := range h {
			if v == "registered/healthy" {
				n++
			}
		}
		return n == 2, fmt.Sprint(h)
	})

	// From now on the load balancer's checks fail for any target not of v1.
	v1IPs := map[string]bool{}
	for _, r := range v1 {
		ip, _, _ := strings.Cut(r, ":")
		v1IPs[ip] = true
	}
	b.proxy.Rewrite("DescribeTargetHealth", func(body []byte) []byte {
		return memberRE.ReplaceAllFunc(body, func(m []byte) []byte {
			id := idRE.FindSubmatch(m)
			if id == nil || v1IPs[string(id[1])] {
				return m
			}
			return healthRE.ReplaceAll(m, []byte(`<TargetHealth><State>unhealthy</State><Reason>Target.ResponseCodeMismatch</Reason><Description>Health checks failed with these codes: [502]</Description></TargetHealth>`))
		})
	})
	var mu sync.Mutex
	missing := []string{}
	stop := make(chan struct{})
	var watch sync.WaitGroup
	watch.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if reg, err := b.registered(); err == nil {
				for _, r := range v1 {
					if !slices.Contains(reg, r) {
						mu.Lock()
						missing = append(missing, r)
						mu.Unlock()
					}
				}
			}
		}
	})
	f := filepath.Join(b.sched.dir, "v2.yaml")
	v2 := strings.Replace(b.jobFile("2"), `update: {maxSurge: "1", maxUnavailable: "0"}`, `update: {maxSurge: "1", maxUnavailable: "0", progressDeadlineSeconds: 5}`, 1)
	if err := os.WriteFile(f, []byte(v2), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := b.sched.cli("job", "update", job, "-f", f); err != nil {
		t.Fatalf("job update: %v\n%s", err, out)
	}
	waitUntil(t, "a new task registered, unhealthy in the load balancer", 30*time.Second, func() (bool, string) {
		h := b.lbHealthOf(job)
		for ip, v := range h {
			if !v1IPs[ip] && v == "registered/unhealthy" {
				return true, ""
			}
		}
		return false, fmt.Sprint(h)
	})
	if r := b.sched.jobJSON(job)["rollout"].(map[string]any); r["state"] != "STATE_PROGRESSING" || fmt.Sprint(r["updated"]) != "<nil>" && fmt.Sprint(r["updated"]) != "0" {
		t.Errorf("while the new task is unhealthy in the load balancer: %v, want progressing with none updated", r)
	}
	waitUntil(t, "rolled back at the deadline", 60*time.Second, func() (bool, string) {
		r := b.sched.jobJSON(job)["rollout"].(map[string]any)
		return r["state"] == "STATE_ROLLED_BACK", fmt.Sprint(r)
	})
	phase("rolled back")
	r := b.sched.jobJSON(job)["rollout"].(map[string]any)
	if reason := fmt.Sprint(r["reason"]); !strings.Contains(reason, "targetgroup/web/") || !strings.Contains(reason, "unhealthy (Target.ResponseCodeMismatch: Health checks failed with these codes: [502])") {
		t.Errorf("rollback reason %q: want the group and the load balancer's reason", reason)
	}
	if got := b.waitInSync("v1 alone registered after the rollback", job, 2); !slices.Equal(got, v1) {
		t.Errorf("registered after the rollback %v, want v1's %v", got, v1)
	}
	close(stop)
	watch.Wait()
	if len(missing) > 0 {
		t.Errorf("v1 targets left the group during the failed rollout: %v", missing)
	}
	phase("v1 alone")
	b.proxy.Rewrite("DescribeTargetHealth", nil)
	defer phase("job killed")
	if out, err := b.sched.cli("job", "kill", job); err != nil {
		t.Fatalf("job kill: %v\n%s", err, out)
	}
	waitUntil(t, "group empty, tasks gone", 60*time.Second, func() (bool, string) {
		reg, err := b.registered()
		return err == nil && len(reg) == 0 && len(running(b.agent)) == 0, fmt.Sprintf("group %v, running %v, err %v", reg, running(b.agent), err)
	})
	b.agent.assertNoLeftovers()
}
