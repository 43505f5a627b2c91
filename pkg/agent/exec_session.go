package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/execterm"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Exec session errors; each says which configuration key bounds it.
var (
	ErrExecLimit       = errdefs.ErrResourceExhausted.WithMessage("too many exec sessions")
	ErrExecIdle        = fmt.Errorf("exec session idle too long: %w", context.DeadlineExceeded)
	ErrExecTooLong     = fmt.Errorf("exec session reached its maximum length: %w", context.DeadlineExceeded)
	ErrExecBadStart    = errdefs.ErrInvalidArgument.WithMessage("exec session")
	ErrExecWindowLarge = errdefs.ErrInvalidArgument.WithMessage("window size out of range")
	ErrExecInputLarge  = errdefs.ErrInvalidArgument.WithMessage("exec input message too large")
)

// ExecConfig bounds debugging sessions (task exec).
type ExecConfig struct {
	// MaxSessionsPerTask and MaxSessionsPerHost bound concurrent sessions.
	MaxSessionsPerTask int `json:"maxSessionsPerTask"`
	MaxSessionsPerHost int `json:"maxSessionsPerHost"`
	// MaxSessionsPerCaller bounds one caller's sessions on the host (the
	// scheduler's principal; each local caller is its own): one tenant
	// never holds every slot of the host.
	MaxSessionsPerCaller int `json:"maxSessionsPerCaller"`
	// IdleTimeout ends a session with no input and no output for that
	// long; MaxSessionLength ends any session (Go durations).
	IdleTimeout      string `json:"idleTimeout"`
	MaxSessionLength string `json:"maxSessionLength"`
}

func defaultExec() ExecConfig {
	return ExecConfig{MaxSessionsPerTask: 4, MaxSessionsPerHost: 32, MaxSessionsPerCaller: 8, IdleTimeout: "30m", MaxSessionLength: "12h"}
}

func (c ExecConfig) check(chk *configChecker) {
	if c.MaxSessionsPerTask < 1 {
		chk.failf("exec.maxSessionsPerTask", "must be at least 1, got %d", c.MaxSessionsPerTask)
	}
	if c.MaxSessionsPerHost < 1 {
		chk.failf("exec.maxSessionsPerHost", "must be at least 1, got %d", c.MaxSessionsPerHost)
	}
	if c.MaxSessionsPerCaller < 1 {
		chk.failf("exec.maxSessionsPerCaller", "must be at least 1, got %d", c.MaxSessionsPerCaller)
	}
	chk.duration("exec.idleTimeout", c.IdleTimeout, time.Second, 7*24*time.Hour)
	chk.duration("exec.maxSessionLength", c.MaxSessionLength, time.Second, 7*24*time.Hour)
}

// processExecer runs one command inside a task (runtime.Runtime).
type processExecer interface {
	ExecProcess(ctx context.Context, id string, o runtime.ExecOptions) (int, error)
}

// taskGetter finds a task by id (Manager).
type taskGetter interface {
	Get(id string) (task.View, error)
}

// ExecSessions runs exec sessions within the configured bounds, for the
// local socket and for the scheduler's relay alike.
type ExecSessions struct {
	Runtime processExecer
	Tasks   taskGetter
	Log     *slog.Logger
	// Bounds; zeros mean none.
	MaxPerTask, MaxPerHost, MaxPerCaller int
	Idle, MaxLength                      time.Duration

	mu        sync.Mutex
	perTask   map[string]int
	perCaller map[string]int
	total     int
}

// NewExecSessions makes the session runner from validated config.
func NewExecSessions(cfg ExecConfig, rt processExecer, tasks taskGetter, log *slog.Logger) *ExecSessions {
	idle, _ := time.ParseDuration(cfg.IdleTimeout)
	maxLen, _ := time.ParseDuration(cfg.MaxSessionLength)
	return &ExecSessions{Runtime: rt, Tasks: tasks, Log: log, MaxPerTask: cfg.MaxSessionsPerTask, MaxPerHost: cfg.MaxSessionsPerHost,
		MaxPerCaller: cfg.MaxSessionsPerCaller, Idle: idle, MaxLength: maxLen}
}

// acquire takes a session slot for the task and caller, or says which
// bound is hit.
func (e *ExecSessions) acquire(id, who string) (func(), error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.perTask == nil {
		e.perTask = map[string]int{}
	}
	if e.perCaller == nil {
		e.perCaller = map[string]int{}
	}
	if e.MaxPerHost > 0 && e.total >= e.MaxPerHost {
		return nil, fmt.Errorf("%w: this host has %d (exec.maxSessionsPerHost); end one first", ErrExecLimit, e.total)
	}
	if e.MaxPerTask > 0 && e.perTask[id] >= e.MaxPerTask {
		return nil, fmt.Errorf("%w: task %s has %d (exec.maxSessionsPerTask); end one first", ErrExecLimit, id, e.perTask[id])
	}
	if e.MaxPerCaller > 0 && e.perCaller[who] >= e.MaxPerCaller {
		return nil, fmt.Errorf("%w: %s has %d on this host (exec.maxSessionsPerCaller); end one first", ErrExecLimit, who, e.perCaller[who])
	}
	e.perTask[id]++
	e.perCaller[who]++
	e.total++
	var once sync.Once
	return func() {
		once.Do(func() {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.total--
			if e.perTask[id]--; e.perTask[id] <= 0 {
				delete(e.perTask, id)
			}
			if e.perCaller[who]--; e.perCaller[who] <= 0 {
				delete(e.perCaller, who)
			}
		})
	}, nil
}

