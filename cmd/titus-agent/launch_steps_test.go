package main

import (
	"bytes"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
)

func TestPrintLaunchSteps(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 6, 0, 0, 0, time.UTC)
	at := func(ms float64) time.Time { return t0.Add(time.Duration(ms * float64(time.Millisecond))) }
	dur := func(ms float64) time.Duration { return time.Duration(ms * float64(time.Millisecond)) }
	// Through the record's own type and back, as the agent sends it.
	trs := []task.Transition{
		{State: task.Accepted, Time: at(0)},
		{State: task.Preparing, Time: at(1)},
		{State: task.Starting, Time: at(30), Steps: []task.Step{
			{Name: "network", Start: at(2), Took: dur(10)},
			{Name: "image", Start: at(2), Took: dur(12.5)},
			{Name: "disk", Start: at(15), Took: dur(14), Failed: true},
		}},
		{State: task.Failed, Time: at(31)},
	}
	var wire []*agentv1.Transition
	for _, tr := range trs {
		p := task.TransitionToProto(tr)
		if diff := cmp.Diff(tr, task.TransitionFromProto(p)); diff != "" {
			t.Errorf("round trip (-want +got):\n%s", diff)
		}
		wire = append(wire, p)
	}
	var b bytes.Buffer
	printLaunchSteps(&b, wire)
	want := `Launch steps (from accepted):
  STEP         BEGAN    READY    TOOK
  network      +2.0ms   +12.0ms  10.0ms
  image        +2.0ms   +14.5ms  12.5ms
  disk         +15.0ms  +29.0ms  14.0ms failed
  -> STARTING           +30.0ms
`
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("output (-want +got):\n%s", diff)
	}
	b.Reset()
	printLaunchSteps(&b, []*agentv1.Transition{{Time: timestamppb.New(t0), Steps: nil}, {Time: timestamppb.New(t0), Steps: []*agentv1.LaunchStep{{Name: "x", Start: timestamppb.New(t0), Took: durationpb.New(0)}}}})
	if b.Len() == 0 {
		t.Error("a step printed nothing")
	}
}
