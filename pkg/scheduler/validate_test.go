package scheduler

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
)

func validJob() *schedv1.JobSpec {
	return &schedv1.JobSpec{OwnerEmail: "team@example.com", Application: "app",
		Kind: &schedv1.JobSpec_Batch{Batch: &schedv1.BatchJob{Size: 3}},
		Task: &agentv1.TaskSpec{Image: "img:1", Resources: &agentv1.Resources{CpuMillicores: 100, MemoryMib: 64}}}
}

func TestValidateJob(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*schedv1.JobSpec)
		fields []string
	}{
		{"valid", func(*schedv1.JobSpec) {}, nil},
		{"owner", func(s *schedv1.JobSpec) { s.OwnerEmail = "x" }, []string{"owner_email"}},
		{"no app", func(s *schedv1.JobSpec) { s.Application = "" }, []string{"application"}},
		{"no kind", func(s *schedv1.JobSpec) { s.Kind = nil }, []string{"kind"}},
		{"size", func(s *schedv1.JobSpec) { s.GetBatch().Size = MaxTasksPerJob + 1 }, []string{"batch.size"}},
		{"service bounds", func(s *schedv1.JobSpec) {
			s.Kind = &schedv1.JobSpec_Service{Service: &schedv1.ServiceJob{Min: 3, Desired: 2, Max: 4}}
		}, []string{"service.desired"}},
		{"retry", func(s *schedv1.JobSpec) {
			s.GetBatch().Retry = &schedv1.RetryPolicy{DelayMs: 10, MaxDelayMs: 5}
		}, []string{"batch.retry.max_delay_ms"}},
		{"task fields", func(s *schedv1.JobSpec) { s.Task.Image = ""; s.Task.Resources.CpuMillicores = -1 },
			[]string{"task.image", "task.resources.cpu_millicores"}},
		{"no task", func(s *schedv1.JobSpec) { s.Task = nil }, []string{"task"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validJob()
			tt.mutate(s)
			_, err := ValidateJob(s)
			var got []string
			if err != nil {
				var ve *ValidationError
				if !errors.As(err, &ve) || !errors.Is(err, ErrInvalidJob) {
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
	s.GetBatch().RuntimeLimitSeconds = 60
	tmpl, err := ValidateJob(s)
	if err != nil {
		t.Fatal(err)
	}
	if tmpl.OwnerEmail != "team@example.com" || tmpl.MaxRuntime != time.Minute || tmpl.ID != "" {
		t.Fatalf("template %+v", tmpl)
	}
	if !strings.HasPrefix(TaskID("j", 2, 3), "j.") {
		t.Fatal(TaskID("j", 2, 3))
	}
}

func TestRetryDelay(t *testing.T) {
	ms := time.Millisecond
	expo := &schedv1.RetryPolicy{Kind: schedv1.RetryPolicy_KIND_EXPONENTIAL, DelayMs: 100, MaxDelayMs: 500}
	tests := []struct {
		name  string
		p     *schedv1.RetryPolicy
		fails []uint32
		want  []time.Duration
	}{
		{"immediate, then the crash-loop floor", &schedv1.RetryPolicy{}, []uint32{1, 2, 3, 4, 5, 20}, []time.Duration{0, 0, 10 * ms, 20 * ms, 40 * ms, time.Second}},
		{"delayed", &schedv1.RetryPolicy{Kind: schedv1.RetryPolicy_KIND_DELAYED, DelayMs: 300}, []uint32{1, 2, 3}, []time.Duration{300 * ms, 300 * ms, 300 * ms}},
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
	s := &Scheduler{opts: Options{MaxPendingTotal: 100}}
	flex := &groupState{cfg: &Group{Name: "f", Tier: TierFlex, MaxPending: 10, CPUMillicores: 1}}
	crit := &groupState{cfg: &Group{Name: "c", Tier: TierCritical, MaxPending: 1000, CPUMillicores: 1000}}
	tests := []struct {
		name    string
		g       *groupState
		n       int
		fp      resources
		total   int
		wantErr error
	}{
		{"fits", flex, 10, resources{}, 0, nil},
		{"group queue full", flex, 11, resources{}, 0, ErrQueueFull},
		{"total queue full", crit, 50, resources{}, 60, ErrQueueFull},
		{"flex may exceed its quota (queued)", flex, 1, resources{CPU: 5000}, 0, nil},
		{"critical may not", crit, 1, resources{CPU: 1001}, 0, ErrQuotaExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.pendingTotal = tt.total
			err := s.admit(tt.g, tt.n, tt.fp)
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("admit = %v, want %v", err, tt.wantErr)
			}
		})
	}
}
