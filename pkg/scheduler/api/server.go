package api

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/apierr"
	"github.com/titus-agent/titus-agent/pkg/scheduler/core"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/scheduler/wire"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Leadership tells the API whether this replica leads, and who does.
type Leadership interface {
	IsLeader() bool
	LeaderAddr() string
}

// Server implements schedv1.SchedulerServer over a core.
type Server struct {
	schedv1.UnimplementedSchedulerServer
	core   *core.Core
	leader Leadership
}

// New returns the service of core c, answering only while leader says this replica leads.
func New(c *core.Core, leader Leadership) *Server { return &Server{core: c, leader: leader} }

var errStandby = errors.New("this scheduler is a standby")

func (s *Server) checkLeader() error {
	if s.leader.IsLeader() {
		return nil
	}
	return status.Errorf(codes.Unavailable, "%v; the leader is at %q", errStandby, s.leader.LeaderAddr())
}

// SubmitJob implements the API.
func (s *Server) SubmitJob(ctx context.Context, req *schedv1.SubmitJobRequest) (*schedv1.SubmitJobResponse, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	if req.GetSpec() == nil {
		return nil, apierr.ToGRPC(core.ErrSpecRequired)
	}
	id, err := s.core.Submit(ctx, wire.JobSpecFromProto(req.GetSpec()))
	if err != nil {
		return nil, apierr.ToGRPC(err)
	}
	return &schedv1.SubmitJobResponse{JobId: id}, nil
}

// GetJob implements the API.
func (s *Server) GetJob(_ context.Context, req *schedv1.GetJobRequest) (*schedv1.Job, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	j, err := s.core.Job(req.GetId())
	if err != nil {
		return nil, apierr.ToGRPC(err)
	}
	return wire.JobToProto(j), nil
}

// ListJobs implements the API.
func (s *Server) ListJobs(_ context.Context, req *schedv1.ListJobsRequest) (*schedv1.ListJobsResponse, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	out := &schedv1.ListJobsResponse{}
	for _, j := range s.core.Jobs(req.GetAll()) {
		out.Jobs = append(out.Jobs, wire.JobToProto(j))
	}
	return out, nil
}

// KillJob implements the API.
func (s *Server) KillJob(ctx context.Context, req *schedv1.KillJobRequest) (*schedv1.Job, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	j, err := s.core.KillJob(ctx, req.GetId())
	if err != nil {
		return nil, apierr.ToGRPC(err)
	}
	return wire.JobToProto(j), nil
}

// ScaleJob implements the API.
func (s *Server) ScaleJob(ctx context.Context, req *schedv1.ScaleJobRequest) (*schedv1.Job, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	j, err := s.core.ScaleJob(ctx, req.GetId(), req.GetMin(), req.GetDesired(), req.GetMax())
	if err != nil {
		return nil, apierr.ToGRPC(err)
	}
	return wire.JobToProto(j), nil
}

// ListTasks implements the API: live tasks; with all and a job, every attempt.
func (s *Server) ListTasks(ctx context.Context, req *schedv1.ListTasksRequest) (*schedv1.ListTasksResponse, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	ts, err := s.core.Tasks(ctx, req.GetJobId(), req.GetAll())
	if err != nil {
		return nil, apierr.ToGRPC(err)
	}
	out := &schedv1.ListTasksResponse{Tasks: make([]*schedv1.Task, len(ts))}
	for i, t := range ts {
		out.Tasks[i] = wire.TaskToProto(t)
	}
	return out, nil
}

// GetTask implements the API.
func (s *Server) GetTask(ctx context.Context, req *schedv1.GetTaskRequest) (*schedv1.Task, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	t, err := s.core.Task(ctx, req.GetId())
	if err != nil {
		return nil, apierr.ToGRPC(err)
	}
	return wire.TaskToProto(t), nil
}

// KillTask implements the API.
func (s *Server) KillTask(_ context.Context, req *schedv1.KillTaskRequest) (*schedv1.Task, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	t, err := s.core.KillTask(req.GetId())
	if err != nil {
		return nil, apierr.ToGRPC(err)
	}
	return wire.TaskToProto(t), nil
}

// ListAgents implements the API.
func (s *Server) ListAgents(context.Context, *schedv1.ListAgentsRequest) (*schedv1.ListAgentsResponse, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	return agentsResponse(s.core.Agents()), nil
}

// DrainAgent implements the API: no new placements on the selected agents,
// and their service tasks are replaced elsewhere.
func (s *Server) DrainAgent(_ context.Context, req *schedv1.DrainAgentRequest) (*schedv1.ListAgentsResponse, error) {
	return s.setDrain(req, true)
}

// UndrainAgent implements the API.
func (s *Server) UndrainAgent(_ context.Context, req *schedv1.DrainAgentRequest) (*schedv1.ListAgentsResponse, error) {
	return s.setDrain(req, false)
}

func (s *Server) setDrain(req *schedv1.DrainAgentRequest, drain bool) (*schedv1.ListAgentsResponse, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	as, err := s.core.Drain(model.AgentSelector{ID: req.GetId(), Labels: req.GetLabels()}, drain)
	if err != nil {
		return nil, apierr.ToGRPC(err)
	}
	return agentsResponse(as), nil
}

func agentsResponse(as []*model.Agent) *schedv1.ListAgentsResponse {
	out := &schedv1.ListAgentsResponse{Agents: make([]*schedv1.Agent, len(as))}
	for i, a := range as {
		out.Agents[i] = wire.AgentToProto(a)
	}
	return out
}

// Connect serves one agent's stream.
func (s *Server) Connect(stream schedv1.Scheduler_ConnectServer) error {
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
	sess, err := s.core.Connect(wire.RegistrationFromProto(reg))
	if errors.Is(err, model.ErrNotLeader) {
		return s.checkLeader()
	}
	if err != nil {
		return apierr.ToGRPC(err)
	}
	defer s.core.Disconnect(sess)

	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			sess.Heard()
			switch msg := m.GetMsg().(type) {
			case *schedv1.AgentMessage_Heartbeat:
				s.core.Heartbeat(sess, msg.Heartbeat.GetHealthy(), wire.TaskStatusesFromProto(msg.Heartbeat.GetTasks()))
			case *schedv1.AgentMessage_Updates:
				s.core.Updates(sess, wire.TaskStatusesFromProto(msg.Updates.GetTasks()))
			}
		}
	}()
	for {
		select {
		case m := <-sess.Out():
			if err := stream.Send(toAgent(m)); err != nil {
				return err
			}
		case err := <-recvErr:
			return err
		case <-sess.Done():
			return status.Error(codes.Aborted, "session closed by the scheduler; reconnect")
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
}

// toAgent converts a core message to the stream's.
func toAgent(m core.Message) *schedv1.SchedulerMessage {
	switch {
	case m.Registered != nil:
		return &schedv1.SchedulerMessage{Msg: &schedv1.SchedulerMessage_Registered{Registered: &schedv1.Registered{
			AgentId: m.Registered.AgentID, HeartbeatIntervalMs: m.Registered.HeartbeatInterval.Milliseconds()}}}
	case m.Launch != nil:
		l := &schedv1.Launch{Tasks: make([]*agentv1.TaskSpec, len(m.Launch))}
		for i, t := range m.Launch {
			l.Tasks[i] = task.ToProto(t)
		}
		return &schedv1.SchedulerMessage{Msg: &schedv1.SchedulerMessage_Launch{Launch: l}}
	default:
		return &schedv1.SchedulerMessage{Msg: &schedv1.SchedulerMessage_Kill{Kill: &schedv1.Kill{TaskIds: m.Kill}}}
	}
}
