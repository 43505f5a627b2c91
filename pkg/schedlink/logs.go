package schedlink

import (
	"context"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/apierr"
)

// LogsFunc reads one task's log for the scheduler (the agent's task log
// files): send takes each chunk (it may block until its ctx, a context of
// the read's ctx, ends; it must not keep the slice), and the read ends when
// ctx does.
type LogsFunc func(ctx context.Context, open *schedv1.LogsRelayOpen, send func(ctx context.Context, p []byte) error) error

// Bounds of relayed log reads on one stream.
const (
	// MaxLogSessions is the most log reads one agent serves at once; more
	// are refused (ResourceExhausted), never queued.
	MaxLogSessions = 64
	// MaxLogWindow is the most chunks a session may have in flight,
	// whatever the scheduler grants: with 32 KiB chunks, 2 MiB.
	MaxLogWindow = 64
	// maxLogChunk is the most bytes of one chunk.
	maxLogChunk = 32 << 10
)

// logsRelay holds the relayed log reads of one stream. Each read sends a
// chunk only with credit from the scheduler, which grants it as the
// caller takes the chunks: a slow caller stops the reader, no buffer grows.
type logsRelay struct {
	run  LogsFunc
	send func(*schedv1.AgentMessage) error
	ctx  context.Context // the stream's: its end ends every read

	mu       sync.Mutex
	sessions map[string]*logSession
}

type logSession struct {
	cancel context.CancelFunc

	mu     sync.Mutex
	credit int
	more   chan struct{} // signalled when credit is granted
}

func newLogsRelay(ctx context.Context, run LogsFunc, send func(*schedv1.AgentMessage) error) *logsRelay {
	return &logsRelay{run: run, send: send, ctx: ctx, sessions: map[string]*logSession{}}
}

func (r *logsRelay) chunk(m *schedv1.LogsRelayChunk) error {
	return r.send(&schedv1.AgentMessage{Msg: &schedv1.AgentMessage_Logs{Logs: m}})
}

func (r *logsRelay) fail(session string, err error) {
	st := status.Convert(apierr.ToGRPC(err))
	_ = r.chunk(&schedv1.LogsRelayChunk{Session: session, ErrorCode: uint32(st.Code()), Error: st.Message()})
}

// active is how many reads run now.
func (r *logsRelay) active() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.sessions)
}

// handle takes one message of a relayed read; it never blocks the stream.
func (r *logsRelay) handle(m *schedv1.LogsRelayRequest) {
	id := m.GetSession()
	r.mu.Lock()
	s := r.sessions[id]
	switch {
	case m.GetCancel():
		r.mu.Unlock()
		if s != nil {
			s.cancel()
		}
	case m.GetOpen() != nil:
		if s != nil {
			r.mu.Unlock()
			return // one open per session
		}
		if r.run == nil {
			r.mu.Unlock()
			go r.fail(id, status.Error(codes.Unimplemented, "this agent does not serve relayed log reads"))
			return
		}
		if len(r.sessions) >= MaxLogSessions {
			r.mu.Unlock()
			go r.fail(id, status.Errorf(codes.ResourceExhausted, "this agent serves %d log reads already (the most it serves at once); try again", MaxLogSessions))
			return
		}
		ctx, cancel := context.WithCancel(r.ctx)
		s = &logSession{cancel: cancel, more: make(chan struct{}, 1)}
		s.grant(m.GetOpen().GetWindow())
		r.sessions[id] = s
		r.mu.Unlock()
		go r.serve(ctx, id, s, m.GetOpen())
	default:
		r.mu.Unlock()
		if s != nil {
			s.grant(m.GetCredit())
		}
	}
}

// grant adds credit, never past MaxLogWindow chunks in flight.
func (s *logSession) grant(n uint32) {
	if n == 0 {
		return
	}
	s.mu.Lock()
	s.credit = min(s.credit+int(min(n, MaxLogWindow)), MaxLogWindow)
	s.mu.Unlock()
	select {
	case s.more <- struct{}{}:
	default:
	}
}

// take waits for one chunk's credit.
func (s *logSession) take(ctx context.Context) error {
	for {
		s.mu.Lock()
		if s.credit > 0 {
			s.credit--
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
		select {
		case <-s.more:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (r *logsRelay) serve(ctx context.Context, id string, s *logSession, open *schedv1.LogsRelayOpen) {
	defer func() {
		s.cancel()
		r.mu.Lock()
		delete(r.sessions, id)
		r.mu.Unlock()
	}()
	send := func(sctx context.Context, p []byte) error {
		for len(p) > 0 {
			n := min(len(p), maxLogChunk)
			if err := s.take(sctx); err != nil {
				return err
			}
			if err := r.chunk(&schedv1.LogsRelayChunk{Session: id, Data: append([]byte(nil), p[:n]...)}); err != nil {
				return err
			}
			p = p[n:]
		}
		return nil
	}
	err := r.run(ctx, open, send)
	if ctx.Err() != nil {
		return // cancelled, or the stream ended: no one to tell
	}
	if err != nil {
		r.fail(id, err)
		return
	}
	_ = r.chunk(&schedv1.LogsRelayChunk{Session: id, Eof: true})
}
