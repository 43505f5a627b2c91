package api

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/apierr"
	"github.com/titus-agent/titus-agent/pkg/audit"
	"github.com/titus-agent/titus-agent/pkg/authn"
	"github.com/titus-agent/titus-agent/pkg/authz"
	"github.com/titus-agent/titus-agent/pkg/scheduler/core"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/scheduler/wire"
)

// Leadership tells the API whether this replica leads, and who does.
type Leadership interface {
	IsLeader() bool
	LeaderAddr() string
}

// Authorizer is the per-call check of the API's door (an *authz.Guard,
// whose interceptors put the caller in the context).
type Authorizer interface {
	// Authorize checks that the caller may perform a on application app
	// ("" for a fleet-wide action).
	Authorize(ctx context.Context, a authz.Action, app string) error
	// MayReadEnv reports whether the caller sees app's environment values.
	MayReadEnv(ctx context.Context, app string) bool
	// Decider is the policy, for the checks of a submitted spec.
	Decider() *authz.Decider
}

// AuditTrail reads the audit trail (an *audit.Log).
type AuditTrail interface {
	List(ctx context.Context, f audit.Filter) ([]audit.Record, string, error)
}

// Server implements schedv1.SchedulerServer over a core.
type Server struct {
	schedv1.UnimplementedSchedulerServer
	core   *core.Core
	leader Leadership
	authz  Authorizer
	trail  AuditTrail
	log    *slog.Logger
	relay  execRelay
	// execSlots bounds each principal's relayed exec sessions.
	execSlots execSlots
	// archive holds the logs of tasks whose agent is gone (nil: none).
	archive  LogArchive
	logReads logReads
}

// SetLog sets where the server logs (default slog.Default()).
func (s *Server) SetLog(l *slog.Logger) { s.log = l }

func (s *Server) logger() *slog.Logger {
	if s.log == nil {
		return slog.Default()
	}
	return s.log
}

// New returns the service of core c, answering only while leader says
// this replica leads, checking every call's job against az and reading
// the audit trail from trail.
func New(c *core.Core, leader Leadership, az Authorizer, trail AuditTrail) *Server {
	return &Server{core: c, leader: leader, authz: az, trail: trail}
}

// Limits of the API, checked before anything reaches the core or etcd.
const (
	// MaxJobSpecBytes caps a submitted job spec (its protobuf encoding).
	MaxJobSpecBytes = 64 << 10
	// DefaultPageSize and MaxPageSize bound the items of one list page.
	DefaultPageSize = 500
	MaxPageSize     = 1000
	// maxPageBytes bounds a page of jobs by size too, well under a
	// client's default 4 MiB receive limit.
	maxPageBytes = 2 << 20
)

var errStandby = errors.New("this scheduler is a standby")

func (s *Server) checkLeader() error {
	if s.leader.IsLeader() {
		return nil
	}
	return status.Errorf(codes.Unavailable, "%v; the leader is at %q", errStandby, s.leader.LeaderAddr())
}

// authorizeJob checks action a on job id's application. A caller who may
// not read the job gets what it would for a job that does not exist.
func (s *Server) authorizeJob(ctx context.Context, a authz.Action, id string) error {
	o, err := s.core.JobOwner(id)
	if err != nil {
		return apierr.ToGRPC(err)
	}
	return s.hide(ctx, s.authz.Authorize(ctx, a, o.Application), o.Application, s.core.JobNotFound(id))
}

// authorizeTask checks action a on the application of task id's job
// (<job id>.<index>.<attempt>). The task of a job no longer held needs a
// fleet-wide grant; without it, and to a caller who may not read the
// job's tasks, the task does not exist (core.TaskNotFound), whichever
// the case.
func (s *Server) authorizeTask(ctx context.Context, a authz.Action, id string) error {
	jobID, _, _ := strings.Cut(id, ".")
	o, err := s.core.JobOwner(jobID)
	if err != nil {
		if err := s.authz.Authorize(ctx, a, ""); err != nil {
			if errdefs.IsPermissionDenied(err) {
				return authz.Hide(err, core.TaskNotFound(id))
			}
			return apierr.ToGRPC(err)
		}
		return nil
	}
	return s.hide(ctx, s.authz.Authorize(ctx, a, o.Application), o.Application, core.TaskNotFound(id))
}

