package main

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
)

// rollout status shows what the automatic rollback counts while a
// rollout progresses: the consecutive failures, the last one, and the
// deadline clock's last progress.
func TestPrintRolloutFailures(t *testing.T) {
	at := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	j := &schedv1.Job{Id: "j", Revision: 2, Spec: &schedv1.JobSpec{Kind: &schedv1.JobSpec_Service{Service: &schedv1.ServiceJob{Desired: 2}}},
		Rollout: &schedv1.Rollout{State: schedv1.Rollout_STATE_PROGRESSING, FromRevision: 1, ToRevision: 2, Started: timestamppb.New(at),
			Failures: 2, LastFailure: "task j.0.3 Failed (NonZeroExit)", ProgressAt: timestamppb.New(at)}}
	var b strings.Builder
	printRollout(&b, j)
	for _, want := range []string{"consecutive failures of new tasks: 2, last: task j.0.3 Failed (NonZeroExit)", "last progress: "} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("rollout status lacks %q:\n%s", want, b.String())
		}
	}
	j.Rollout.State = schedv1.Rollout_STATE_COMPLETE
	b.Reset()
	printRollout(&b, j)
	if strings.Contains(b.String(), "consecutive failures") {
		t.Errorf("a complete rollout shows the failure count:\n%s", b.String())
	}
}
