package core

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/scheduler/constraint"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

func validJob() model.JobSpec {
	return model.JobSpec{OwnerEmail: "team@example.com", Application: "app",
		Batch: &model.BatchJob{Size: 3},
		Task:  &task.Spec{Image: "img:1", Resources: task.Resources{CPUMillicores: 100, MemoryMiB: 64}}}
}

func TestValidateJob(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*model.JobSpec)
		fields []string
	}{
		{"valid", func(*model.JobSpec) {}, nil},
		{"owner", func(s *model.JobSpec) { s.OwnerEmail = "x" }, []string{"owner_email"}},
		{"no app", func(s *model.JobSpec) { s.Application = "" }, []string{"application"}},
		{"no kind", func(s *model.JobSpec) { s.Batch = nil }, []string{"kind"}},
		{"size", func(s *model.JobSpec) { s.Batch.Size = MaxTasksPerJob + 1 }, []string{"batch.size"}},
		{"service bounds", func(s *model.JobSpec) {
			s.Batch, s.Service = nil, &model.ServiceJob{Min: 3, Desired: 2, Max: 4}
		}, []string{"service.desired"}},
		{"unhealthy replace after", func(s *model.JobSpec) {
			s.Batch, s.Service = nil, &model.ServiceJob{Min: 1, Desired: 1, Max: 1, UnhealthyReplaceAfterSeconds: -1}
		}, []string{"service.unhealthy_replace_after_seconds"}},
		{"task health check", func(s *model.JobSpec) {
			s.Task.HealthCheck = &task.HealthCheck{Kind: task.HealthHTTP, Port: 70000, Interval: 0, Timeout: time.Second, HealthyThreshold: 1, UnhealthyThreshold: 0}
		}, []string{"task.health_check.port", "task.health_check.interval", "task.health_check.timeout", "task.health_check.unhealthy_threshold"}},
		{"retry", func(s *model.JobSpec) {
			s.Batch.Retry = &model.RetryPolicy{DelayMs: 10, MaxDelayMs: 5}
		}, []string{"batch.retry.max_delay_ms"}},
		{"task fields", func(s *model.JobSpec) { s.Task.Image = ""; s.Task.Resources.CPUMillicores = -1 },
			[]string{"task.image", "task.resources.cpu_millicores"}},
		{"no task", func(s *model.JobSpec) { s.Task = nil }, []string{"task"}},
		{"cpu burst above the quota", func(s *model.JobSpec) {
			s.Task.Resources.CPUMillicores, s.Task.Resources.CPUBurstMillicores = 1000, 4000
		},
			[]string{"task.resources.cpu_burst_millicores"}},
		// The job's labels become the task's STS session tags: a tenant
		// naming another application there would borrow its trust.
		{"reserved job label", func(s *model.JobSpec) { s.Task.Labels = map[string]string{task.LabelApplication: "other"} },
			[]string{"task.labels"}},
		{"image outside the reference grammar", func(s *model.JobSpec) { s.Task.Image = "UPPER/Case::bad" }, []string{"task.image"}},
		{"placement", func(s *model.JobSpec) {
			s.Placement = constraint.Spec{Constraints: []string{"zone in [a, b]"}, Preferences: []constraint.PreferenceSpec{{Constraint: "label.tier = gold", Weight: 5}},
				MaxPerHost: 1, ZoneBalance: constraint.ZoneHard, InstanceFamilies: []string{"m5"}}
		}, nil},
		{"constraint syntax", func(s *model.JobSpec) { s.Placement.Constraints = []string{"zone = a", "zone ~ a"} },
			[]string{"placement.constraints[1]"}},
		// Constraints see host attributes only: nothing names another tenant's jobs.
		{"constraint on a non-host attribute", func(s *model.JobSpec) { s.Placement.Constraints = []string{"job.application = other"} },
			[]string{"placement.constraints[0]"}},
		{"preference weight", func(s *model.JobSpec) {
			s.Placement.Preferences = []constraint.PreferenceSpec{{Constraint: "zone = a", Weight: 1000}}
		}, []string{"placement.preferences[0].weight"}},
		{"budget and update strategy", func(s *model.JobSpec) {
			s.Batch, s.Service = nil, &model.ServiceJob{Desired: 2, Max: 2, Budget: &model.DisruptionBudget{MaxUnavailable: "25%"},
				Update: &model.UpdateStrategy{MaxSurge: "1", MaxUnavailable: "0", ProgressDeadlineSeconds: 60}}
		}, nil},
		{"budget percent over 100", func(s *model.JobSpec) {
			s.Batch, s.Service = nil, &model.ServiceJob{Desired: 2, Max: 2, Budget: &model.DisruptionBudget{MaxUnavailable: "150%"}}
		}, []string{"service.disruption_budget.max_unavailable"}},
		{"budget of 0", func(s *model.JobSpec) {
			s.Batch, s.Service = nil, &model.ServiceJob{Desired: 2, Max: 2, Budget: &model.DisruptionBudget{MaxUnavailable: "0"}}
		}, []string{"service.disruption_budget.max_unavailable"}},
		{"budget not a number", func(s *model.JobSpec) {
			s.Batch, s.Service = nil, &model.ServiceJob{Desired: 2, Max: 2, Budget: &model.DisruptionBudget{MaxUnavailable: "-1"}}
		}, []string{"service.disruption_budget.max_unavailable"}},
		{"surge and unavailable both 0", func(s *model.JobSpec) {
			s.Batch, s.Service = nil, &model.ServiceJob{Desired: 2, Max: 2, Update: &model.UpdateStrategy{MaxSurge: "0%", MaxUnavailable: "0"}}
		}, []string{"service.update"}},
		{"update percents and deadline", func(s *model.JobSpec) {
			s.Batch, s.Service = nil, &model.ServiceJob{Desired: 2, Max: 2,
				Update: &model.UpdateStrategy{MaxSurge: "101%", MaxUnavailable: "x", ProgressDeadlineSeconds: -1}}
		}, []string{"service.update.max_surge", "service.update.max_unavailable", "service.update.progress_deadline_seconds"}},
		{"unbounded regex", func(s *model.JobSpec) { s.Placement.Constraints = []string{"ami =~ (x+x+)+y{999}"} },
			[]string{"placement.constraints[0]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validJob()
			tt.mutate(&s)
			_, err := ValidateJob(s)
			var got []string
			if err != nil {
				var ve *ValidationError
				if !errors.As(err, &ve) || !errors.Is(err, model.ErrInvalidJob) {
					t.Fatalf("error %v is not a job ValidationError", err)
				}
				for _, f := range ve.Fields {
					got = append(got, f.Field)
				}
			}
			if diff := cmp.Diff(tt.fields, got); diff != "" {
				t.Errorf("fields (-want +got):\n%s", diff)
			}
		})
	}
}