// hide answers refusal as notFound when the caller may read neither the
// jobs nor the tasks of app: an id of another tenant's job must tell
// nothing (whether it exists, whose it is). A caller who may read them
// learns nothing new from the refusal, which names the action.
func (s *Server) hide(ctx context.Context, refusal error, app string, notFound error) error {
	if refusal == nil {
		return nil
	}
	if !errdefs.IsPermissionDenied(refusal) || s.authz.Authorize(ctx, authz.JobRead, app) == nil || s.authz.Authorize(ctx, authz.TaskRead, app) == nil {
		return apierr.ToGRPC(refusal)
	}
	return authz.Hide(refusal, notFound)
}

// jobView converts j for the caller: environment values (of every
// template the job carries) redacted unless the caller may read them (the
// values are replaced in new maps; the core's are never touched).
func (s *Server) jobView(ctx context.Context, j *model.Job) *schedv1.Job {
	pj := wire.JobToProto(j)
	if !s.authz.MayReadEnv(ctx, j.Spec.Application) {
		authz.RedactEnv(pj)
	}
	return pj
}

// checkSpec is the door of a submission: the caller owns the
// application, the spec is within MaxJobSpecBytes, its IAM role is in the
// application's allowlist, so are its image and its target groups, and
// only admins set titus.isolation/* labels.
func (s *Server) checkSpec(ctx context.Context, spec *schedv1.JobSpec) error {
	app := spec.GetApplication()
	if err := s.authz.Authorize(ctx, authz.JobSubmit, app); err != nil {
		return err
	}
	if n := proto.Size(spec); n > MaxJobSpecBytes {
		return fmt.Errorf("%w: job spec is %d bytes, the limit is %d; move large data out of env and command", errdefs.ErrInvalidArgument, n, MaxJobSpecBytes)
	}
	d := s.authz.Decider()
	if err := d.CheckIAMRole(app, spec.GetTask().GetIamRoleArn()); err != nil {
		return err
	}
	if err := d.CheckImage(app, spec.GetTask().GetImage()); err != nil {
		return err
	}
	for _, tg := range spec.GetService().GetTargetGroups() {
		if err := d.CheckTargetGroup(app, tg.GetArn()); err != nil {
			return err
		}
	}
	p, ok := authz.Principal(ctx)
	if !ok {
		return fmt.Errorf("%w: no authenticated principal", errdefs.ErrPermissionDenied)
	}
	return d.CheckReservedLabels(p, spec.GetLabels(), spec.GetTask().GetLabels())
}

// submitter is the caller as authenticated, or "" when nothing proved who
// it is (authentication off): what a client writes is never used, so a
// role's trust policy can rely on the session tag made from it.
func submitter(ctx context.Context) string {
	p, ok := authz.Principal(ctx)
	if !ok || p.Method == authn.MethodNone {
		return ""
	}
	return p.Name
}

// SubmitJob implements the API.
func (s *Server) SubmitJob(ctx context.Context, req *schedv1.SubmitJobRequest) (*schedv1.SubmitJobResponse, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	if req.GetSpec() == nil {
		return nil, apierr.ToGRPC(core.ErrSpecRequired)
	}
	if err := s.checkSpec(ctx, req.GetSpec()); err != nil {
		return nil, apierr.ToGRPC(err)
	}
	spec := wire.JobSpecFromProto(req.GetSpec())
	spec.Submitter = submitter(ctx)
	sub := core.Submission{Spec: spec, Caller: spec.Submitter, Key: req.GetIdempotencyKey()}
	if sub.Key != "" {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(req.GetSpec())
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "spec: %v", err)
		}
		d := sha256.Sum256(b)
		sub.Digest = d[:]
	}
	id, _, err := s.core.SubmitKeyed(ctx, sub)
	if err != nil {
		return nil, apierr.ToGRPC(err)
	}
	return &schedv1.SubmitJobResponse{JobId: id}, nil
}

// GetJob implements the API.
func (s *Server) GetJob(ctx context.Context, req *schedv1.GetJobRequest) (*schedv1.Job, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	j, err := s.core.Job(req.GetId())
	if err != nil {
		return nil, apierr.ToGRPC(err)
	}
	if err := s.hide(ctx, s.authz.Authorize(ctx, authz.JobRead, j.Spec.Application), j.Spec.Application, s.core.JobNotFound(j.ID)); err != nil {
		return nil, err
	}
	return s.jobView(ctx, j), nil
}

// pageBounds checks a list request's page size and token.
func pageBounds(size uint32, token string) (int, error) {
	if len(token) > 256 {
		return 0, status.Error(codes.InvalidArgument, "page_token: longer than 256 bytes; pass the next_page_token of the previous page")
	}
	switch {
	case size == 0:
		return DefaultPageSize, nil
	case size > MaxPageSize:
		return MaxPageSize, nil
	}
	return int(size), nil
}