// maxWindow bounds a terminal's size (a resize is tenant input).
const maxWindow = 4096

func checkWindow(w *agentv1.WindowSize) (runtime.WindowSize, error) {
	if w == nil {
		return runtime.WindowSize{}, nil
	}
	if w.GetWidth() > maxWindow || w.GetHeight() > maxWindow {
		return runtime.WindowSize{}, fmt.Errorf("%w: %dx%d, at most %d each", ErrExecWindowLarge, w.GetWidth(), w.GetHeight(), maxWindow)
	}
	return runtime.WindowSize{Width: uint16(w.GetWidth()), Height: uint16(w.GetHeight())}, nil
}

// ExecTransport is one session's two directions: the local gRPC stream or
// the scheduler's relay.
type ExecTransport interface {
	Recv() (*agentv1.ExecInput, error)
	Send(*agentv1.ExecOutput) error
}

// Run runs the session whose first message was start until the command
// exits, the caller goes away (ctx), or a bound ends it; it returns the
// exit code. Output goes to t as it comes, the exit code is for the caller
// to send.
func (e *ExecSessions) Run(ctx context.Context, start *agentv1.ExecStart, who string, t ExecTransport) (int, error) {
	if start == nil {
		return -1, fmt.Errorf("%w: the first message must be a start", ErrExecBadStart)
	}
	if err := task.CheckExecArgs(start.GetArgs()); err != nil {
		return -1, fmt.Errorf("%w: %w", ErrExecBadStart, err)
	}
	size, err := checkWindow(start.GetSize())
	if err != nil {
		return -1, err
	}
	v, err := e.Tasks.Get(start.GetId())
	if err != nil {
		return -1, err
	}
	if v.Status.State != task.Running {
		return -1, fmt.Errorf("%s: %w", start.GetId(), ErrTaskNotActive)
	}
	release, err := e.acquire(start.GetId(), who)
	if err != nil {
		return -1, err
	}
	defer release()

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if e.MaxLength > 0 {
		var stop context.CancelFunc
		ctx, stop = context.WithTimeoutCause(ctx, e.MaxLength, fmt.Errorf("%w (exec.maxSessionLength %s)", ErrExecTooLong, e.MaxLength))
		defer stop()
	}
	touch := func() {}
	if e.Idle > 0 {
		idle := time.AfterFunc(e.Idle, func() {
			cancel(fmt.Errorf("%w: nothing in or out for %s (exec.idleTimeout)", ErrExecIdle, e.Idle))
		})
		defer idle.Stop()
		touch = func() { idle.Reset(e.Idle) }
	}

	var stdin io.Reader
	stdinR, stdinW := io.Pipe()
	if start.GetStdin() {
		stdin = stdinR
	}
	resize := make(chan runtime.WindowSize, 4)
	go func() { // the caller's side: stdin, resizes, the close of stdin
		defer stdinW.Close()
		for {
			in, err := t.Recv()
			if err == io.EOF {
				return // half-close: stdin ends, the command goes on
			}
			if err != nil {
				cancel(fmt.Errorf("exec session: caller gone: %w", err))
				return
			}
			touch()
			switch m := in.GetMsg().(type) {
			case *agentv1.ExecInput_Stdin:
				if len(m.Stdin) > execterm.MaxInput {
					cancel(fmt.Errorf("%w: %d bytes, at most %d", ErrExecInputLarge, len(m.Stdin), execterm.MaxInput))
					return
				}
				if _, err := stdinW.Write(m.Stdin); err != nil {
					return
				}
			case *agentv1.ExecInput_Resize:
				ws, err := checkWindow(m.Resize)
				if err != nil {
					cancel(err)
					return
				}
				select {
				case resize <- ws:
				default: // a burst of resizes: the next one carries the size
				}
			case *agentv1.ExecInput_CloseStdin:
				_ = stdinW.Close()
			}
		}
	}()
	defer stdinR.CloseWithError(io.ErrClosedPipe)

	var sendMu sync.Mutex
	out := &sendWriter{t: t, touch: touch, mu: &sendMu}
	began := time.Now()
	code, err := e.Runtime.ExecProcess(ctx, start.GetId(), runtime.ExecOptions{
		Args: start.GetArgs(), TTY: start.GetTty(), Stdin: stdin,
		Stdout: out, Stderr: &sendWriter{t: t, touch: touch, stderr: true, mu: &sendMu},
		Size: size, Resize: resize,
	})
	if e.Log != nil {
		e.Log.Info("exec session", "task", start.GetId(), "who", who, "args", start.GetArgs(), "tty", start.GetTty(),
			"exit_code", code, "duration", time.Since(began).Round(time.Millisecond), "err", err)
	}
	// Input refused (the session was cut): so even if the command, its
	// stdin closed, exited by itself first.
	if c := context.Cause(ctx); errors.Is(c, ErrExecInputLarge) || errors.Is(c, ErrExecWindowLarge) {
		return -1, c
	}
	if err != nil {
		if c := context.Cause(ctx); c != nil && errors.Is(err, c) {
			return -1, c
		}
		return -1, err
	}
	return code, nil
}

// sendWriter sends the command's output as it comes.
type sendWriter struct {
	t      ExecTransport
	touch  func()
	stderr bool
	mu     *sync.Mutex // shared by stdout and stderr
}

func (w *sendWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.touch()
	o := &agentv1.ExecOutput{}
	if w.stderr {
		o.Stderr = append([]byte(nil), p...)
	} else {
		o.Stdout = append([]byte(nil), p...)
	}
	if err := w.t.Send(o); err != nil {
		return 0, err
	}
	return len(p), nil
}
