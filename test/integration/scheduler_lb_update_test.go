package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"
)

// TestSchedulerLoadBalancerUpdateMovesGroups: `job update` with another
// target group (web → web2) is a rollout: each new task joins web2 once
// Running and Healthy, each old one leaves web before it is stopped; the
// two groups together never hold fewer than the job's 2 tasks (surge 1,
// none unavailable), and at the end web is empty and web2 holds exactly
// the serving tasks. A job kill then leaves both groups empty.
func TestSchedulerLoadBalancerUpdateMovesGroups(t *testing.T) {
	begin(t)
	b := newLBBed(t)
	ctx := context.Background()
	out, err := b.elb.CreateTargetGroup(ctx, &elbv2.CreateTargetGroupInput{Name: aws.String("web2"), TargetType: types.TargetTypeEnumIp,
		Protocol: types.ProtocolEnumHttp, Port: aws.Int32(8080), VpcId: aws.String(b.vpcOf(t))})
	if err != nil {
		t.Fatalf("create target group: %v", err)
	}
	web2 := aws.ToString(out.TargetGroups[0].TargetGroupArn)
	job := b.sched.submit(b.jobFile("1"))
	b.waitInSync("both tasks in web", job, 2)

	var mu sync.Mutex
	low, stop := 1<<30, make(chan struct{})
	var watch sync.WaitGroup
	watch.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			a, err1 := b.registeredIn(b.tg)
			c, err2 := b.registeredIn(web2)
			if err1 == nil && err2 == nil {
				mu.Lock()
				low = min(low, len(a)+len(c))
				mu.Unlock()
			}
		}
	})
	f := filepath.Join(b.sched.dir, "web2.yaml")
	v2 := strings.Replace(b.jobFile("1"), fmt.Sprintf("targetGroups: [{arn: %q, port: 8080}]", b.tg), fmt.Sprintf("targetGroups: [{arn: %q, port: 8080}]", web2), 1)
	if err := os.WriteFile(f, []byte(v2), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := b.sched.cli("job", "update", job, "-f", f); err != nil {
		t.Fatalf("job update: %v\n%s", err, out)
	}
	waitUntil(t, "rollout complete", 60*time.Second, func() (bool, string) {
		r, _ := b.sched.jobJSON(job)["rollout"].(map[string]any)
		return r["state"] == "STATE_COMPLETE", fmt.Sprint(r)
	})
	waitUntil(t, "web empty, web2 holds the serving tasks", 30*time.Second, func() (bool, string) {
		a, err1 := b.registeredIn(b.tg)
		c, err2 := b.registeredIn(web2)
		want := b.serving(job)
		return err1 == nil && err2 == nil && len(a) == 0 && len(want) == 2 && slices.Equal(c, want), fmt.Sprintf("web %v, web2 %v, serving %v", a, c, want)
	})
	close(stop)
	watch.Wait()
	if low < 2 {
		t.Errorf("the two groups held %d targets during the move, want at least 2", low)
	}
	if out, err := b.sched.cli("job", "kill", job); err != nil {
		t.Fatalf("job kill: %v\n%s", err, out)
	}
	waitUntil(t, "both groups empty, tasks gone", 60*time.Second, func() (bool, string) {
		a, err1 := b.registeredIn(b.tg)
		c, err2 := b.registeredIn(web2)
		return err1 == nil && err2 == nil && len(a)+len(c) == 0 && len(running(b.agent)) == 0, fmt.Sprintf("web %v, web2 %v, running %v", a, c, running(b.agent))
	})
	b.agent.assertNoLeftovers()
}

// vpcOf is the VPC of the bed's target group.
func (b *lbBed) vpcOf(t *testing.T) string {
	out, err := b.elb.DescribeTargetGroups(context.Background(), &elbv2.DescribeTargetGroupsInput{TargetGroupArns: []string{b.tg}})
	if err != nil || len(out.TargetGroups) == 0 {
		t.Fatalf("describe target group: %v", err)
	}
	return aws.ToString(out.TargetGroups[0].VpcId)
}
