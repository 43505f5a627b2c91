package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
)

// fakeLogTasks knows one task, "t1", and whether it has ended.
type fakeLogTasks struct{ ended atomic.Bool }

func (f *fakeLogTasks) Get(id string) (taskView, error) {
	if id != "t1" {
		return taskView{}, ErrTaskNotFound
	}
	return taskView{ended: f.ended.Load()}, nil
}

// TestTaskLogReaderEndsAStalledReadAfterTheTask: a caller that stops
// taking the log holds the agent's reader, and with it the log file, which
// on a quota'd task lives on the task's disk. Once the task has ended,
// such a read is ended (Aborted) so the disk can be unmounted; while the
// task runs it is only held. Unknown tasks are never read.
func TestTaskLogReaderEndsAStalledReadAfterTheTask(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "t1"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "t1", "stdout.log"), []byte(strings.Repeat("x", 1<<20)), 0o600); err != nil {
		t.Fatal(err)
	}
	tasks := &fakeLogTasks{}
	r := taskLogReader{tasks: tasks, logDir: dir, log: slog.New(slog.DiscardHandler), stall: 20 * time.Millisecond}
	var sent atomic.Int32
	stalled := func(ctx context.Context, p []byte) error { // takes one chunk, then waits for credit that never comes
		if sent.Add(1) == 1 {
			return nil
		}
		<-ctx.Done()
		return ctx.Err()
	}
	done := make(chan error, 1)
	go func() {
		done <- r.read(context.Background(), &schedv1.LogsRelayOpen{TaskId: "t1", Follow: true}, stalled)
	}()
	select {
	case err := <-done:
		t.Fatalf("a stalled read of a running task ended: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	tasks.ended.Store(true)
	select {
	case err := <-done:
		if !errdefs.IsAborted(err) {
			t.Errorf("a stalled read after the task ended: %v, want Aborted", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a stalled read held the task's log after it ended")
	}

	err := r.read(context.Background(), &schedv1.LogsRelayOpen{TaskId: "../t1"}, stalled)
	if !errors.Is(err, ErrTaskNotFound) {
		t.Errorf("an unknown task id: %v", err)
	}
}
