package schedlink

import (
	"context"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/apierr"
	"github.com/titus-agent/titus-agent/pkg/execterm"
)

// ExecFunc runs one exec session relayed by the scheduler (the agent's
// ExecSessions, bounded like a local one): recv gives the caller's input
// after the start, send takes the command's output; it returns the exit code.
type ExecFunc func(ctx context.Context, start *agentv1.ExecStart, who string,
	recv func() (*agentv1.ExecInput, error), send func(*agentv1.ExecOutput) error) (int, error)

// relayInputBuffer bounds a relayed session's unread input messages (and
// relayInputBytes their bytes): a session whose command does not read it
// fast enough is ended, never the stream.
const relayInputBuffer = 256

// execRelay holds the relayed sessions of one stream.
type execRelay struct {
	run  ExecFunc
	send func(*schedv1.AgentMessage) error
	ctx  context.Context // the stream's: its end ends every session

	mu       sync.Mutex
	sessions map[string]*relayed
}

type relayed struct {
	in     chan *agentv1.ExecInput
	cancel context.CancelCauseFunc
	unread atomic.Int64 // bytes of stdin in in
}

func newExecRelay(ctx context.Context, run ExecFunc, send func(*schedv1.AgentMessage) error) *execRelay {
	return &execRelay{run: run, send: send, ctx: ctx, sessions: map[string]*relayed{}}
}

func (r *execRelay) output(session string, o *agentv1.ExecOutput, err error) error {
	m := &schedv1.ExecRelayOutput{Session: session, Output: o}
	if err != nil {
		st := status.Convert(apierr.ToGRPC(err))
		m.ErrorCode, m.Error = uint32(st.Code()), st.Message()
	}
	return r.send(&schedv1.AgentMessage{Msg: &schedv1.AgentMessage_ExecOutput{ExecOutput: m}})
}

// handle takes one relayed message; it never blocks the stream.
func (r *execRelay) handle(m *schedv1.ExecRelayInput) {
	id := m.GetSession()
	r.mu.Lock()
	s := r.sessions[id]
	if m.GetCancel() {
		if s != nil {
			s.cancel(nil)
		}
		r.mu.Unlock()
		return
	}
	if start := m.GetInput().GetStart(); start != nil {
		if s != nil || r.run == nil {
			r.mu.Unlock()
			if r.run == nil {
				_ = r.output(id, nil, status.Error(codes.Unimplemented, "this agent does not run relayed exec sessions"))
			}
			return
		}
		ctx, cancel := context.WithCancelCause(r.ctx)
		s = &relayed{in: make(chan *agentv1.ExecInput, relayInputBuffer), cancel: cancel}
		r.sessions[id] = s
		r.mu.Unlock()
		go r.serve(ctx, id, s, start)
		return
	}
	r.mu.Unlock()
	if s == nil {
		return // ended meanwhile
	}
	n := int64(len(m.GetInput().GetStdin()))
	if n > execterm.MaxInput {
		s.cancel(status.Errorf(codes.InvalidArgument, "exec session: an input message of %d bytes; at most %d", n, execterm.MaxInput))
		return
	}
	if s.unread.Add(n) > relayInputBytes {
		s.cancel(status.Errorf(codes.ResourceExhausted, "exec session: more than %d bytes of input the command has not read; the session was ended", relayInputBytes))
		return
	}
	select {
	case s.in <- m.GetInput():
	default:
		// The caller sends faster than the command reads.
		s.cancel(status.Errorf(codes.ResourceExhausted, "exec session: more than %d input messages the command has not read; the session was ended", relayInputBuffer))
	}
}

func (r *execRelay) serve(ctx context.Context, id string, s *relayed, start *agentv1.ExecStart) {
	defer func() {
		s.cancel(nil)
		r.mu.Lock()
		delete(r.sessions, id)
		r.mu.Unlock()
	}()
	recv := func() (*agentv1.ExecInput, error) {
		select {
		case in := <-s.in:
			s.unread.Add(-int64(len(in.GetStdin())))
			return in, nil
		case <-ctx.Done():
			if c := boundCause(ctx); c != nil {
				return nil, c
			}
			return nil, status.Error(codes.Canceled, "exec session: the caller went away")
		}
	}
	send := func(o *agentv1.ExecOutput) error { return r.output(id, o, nil) }
	code, err := r.run(ctx, start, start.GetPrincipal(), recv, send)
	if err != nil {
		if c := boundCause(ctx); c != nil {
			err = c // a command that reads no input ends with its own error: say why it was ended
		}
		_ = r.output(id, nil, err)
		return
	}
	_ = r.output(id, &agentv1.ExecOutput{Exited: true, ExitCode: int32(code)}, nil)
}

// boundCause is the error a bound ended the session with, or nil if it
// was not ended by one (the caller or the agent went away, or it runs).
func boundCause(ctx context.Context) error {
	if c := context.Cause(ctx); c != nil && status.Code(c) != codes.Unknown {
		return c
	}
	return nil
}

// relayInputBytes bounds a relayed session's unread input in bytes.
const relayInputBytes = 1 << 20