// ListJobs implements the API: the jobs the caller may read, a page at a time.
func (s *Server) ListJobs(ctx context.Context, req *schedv1.ListJobsRequest) (*schedv1.ListJobsResponse, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	size, err := pageBounds(req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	out := &schedv1.ListJobsResponse{}
	bytes := 0
	for _, j := range s.core.Jobs(req.GetAll()) {
		if j.ID <= req.GetPageToken() || s.authz.Authorize(ctx, authz.JobRead, j.Spec.Application) != nil {
			continue
		}
		if len(out.Jobs) == size || bytes > maxPageBytes {
			out.NextPageToken = out.Jobs[len(out.Jobs)-1].Id
			break
		}
		pj := s.jobView(ctx, j)
		bytes += proto.Size(pj)
		out.Jobs = append(out.Jobs, pj)
	}
	return out, nil
}

// KillJob implements the API.
func (s *Server) KillJob(ctx context.Context, req *schedv1.KillJobRequest) (*schedv1.Job, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	if err := s.authorizeJob(ctx, authz.JobKill, req.GetId()); err != nil {
		return nil, err
	}
	j, err := s.core.KillJob(ctx, req.GetId())
	if err != nil {
		return nil, apierr.ToGRPC(err)
	}
	return s.jobView(ctx, j), nil
}

// ScaleJob implements the API.
func (s *Server) ScaleJob(ctx context.Context, req *schedv1.ScaleJobRequest) (*schedv1.Job, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	if err := s.authorizeJob(ctx, authz.JobScale, req.GetId()); err != nil {
		return nil, err
	}
	j, err := s.core.ScaleJob(ctx, req.GetId(), req.GetMin(), req.GetDesired(), req.GetMax())
	if err != nil {
		return nil, apierr.ToGRPC(err)
	}
	return s.jobView(ctx, j), nil
}

// UpdateJob implements the API: only the job's owners (and admins) may
// update it, and the new template passes the same checks as a submit's,
// against the job's own application (its IAM role included).
func (s *Server) UpdateJob(ctx context.Context, req *schedv1.UpdateJobRequest) (*schedv1.Job, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	if err := s.authorizeJob(ctx, authz.JobUpdate, req.GetId()); err != nil {
		return nil, err
	}
	if req.GetSpec() == nil {
		return nil, apierr.ToGRPC(core.ErrSpecRequired)
	}
	o, err := s.core.JobOwner(req.GetId())
	if err != nil {
		return nil, apierr.ToGRPC(err)
	}
	ps := proto.Clone(req.GetSpec()).(*schedv1.JobSpec)
	if ps.GetApplication() == "" {
		ps.Application = o.Application
	}
	if err := s.checkSpec(ctx, ps); err != nil {
		return nil, apierr.ToGRPC(err)
	}
	j, err := s.core.UpdateJob(ctx, req.GetId(), wire.JobSpecFromProto(ps))
	if err != nil {
		return nil, apierr.ToGRPC(err)
	}
	return s.jobView(ctx, j), nil
}

// RolloutJob implements the API (authorized as an update).
func (s *Server) RolloutJob(ctx context.Context, req *schedv1.RolloutJobRequest) (*schedv1.Job, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	if err := s.authorizeJob(ctx, authz.JobUpdate, req.GetId()); err != nil {
		return nil, err
	}
	j, err := s.core.RolloutJob(ctx, req.GetId(), core.RolloutAction(req.GetAction()))
	if err != nil {
		return nil, apierr.ToGRPC(err)
	}
	return s.jobView(ctx, j), nil
}

// ListTasks implements the API: live tasks; with all and a job, every
// attempt; only of jobs the caller may read, a page at a time.
func (s *Server) ListTasks(ctx context.Context, req *schedv1.ListTasksRequest) (*schedv1.ListTasksResponse, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	size, err := pageBounds(req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	if req.GetJobId() != "" {
		// An ended job no longer held: its tasks are fleet-wide readers'
		// only; to others it does not exist, as a job they may not read.
		if err := s.authorizeJob(ctx, authz.TaskRead, req.GetJobId()); err != nil &&
			(status.Code(err) != codes.NotFound || s.authz.Authorize(ctx, authz.TaskRead, "") != nil) {
			return nil, err
		}
	}
	ts, err := s.core.Tasks(ctx, req.GetJobId(), req.GetAll())
	if err != nil {
		return nil, apierr.ToGRPC(err)
	}
	out := &schedv1.ListTasksResponse{}
	allowed := map[string]bool{}
	for _, t := range ts {
		if t.ID <= req.GetPageToken() {
			continue
		}
		if req.GetJobId() == "" {
			ok, seen := allowed[t.JobID]
			if !seen {
				ok = s.authorizeTask(ctx, authz.TaskRead, t.ID) == nil
				allowed[t.JobID] = ok
			}
			if !ok {
				continue
			}
		}
		if len(out.Tasks) == size {
			out.NextPageToken = out.Tasks[len(out.Tasks)-1].Id
			break
		}
		out.Tasks = append(out.Tasks, wire.TaskToProto(t))
	}
	return out, nil
}

// GetTask implements the API.
func (s *Server) GetTask(ctx context.Context, req *schedv1.GetTaskRequest) (*schedv1.Task, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	if err := s.authorizeTask(ctx, authz.TaskRead, req.GetId()); err != nil {
		return nil, err
	}
	t, err := s.core.Task(ctx, req.GetId())
	if err != nil {
		return nil, apierr.ToGRPC(err)
	}
	return wire.TaskToProto(t), nil
}

// KillTask implements the API.
func (s *Server) KillTask(ctx context.Context, req *schedv1.KillTaskRequest) (*schedv1.Task, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	if err := s.authorizeTask(ctx, authz.TaskKill, req.GetId()); err != nil {
		return nil, err
	}
	t, err := s.core.KillTask(req.GetId())
	if err != nil {
		return nil, apierr.ToGRPC(err)
	}
	return wire.TaskToProto(t), nil
}

// ListAudit implements the API: the audit trail, oldest first, a page at a time.
func (s *Server) ListAudit(ctx context.Context, req *schedv1.ListAuditRequest) (*schedv1.ListAuditResponse, error) {
	if err := s.authz.Authorize(ctx, authz.AuditRead, ""); err != nil {
		return nil, apierr.ToGRPC(err)
	}
	size, err := pageBounds(req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	recs, next, err := s.trail.List(ctx, audit.Filter{JobID: req.GetJobId(), Principal: req.GetPrincipal(), After: req.GetPageToken(), Limit: size})
	if err != nil {
		return nil, apierr.ToGRPC(err)
	}
	out := &schedv1.ListAuditResponse{NextPageToken: next, Records: make([]*schedv1.AuditRecord, len(recs))}
	for i, r := range recs {
		out.Records[i] = &schedv1.AuditRecord{Id: r.ID, Time: timestamppb.New(r.Time), Principal: r.Principal, Method: r.Method, Action: r.Action,
			Application: r.Application, JobId: r.JobID, TaskId: r.TaskID, AgentId: r.AgentID, Code: r.Code, Message: r.Message, Peer: r.Peer,
			Command: r.Command, ExitCode: r.ExitCode, Count: int64(r.Count)}
		if !r.Ended.IsZero() {
			out.Records[i].Ended = timestamppb.New(r.Ended)
		}
	}
	return out, nil
}

// ListAgents implements the API, a page at a time.
func (s *Server) ListAgents(ctx context.Context, req *schedv1.ListAgentsRequest) (*schedv1.ListAgentsResponse, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	if err := s.authz.Authorize(ctx, authz.AgentRead, ""); err != nil {
		return nil, apierr.ToGRPC(err)
	}
	size, err := pageBounds(req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	var as []*model.Agent
	next := ""
	for _, a := range s.core.Agents() {
		if a.ID <= req.GetPageToken() {
			continue
		}
		if len(as) == size {
			next = as[len(as)-1].ID
			break
		}
		as = append(as, a)
	}
	out := agentsResponse(as)
	out.NextPageToken = next
	return out, nil
}

// DrainAgent implements the API: no new placements on the selected agents,
// and their service tasks are replaced elsewhere.
func (s *Server) DrainAgent(ctx context.Context, req *schedv1.DrainAgentRequest) (*schedv1.ListAgentsResponse, error) {
	return s.setDrain(ctx, req, true)
}

// UndrainAgent implements the API.
func (s *Server) UndrainAgent(ctx context.Context, req *schedv1.DrainAgentRequest) (*schedv1.ListAgentsResponse, error) {
	return s.setDrain(ctx, req, false)
}

func (s *Server) setDrain(ctx context.Context, req *schedv1.DrainAgentRequest, drain bool) (*schedv1.ListAgentsResponse, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	if err := s.authz.Authorize(ctx, authz.AgentDrain, ""); err != nil {
		return nil, apierr.ToGRPC(err)
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
	r := wire.RegistrationFromProto(reg)
	if p, ok := peer.FromContext(stream.Context()); ok && p.Addr != nil {
		r.Peer = p.Addr.String()
	}
	if err := s.checkAgentIdentity(stream.Context(), r); err != nil {
		return err
	}
	sess, err := s.core.Connect(r)
	if errors.Is(err, model.ErrNotLeader) {
		return s.checkLeader()
	}
	if err != nil {
		return apierr.ToGRPC(err)
	}
	defer s.core.Disconnect(sess)
	ra := s.relay.attach(r.InstanceID)
	defer s.relay.detach(r.InstanceID, ra)

	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			switch msg := m.GetMsg().(type) {
			case *schedv1.AgentMessage_Heartbeat:
				// Only heartbeats keep the agent alive: a session
				// whose heartbeats stopped is lost at the TTL even if
				// updates or relayed output still arrive on it.
				sess.Heard()
				hb := msg.Heartbeat
				tasks := wire.TaskStatusesFromProto(hb.GetTasks())
				if hb.GetChangesOnly() {
					s.core.HeartbeatChanges(sess, hb.GetHealthy(), tasks, wire.NetworkUsageFromProto(hb.GetNetwork()))
				} else {
					s.core.Heartbeat(sess, hb.GetHealthy(), tasks, wire.NetworkUsageFromProto(hb.GetNetwork()))
				}
			case *schedv1.AgentMessage_Updates:
				s.core.Updates(sess, wire.TaskStatusesFromProto(msg.Updates.GetTasks()))
			case *schedv1.AgentMessage_ExecOutput:
				ra.deliver(msg.ExecOutput)
			case *schedv1.AgentMessage_Logs:
				ra.deliverLogs(msg.Logs)
			}
		}
	}()
	for {
		select {
		case m := <-sess.Out():
			for _, out := range toAgent(*m) {
				if err := stream.Send(out); err != nil {
					return err
				}
			}
		case m := <-ra.out:
			if err := stream.Send(m); err != nil {
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

// checkAgentIdentity holds a registration to its caller's identity: an
// agent certificate registers only the instance id it names; any other
// certificate (a user's) never registers. A caller with no certificate
// (plaintext, or a scheduler that does not ask for client certificates)
// registers on trust, and the log says so at every registration.
func (s *Server) checkAgentIdentity(ctx context.Context, r model.Registration) error {
	p, _ := authz.Principal(ctx)
	switch {
	case p.IsAgent() && p.InstanceID != r.InstanceID:
		return status.Errorf(codes.PermissionDenied, "the certificate identifies instance %q; it may not register as %q", p.InstanceID, r.InstanceID)
	case p.IsAgent():
		return nil
	case p.Method == authn.MethodCert:
		return status.Errorf(codes.PermissionDenied, "%s is not an agent certificate (no %s<instance id> URI SAN, or not from the agent CA): it may not register as an agent", p.Name, authn.DefaultAgentURIPrefix)
	case p.Method != authn.MethodNone && p.Method != "":
		return status.Errorf(codes.PermissionDenied, "%s may not register as an agent: agents authenticate with their certificate", p.Name)
	}
	s.logger().Warn("AGENT IDENTITY NOT VERIFIED: an agent registered without a certificate; its instance id is taken on trust (serve TLS with client certificates, see docs/security.md)",
		"instance_id", r.InstanceID, "peer", r.Peer)
	return nil
}

// toAgent converts a core message to the stream's: a launch batch is
// split so that no message exceeds wire.MaxLaunchBytes (an agent ends the
// session on a message over its receive limit).
func toAgent(m core.Message) []*schedv1.SchedulerMessage {
	switch {
	case m.Registered != nil:
		return []*schedv1.SchedulerMessage{{Msg: &schedv1.SchedulerMessage_Registered{Registered: &schedv1.Registered{
			AgentId: m.Registered.AgentID, HeartbeatIntervalMs: m.Registered.HeartbeatInterval.Milliseconds(), ChangesOnly: m.Registered.ChangesOnly}}}}
	case m.SendAllTasks:
		return []*schedv1.SchedulerMessage{{Msg: &schedv1.SchedulerMessage_SendAllTasks{SendAllTasks: &schedv1.SendAllTasks{}}}}
	case m.Launch != nil:
		var out []*schedv1.SchedulerMessage
		for _, l := range wire.LaunchBatches(m.Launch, wire.MaxLaunchBytes) {
			out = append(out, &schedv1.SchedulerMessage{Msg: &schedv1.SchedulerMessage_Launch{Launch: l}})
		}
		return out
	default:
		return []*schedv1.SchedulerMessage{{Msg: &schedv1.SchedulerMessage_Kill{Kill: &schedv1.Kill{TaskIds: m.Kill, Reason: string(m.KillReason), Message: m.KillMessage}}}}
	}
}
