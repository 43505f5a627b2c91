package scheduler

import (
	"errors"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
)

// session is one agent stream. Sends never block the scheduler: a stream
// that falls behind by a full buffer is closed and the agent reconnects and
// reconciles.
type session struct {
	out  chan *schedv1.SchedulerMessage
	done chan struct{}
	once sync.Once
}

const sessionBuffer = 4096

func newSession() *session {
	return &session{out: make(chan *schedv1.SchedulerMessage, sessionBuffer), done: make(chan struct{})}
}

func (s *session) send(m *schedv1.SchedulerMessage) {
	select {
	case <-s.done:
	case s.out <- m:
	default:
		s.close()
	}
}

func (s *session) close() { s.once.Do(func() { close(s.done) }) }

// Connect serves one agent's stream.
func (s *Scheduler) Connect(stream schedv1.Scheduler_ConnectServer) error {
	if err := s.checkLeader(); err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	reg := first.GetRegister()
	if reg == nil {
		return status.Error(codes.InvalidArgument, "the first message must be a register")
	}
	if reg.GetInstanceId() == "" || !nameRE.MatchString(reg.GetInstanceId()) {
		return status.Error(codes.InvalidArgument, "register.instance_id: must match "+nameRE.String())
	}
	if reg.GetCapacity().GetCpuMillicores() <= 0 || reg.GetCapacity().GetMemoryMib() <= 0 {
		return status.Error(codes.InvalidArgument, "register.capacity: cpu_millicores and memory_mib must be positive")
	}
	sess := newSession()
	s.mu.Lock()
	if !s.leader.Load() {
		s.mu.Unlock()
		return s.checkLeader()
	}
	a := s.register(reg, sess, time.Now())
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if a.sess == sess {
			a.sess = nil
		}
		s.mu.Unlock()
		sess.close()
	}()

	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			a.heard.Store(time.Now().UnixNano())
			s.handle(a, sess, m)
		}
	}()
	for {
		select {
		case m := <-sess.out:
			if err := stream.Send(m); err != nil {
				return err
			}
		case err := <-recvErr:
			return err
		case <-sess.done:
			return status.Error(codes.Aborted, "session closed by the scheduler; reconnect")
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
}

func (s *Scheduler) handle(a *agentState, sess *session, m *schedv1.AgentMessage) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if a.sess != sess {
		return // superseded by a newer session
	}
	switch msg := m.GetMsg().(type) {
	case *schedv1.AgentMessage_Heartbeat:
		s.stats.heartbeats.Add(1)
		a.lastSeen = now
		a.healthy = msg.Heartbeat.GetHealthy()
		for _, st := range msg.Heartbeat.GetTasks() {
			s.applyStatus(a, st, now)
		}
	case *schedv1.AgentMessage_Updates:
		a.lastSeen = now
		for _, st := range msg.Updates.GetTasks() {
			s.applyStatus(a, st, now)
		}
	}
}

var errStandby = errors.New("this scheduler is a standby")

func (s *Scheduler) checkLeader() error {
	if s.leader.Load() {
		return nil
	}
	leader, _ := s.leaderAddr.Load().(string)
	return status.Errorf(codes.Unavailable, "%v; the leader is at %q", errStandby, leader)
}
