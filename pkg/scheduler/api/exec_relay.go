package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/apierr"
	"github.com/titus-agent/titus-agent/pkg/audit"
	"github.com/titus-agent/titus-agent/pkg/authz"
	"github.com/titus-agent/titus-agent/pkg/execterm"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// AuditRecorder stores audit records (an *audit.Log).
type AuditRecorder interface {
	Record(ctx context.Context, r audit.Record) error
}

// Relay bounds: a session's output waiting for a slow caller, and the
// relay messages waiting for an agent's stream. A full buffer ends the
// session, never the agent's stream.
const (
	relayOutputBuffer = 256
	relayAgentBuffer  = 1024
)

// DefaultExecMaxSessionsPerCaller bounds one principal's relayed exec
// sessions at once (config exec.maxSessionsPerCaller), as an agent bounds
// one caller's on its host.
const DefaultExecMaxSessionsPerCaller = 8

// execSlots counts the relayed sessions of each principal: one tenant
// cannot hold every relay buffer, agent stream slot and audit write of the
// scheduler, whatever the number of hosts its tasks run on.
type execSlots struct {
	mu  sync.Mutex
	max int // 0: DefaultExecMaxSessionsPerCaller
	n   map[string]int
}

// acquire takes one of who's slots, or refuses with ResourceExhausted
// naming the bound; release gives it back (once, however often called).
func (e *execSlots) acquire(who string) (release func(), err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	limit := e.max
	if limit <= 0 {
		limit = DefaultExecMaxSessionsPerCaller
	}
	if e.n[who] >= limit {
		return nil, status.Errorf(codes.ResourceExhausted, "too many exec sessions: %s has %d open through the scheduler (exec.maxSessionsPerCaller); end one first", who, e.n[who])
	}
	if e.n == nil {
		e.n = map[string]int{}
	}
	e.n[who]++
	var once sync.Once
	return func() {
		once.Do(func() {
			e.mu.Lock()
			defer e.mu.Unlock()
			if e.n[who]--; e.n[who] <= 0 {
				delete(e.n, who)
			}
		})
	}, nil
}

// SetExecMaxSessionsPerCaller bounds one principal's concurrent relayed
// exec sessions (n < 1: DefaultExecMaxSessionsPerCaller).
func (s *Server) SetExecMaxSessionsPerCaller(n int) {
	s.execSlots.mu.Lock()
	s.execSlots.max = n
	s.execSlots.mu.Unlock()
}

// execRelay routes exec sessions over the agents' streams.
type execRelay struct {
	mu     sync.Mutex
	agents map[string]*relayAgent // by instance id
}

// relayAgent is one connected agent's end of the relay.
type relayAgent struct {
	out  chan *schedv1.SchedulerMessage
	done chan struct{}

	mu       sync.Mutex
	sessions map[string]chan *schedv1.ExecRelayOutput
	logs     map[string]*logSession // relayed log reads
}

// attach makes the relay end of an agent's new stream.
func (r *execRelay) attach(agent string) *relayAgent {
	ra := &relayAgent{out: make(chan *schedv1.SchedulerMessage, relayAgentBuffer), done: make(chan struct{}), sessions: map[string]chan *schedv1.ExecRelayOutput{}}
	r.mu.Lock()
	if r.agents == nil {
		r.agents = map[string]*relayAgent{}
	}
	r.agents[agent] = ra
	r.mu.Unlock()
	return ra
}

// detach ends the agent's sessions when its stream ends.
func (r *execRelay) detach(agent string, ra *relayAgent) {
	r.mu.Lock()
	if r.agents[agent] == ra {
		delete(r.agents, agent)
	}
	r.mu.Unlock()
	close(ra.done)
}

func (r *execRelay) agent(id string) *relayAgent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.agents[id]
}

// deliver hands an agent's output to its session, or ends a session that
// cannot keep up.
func (ra *relayAgent) deliver(m *schedv1.ExecRelayOutput) {
	ra.mu.Lock()
	ch := ra.sessions[m.GetSession()]
	ra.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case ch <- m:
	default:
		ra.cancel(m.GetSession())
	}
}

func (ra *relayAgent) open(session string) chan *schedv1.ExecRelayOutput {
	ch := make(chan *schedv1.ExecRelayOutput, relayOutputBuffer)
	ra.mu.Lock()
	ra.sessions[session] = ch
	ra.mu.Unlock()
	return ch
}

