package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/containerd/errdefs"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/tasklog"
)

// taskLogReader reads a task's log files for the scheduler's relayed log
// reads (titus-scheduler task logs). Only tasks this agent knows are read:
// the id is looked up before it names a directory.
type taskLogReader struct {
	tasks interface {
		Get(id string) (taskView, error)
	}
	logDir string
	log    *slog.Logger
}

// taskView is what the reader needs of a task: whether it has ended.
type taskView struct{ ended bool }

// managerTasks adapts the Manager to taskLogReader.
type managerTasks struct{ m *Manager }

func (t managerTasks) Get(id string) (taskView, error) {
	v, err := t.m.Get(id)
	if err != nil {
		return taskView{}, err
	}
	return taskView{ended: v.Status.State.Terminal()}, nil
}

func (r taskLogReader) read(ctx context.Context, open *schedv1.LogsRelayOpen, send func([]byte) error) error {
	id := open.GetTaskId()
	if _, err := r.tasks.Get(id); err != nil {
		return err
	}
	o := tasklog.ReadOptions{Stream: "stdout", Follow: open.GetFollow(), Ended: func() bool {
		v, err := r.tasks.Get(id)
		return err != nil || v.ended
	}}
	if open.GetStderr() {
		o.Stream = "stderr"
	}
	if open.GetSince() != nil {
		o.Since = open.GetSince().AsTime()
	}
	r.log.Info("task log read relayed by the scheduler", "task", id, "principal", open.GetPrincipal(), "stream", o.Stream, "follow", o.Follow)
	err := tasklog.Read(ctx, filepath.Join(r.logDir, id), o, send)
	if errors.Is(err, tasklog.ErrNoStream) {
		return fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
	}
	return err
}
