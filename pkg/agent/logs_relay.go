package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"time"

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
	// stall: how long a read may wait for its caller once the task has
	// ended (default 1s), well within a disk unmount's retries.
	stall time.Duration
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

func (r taskLogReader) read(ctx context.Context, open *schedv1.LogsRelayOpen, send func(context.Context, []byte) error) error {
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
	// A caller that stops reading stops the reader with its file open
	// (flow control). Once the task has ended, its disk (which holds a
	// quota'd task's logs) must be free to unmount: a read stalled that
	// long after the end is ended.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var blockedSince atomic.Int64
	go func() {
		t := time.NewTicker(r.stallCheck())
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			b := blockedSince.Load()
			if b != 0 && time.Since(time.Unix(0, b)) > r.stallCheck() && o.Ended() {
				cancel(errStalledAfterEnd)
				return
			}
		}
	}()
	err := tasklog.Read(ctx, filepath.Join(r.logDir, id), o, func(p []byte) error {
		blockedSince.Store(time.Now().UnixNano())
		defer blockedSince.Store(0)
		return send(ctx, p)
	})
	if c := context.Cause(ctx); errors.Is(c, errStalledAfterEnd) {
		return c
	}
	if errors.Is(err, tasklog.ErrNoStream) {
		return fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
	}
	return err
}

// errStalledAfterEnd ends a read whose caller stopped taking the log after
// the task ended.
var errStalledAfterEnd = errdefs.ErrAborted.WithMessage("the task ended while this log read waited for its caller; read it again")

func (r taskLogReader) stallCheck() time.Duration {
	if r.stall > 0 {
		return r.stall
	}
	return time.Second
}
