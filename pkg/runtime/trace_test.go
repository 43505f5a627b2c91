package runtime

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestStepTrace(t *testing.T) {
	step(context.Background(), StepTaskStart, time.Now(), nil) // no trace: nothing happens
	type got struct {
		Name   string
		Failed bool
	}
	var steps []got
	ctx := WithStepTrace(context.Background(), func(name string, start time.Time, took time.Duration, err error) {
		if took < 0 || start.IsZero() {
			t.Errorf("step %s: start %v took %v", name, start, took)
		}
		steps = append(steps, got{name, err != nil})
	})
	step(ctx, StepContainerCreate, time.Now(), nil)
	step(r(ctx), StepTaskCreate, time.Now(), errors.New("shim died"))
	want := []got{{StepContainerCreate, false}, {StepTaskCreate, true}}
	if diff := cmp.Diff(want, steps); diff != "" {
		t.Errorf("steps (-want +got):\n%s", diff)
	}
}

// r is what the runtime does to every context: the trace survives it.
func r(ctx context.Context) context.Context {
	return (&Runtime{cfg: Config{Namespace: "ns"}}).ctx(ctx)
}
