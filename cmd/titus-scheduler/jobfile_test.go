package main

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
)

func TestParseJobFileReportsTheYAMLLine(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"misspelt field", `ownerEmail: a@example.com
application: app
batch: {size: 1}
task:
  image: x:1
  resources:
    memmory: 64
`, `job.yaml:7:5: task.resources.memmory: unknown field "memmory"`},
		{"boolean where a string belongs", `task:
  image: x:1
  command: [true]
`, `job.yaml:3:13: task.command[0]: YAML reads true as a boolean, not a string: quote it ("true")`},
		{"number in an env map", `task:
  env:
    PORT: 8080
`, `job.yaml:3:11: task.env.PORT: YAML reads 8080 as a number, not a string: quote it ("8080")`},
		{"not a mapping", "- a\n", `job.yaml:1:1: (top): must be a mapping of fields`},
		{"a bare count for a budget", `service:
  disruptionBudget: {maxUnavailable: 1}
`, `job.yaml:2:38: service.disruptionBudget.maxUnavailable: YAML reads 1 as a number, not a string: quote it ("1")`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseJobFile("job.yaml", []byte(tt.yaml))
			if err == nil || err.Error() != tt.want {
				t.Fatalf("err = %v\nwant  %s", err, tt.want)
			}
		})
	}
}

func TestParseJobFileAcceptsBothFieldSpellings(t *testing.T) {
	got, err := parseJobFile("job.yaml", []byte(`owner_email: a@example.com
application: app
capacityGroup: g
service: {min: 1, desired: 2, max: 3, retry: {kind: KIND_EXPONENTIAL, delayMs: 5}}
labels: {team: "x"}
task:
  image: registry.example/x:1
  command: ["true", "1"]
  resources: {cpuMillicores: 500, memory_mib: 64}
`))
	if err != nil {
		t.Fatal(err)
	}
	want := &schedv1.JobSpec{OwnerEmail: "a@example.com", Application: "app", CapacityGroup: "g", Labels: map[string]string{"team": "x"},
		Kind: &schedv1.JobSpec_Service{Service: &schedv1.ServiceJob{Min: 1, Desired: 2, Max: 3,
			Retry: &schedv1.RetryPolicy{Kind: schedv1.RetryPolicy_KIND_EXPONENTIAL, DelayMs: 5}}},
		Task: &agentv1.TaskSpec{Image: "registry.example/x:1", Command: []string{"true", "1"},
			Resources: &agentv1.Resources{CpuMillicores: 500, MemoryMib: 64}}}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Fatalf("spec (-want +got):\n%s", diff)
	}
}

// TestParseJobFileRolloutPolicies: the update strategy and budget of
// docs/rollouts.md's example come through.
func TestParseJobFileRolloutPolicies(t *testing.T) {
	spec, err := parseJobFile("job.yaml", []byte(`application: web
ownerEmail: web@example.com
service:
  desired: 6
  max: 12
  disruptionBudget: {maxUnavailable: "10%"}
  update: {maxSurge: "1", maxUnavailable: "1", progressDeadlineSeconds: 300, maxFailures: 3}
task: {image: "registry.example/web:2"}
`))
	if err != nil {
		t.Fatal(err)
	}
	want := &schedv1.ServiceJob{Desired: 6, Max: 12, DisruptionBudget: &schedv1.DisruptionBudget{MaxUnavailable: "10%"},
		Update: &schedv1.UpdateStrategy{MaxSurge: "1", MaxUnavailable: "1", ProgressDeadlineSeconds: 300, MaxFailures: 3}}
	if diff := cmp.Diff(want, spec.GetService(), protocmp.Transform()); diff != "" {
		t.Errorf("service (-want +got):\n%s", diff)
	}
}

func TestParseJobFileHealthCheck(t *testing.T) {
	got, err := parseJobFile("job.yaml", []byte(`owner_email: a@example.com
application: app
service: {min: 1, desired: 1, max: 1, unhealthy_replace_after_seconds: 30}
task:
  image: registry.example/x:1
  health_check: {kind: http, port: 8080, path: /healthz, interval: 5s, timeout: 1500ms, healthy_threshold: 1, unhealthyThreshold: 3, start_period: 1m}
`))
	if err != nil {
		t.Fatal(err)
	}
	h := task.HealthCheckFromProto(got.GetTask().GetHealthCheck())
	want := &task.HealthCheck{Kind: task.HealthHTTP, Port: 8080, Path: "/healthz", Interval: 5 * time.Second, Timeout: 1500 * time.Millisecond,
		HealthyThreshold: 1, UnhealthyThreshold: 3, StartPeriod: time.Minute}
	if diff := cmp.Diff(want, h); diff != "" {
		t.Fatalf("health check (-want +got):\n%s", diff)
	}
	if got.GetService().GetUnhealthyReplaceAfterSeconds() != 30 {
		t.Fatalf("service %v", got.GetService())
	}
}

// TestParseJobFileLoadBalancersSpelling: a service's target groups may be
// written as loadBalancers: [{targetGroupArn, port}]; both spellings of
// one field at once are refused at the second's line.
func TestParseJobFileLoadBalancersSpelling(t *testing.T) {
	arn := "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123456789abcdef"
	got, err := parseJobFile("job.yaml", []byte(`service:
  desired: 1
  loadBalancers: [{targetGroupArn: "`+arn+`", port: 8080}]
`))
	if err != nil {
		t.Fatal(err)
	}
	want := &schedv1.JobSpec{Kind: &schedv1.JobSpec_Service{Service: &schedv1.ServiceJob{Desired: 1,
		TargetGroups: []*schedv1.TargetGroup{{Arn: arn, Port: 8080}}}}}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Fatalf("spec (-want +got):\n%s", diff)
	}
	for _, bad := range []string{
		"service:\n  targetGroups: []\n  loadBalancers: []\n",
		"service:\n  loadBalancers: [{arn: x, targetGroupArn: y}]\n",
	} {
		_, err := parseJobFile("job.yaml", []byte(bad))
		if err == nil || !strings.Contains(err.Error(), "the same field as") {
			t.Errorf("%q: %v, want refused", bad, err)
		}
	}
	if _, err := parseJobFile("job.yaml", []byte("service:\n  loadBalancer: []\n")); err == nil || !strings.Contains(err.Error(), `service.loadBalancer: unknown field "loadBalancer"`) {
		t.Errorf("a misspelling: %v", err)
	}
}