func (ra *relayAgent) close(session string) {
	ra.mu.Lock()
	delete(ra.sessions, session)
	ra.mu.Unlock()
}

// cancel tells the agent to end a session (best effort).
func (ra *relayAgent) cancel(session string) {
	select {
	case ra.out <- &schedv1.SchedulerMessage{Msg: &schedv1.SchedulerMessage_Exec{Exec: &schedv1.ExecRelayInput{Session: session, Cancel: true}}}:
	default:
	}
}

// send queues one input of a session for the agent; a stdin message
// larger than any caller's end sends is refused, never queued.
func (ra *relayAgent) send(ctx context.Context, session string, in *agentv1.ExecInput) error {
	if n := len(in.GetStdin()); n > execterm.MaxInput {
		return status.Errorf(codes.InvalidArgument, "an input message of %d bytes; at most %d", n, execterm.MaxInput)
	}
	select {
	case ra.out <- &schedv1.SchedulerMessage{Msg: &schedv1.SchedulerMessage_Exec{Exec: &schedv1.ExecRelayInput{Session: session, Input: in}}}:
		return nil
	case <-ra.done:
		return status.Error(codes.Unavailable, "the task's agent disconnected")
	case <-ctx.Done():
		return ctx.Err()
	default:
		return status.Error(codes.ResourceExhausted, "the task's agent stream is saturated; try again")
	}
}