func TestValidateJobTemplate(t *testing.T) {
	s := validJob()
	s.Batch.RuntimeLimitSeconds = 60
	tmpl, err := ValidateJob(s)
	if err != nil {
		t.Fatal(err)
	}
	if tmpl.OwnerEmail != "team@example.com" || tmpl.MaxRuntime != time.Minute || tmpl.ID != "" {
		t.Fatalf("template %+v", tmpl)
	}
	if !strings.HasPrefix(model.TaskID("j", 2, 3), "j.") {
		t.Fatal(model.TaskID("j", 2, 3))
	}
}

func TestRetryDelay(t *testing.T) {
	ms := time.Millisecond
	expo := model.RetryPolicy{Kind: model.RetryExponential, DelayMs: 100, MaxDelayMs: 500}
	tests := []struct {
		name  string
		p     model.RetryPolicy
		fails []uint32
		want  []time.Duration
	}{
		{"immediate, then the crash-loop floor", model.RetryPolicy{}, []uint32{1, 2, 3, 4, 5, 20}, []time.Duration{0, 0, 10 * ms, 20 * ms, 40 * ms, time.Second}},
		{"delayed", model.RetryPolicy{Kind: model.RetryDelayed, DelayMs: 300}, []uint32{1, 2, 3}, []time.Duration{300 * ms, 300 * ms, 300 * ms}},
		{"exponential with cap", expo, []uint32{1, 2, 3, 4, 10}, []time.Duration{100 * ms, 200 * ms, 400 * ms, 500 * ms, time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []time.Duration
			for _, n := range tt.fails {
				got = append(got, retryDelay(tt.p, n, 10*ms, time.Second))
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("delays (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAdmitBounds(t *testing.T) {
	s := &Core{opts: Config{MaxPendingTotal: 100}}
	flex := &groupState{cfg: &model.Group{Name: "f", Tier: model.TierFlex, MaxPending: 10, CPUMillicores: 1}}
	crit := &groupState{cfg: &model.Group{Name: "c", Tier: model.TierCritical, MaxPending: 1000, CPUMillicores: 1000}}
	tests := []struct {
		name    string
		g       *groupState
		n       int
		fp      model.Resources
		total   int
		wantErr error
	}{
		{"fits", flex, 10, model.Resources{}, 0, nil},
		{"group queue full", flex, 11, model.Resources{}, 0, model.ErrQueueFull},
		{"total queue full", crit, 50, model.Resources{}, 60, model.ErrQueueFull},
		{"flex may exceed its quota (queued)", flex, 1, model.Resources{CPU: 5000}, 0, nil},
		{"critical may not", crit, 1, model.Resources{CPU: 1001}, 0, model.ErrQuotaExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.q.pendingTotal = tt.total
			err := s.admit(tt.g, tt.n, tt.fp)
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("admit = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestJobLabels(t *testing.T) {
	in := map[string]string{"a": "1", task.LabelApplication: "forged", task.LabelSubmitter: "forged", "titus.job/x": "y"}
	got := jobLabels(in, "job-1", "billing", "alice@example.com")
	want := map[string]string{"a": "1", task.LabelApplication: "billing", task.LabelJobID: "job-1", task.LabelSubmitter: "alice@example.com"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if in[task.LabelApplication] != "forged" {
		t.Error("the job's template labels were changed")
	}
}
