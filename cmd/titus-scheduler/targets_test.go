package main

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
)

// job get lists each task's state in each target group, the load
// balancer's health of it, and the error of a failing call.
func TestPrintTargets(t *testing.T) {
	const arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123456789abcdef"
	var b strings.Builder
	printTargets(&b, []*schedv1.Task{
		{Id: "j.0.1", Ip: "198.18.0.10", Targets: []*schedv1.TargetRegistration{{Arn: arn, Port: 8080, State: "registered", LbHealth: "healthy"}}},
		{Id: "j.1.1", Ip: "198.18.0.11", Targets: []*schedv1.TargetRegistration{{Arn: arn, Port: 8080, State: "pending", Error: "Throttling"}}},
		{Id: "j.2.1"}, // no IP yet: no row
	})
	var got [][]string
	for _, l := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		got = append(got, strings.Fields(l))
	}
	want := [][]string{
		{"TASK", "IP", "TARGET", "GROUP", "PORT", "LB", "STATE", "LB", "HEALTH", "SINCE", "ERROR"},
		{"j.0.1", "198.18.0.10", arn, "8080", "registered", "healthy", "-", "-"},
		{"j.1.1", "198.18.0.11", arn, "8080", "pending", "-", "-", "Throttling"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("printTargets (-want +got):\n%s", diff)
	}
}