// ExecTask relays an exec session to the agent running the task. It is
// allowed with task.debug on the job's application and audited with its
// command and exit code, whether it ran or was refused.
func (s *Server) ExecTask(stream grpc.BidiStreamingServer[agentv1.ExecInput, agentv1.ExecOutput]) error {
	ctx := stream.Context()
	began := time.Now()
	if refused := authz.Refusal(ctx); refused != nil {
		return s.refuseExec(stream, began, refused)
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil || start.GetId() == "" || len(start.GetArgs()) == 0 {
		return status.Error(codes.InvalidArgument, "the first message must be a start with a task id and args")
	}
	// Bounded before it is audited, queued for the agent or logged there.
	if err := task.CheckExecArgs(start.GetArgs()); err != nil {
		return status.Errorf(codes.InvalidArgument, "exec: %v", err)
	}
	rec := audit.Record{Time: began, Method: "ExecTask", Action: string(authz.TaskDebug), TaskID: start.GetId(), Command: start.GetArgs(), Peer: peerAddr(ctx)}
	rec.JobID, _, _ = strings.Cut(start.GetId(), ".")
	if p, ok := authz.Principal(ctx); ok {
		rec.Principal = p.String()
	}
	exit := int32(-1)
	code, err := s.execTask(ctx, stream, start, &rec, &exit)
	rec.Ended = time.Now()
	if err == nil {
		rec.ExitCode = &code
	} else {
		if exit >= 0 {
			rec.ExitCode = &exit
		}
		err = toStatusErr(err)
	}
	rec.Code, rec.Message = authz.Outcome(err)
	err = status.Convert(err).Err()
	s.recordAudit(ctx, rec)
	if err != nil {
		return err
	}
	return stream.Send(&agentv1.ExecOutput{Exited: true, ExitCode: code})
}

// refusedStartWait bounds how long a caller the door refused may take to
// name the task and command its refusal is recorded with.
const refusedStartWait = 10 * time.Second

// refuseExec records the session the door refused (the caller holds no
// role that debugs anything), with the task and command it asks for if it
// sends them within refusedStartWait, and refuses it.
func (s *Server) refuseExec(stream grpc.BidiStreamingServer[agentv1.ExecInput, agentv1.ExecOutput], began time.Time, refused error) error {
	ctx := stream.Context()
	rec := audit.Record{Time: began, Method: "ExecTask", Action: string(authz.TaskDebug), Peer: peerAddr(ctx)}
	if p, ok := authz.Principal(ctx); ok {
		rec.Principal = p.String()
	}
	first := make(chan *agentv1.ExecInput, 1)
	go func() {
		m, _ := stream.Recv()
		first <- m
	}()
	t := time.NewTimer(refusedStartWait)
	defer t.Stop()
	select {
	case m := <-first:
		if start := m.GetStart(); start != nil {
			rec.TaskID = start.GetId()
			rec.JobID, _, _ = strings.Cut(rec.TaskID, ".")
			if o, err := s.core.JobOwner(rec.JobID); err == nil {
				rec.Application = o.Application
			}
			if task.CheckExecArgs(start.GetArgs()) == nil {
				rec.Command = start.GetArgs()
			}
		}
	case <-t.C:
	case <-ctx.Done():
	}
	rec.Ended = time.Now()
	rec.Code = status.Code(refused).String()
	rec.Message = status.Convert(refused).Message()
	s.recordAudit(ctx, rec)
	return refused
}

func toStatusErr(err error) error {
	if errors.Is(err, context.Canceled) {
		return status.Error(codes.Canceled, "the caller went away")
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Internal, err.Error())
}

func (s *Server) execTask(ctx context.Context, stream grpc.BidiStreamingServer[agentv1.ExecInput, agentv1.ExecOutput], start *agentv1.ExecStart, rec *audit.Record, exit *int32) (int32, error) {
	if o, err := s.core.JobOwner(rec.JobID); err == nil {
		rec.Application = o.Application
	}
	if err := s.checkLeader(); err != nil {
		return -1, err
	}
	if err := s.authorizeTask(ctx, authz.TaskDebug, start.GetId()); err != nil {
		return -1, err
	}
	t, err := s.core.Task(ctx, start.GetId())
	if err != nil {
		return -1, apierr.ToGRPC(err)
	}
	rec.AgentID = t.AgentID
	if t.State != task.Running {
		return -1, status.Errorf(codes.FailedPrecondition, "task %s is %s, not running", t.ID, t.State)
	}
	ra := s.relay.agent(t.AgentID)
	if ra == nil {
		return -1, status.Errorf(codes.Unavailable, "agent %s of task %s is not connected to this scheduler", t.AgentID, t.ID)
	}
	release, err := s.execSlots.acquire(rec.Principal)
	if err != nil {
		return -1, err
	}
	defer release()
	session := uuid.NewString()
	out := ra.open(session)
	defer ra.close(session)
	fwd := &agentv1.ExecStart{Id: start.GetId(), Args: start.GetArgs(), Tty: start.GetTty(), Stdin: start.GetStdin(), Size: start.GetSize(), Principal: rec.Principal}
	if err := ra.send(ctx, session, &agentv1.ExecInput{Msg: &agentv1.ExecInput_Start{Start: fwd}}); err != nil {
		return -1, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Why the caller's input could not be relayed, if it could not.
	var inputErr atomic.Value
	go func() { // the caller's input, in order
		for {
			in, err := stream.Recv()
			if err == io.EOF {
				in = &agentv1.ExecInput{Msg: &agentv1.ExecInput_CloseStdin{CloseStdin: true}}
			} else if err != nil {
				cancel()
				return
			}
			if in.GetStart() != nil {
				continue // one start per session
			}
			if err := ra.send(ctx, session, in); err != nil {
				inputErr.Store(err)
				cancel()
				return
			}
			if err == io.EOF {
				return
			}
		}
	}()
	for {
		select {
		case m := <-out:
			if m.GetErrorCode() != 0 {
				return -1, status.Error(codes.Code(m.GetErrorCode()), m.GetError())
			}
			o := m.GetOutput()
			if o.GetExited() {
				*exit = o.GetExitCode()
				return o.GetExitCode(), nil
			}
			if err := stream.Send(o); err != nil {
				ra.cancel(session)
				return -1, err
			}
		case <-ra.done:
			return -1, status.Errorf(codes.Unavailable, "agent %s disconnected during the session", t.AgentID)
		case <-ctx.Done():
			ra.cancel(session)
			if stream.Context().Err() != nil {
				return -1, status.Error(codes.Canceled, "the caller went away; the session was ended")
			}
			if err, ok := inputErr.Load().(error); ok && status.Code(err) == codes.InvalidArgument {
				return -1, status.Errorf(codes.InvalidArgument, "%s; the session was ended", status.Convert(err).Message())
			}
			return -1, status.Error(codes.ResourceExhausted, "the session's input could not be relayed fast enough; the session was ended")
		}
	}
}

func (s *Server) recordAudit(ctx context.Context, r audit.Record) {
	rc, ok := s.trail.(AuditRecorder)
	if !ok || rc == nil {
		s.logger().Info("audit", "principal", r.Principal, "method", r.Method, "task", r.TaskID, "command", r.Command, "exit_code", r.ExitCode, "code", r.Code)
		return
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := rc.Record(actx, r); err != nil {
		s.logger().Error("audit record not stored", "principal", r.Principal, "method", r.Method, "task", r.TaskID, "err", fmt.Errorf("exec session: %w", err))
	}
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}
