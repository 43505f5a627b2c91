package agent

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/apierr"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/pkg/tasklog"
)

// Version is set at build time (-ldflags -X).
var (
	Version = "dev"
	Commit  = "unknown"
)

// execer runs commands in tasks and tells the runtime's version.
type execer interface {
	Exec(ctx context.Context, id string, args []string, stdin io.Reader, stdout, stderr io.Writer) (int, error)
	Version(ctx context.Context) (string, error)
}

// HealthChecker reports the host's health checks.
type HealthChecker interface {
	Check(ctx context.Context) []*agentv1.HealthCheck
}

// Server is the gRPC control API; it maps errors to codes and nothing else.
type Server struct {
	agentv1.UnimplementedAgentServer
	Manager *Manager
	Runtime execer
	Checker HealthChecker
	LogDir  string
	// VPC and Metadata are nil when not configured.
	VPC      VPCOperator
	Metadata MetadataGetter
	// Scheduler is the address of the scheduler this agent takes its tasks
	// from; empty when it runs standalone. Attached, it refuses launches on
	// its socket: the scheduler would not know such a task and kill it.
	Scheduler string
	// Sessions runs exec sessions within the host's bounds.
	Sessions *ExecSessions
	// Images lists and removes images (image ls|rm|prune).
	Images ImageOperator
}

// Register adds the service to a gRPC server.
func (s *Server) Register(g *grpc.Server) { agentv1.RegisterAgentServer(g, s) }

// toStatus maps domain errors to gRPC codes at the edge.
func toStatus(err error) error { return apierr.ToGRPC(err) }

func (s *Server) LaunchTask(ctx context.Context, req *agentv1.LaunchTaskRequest) (*agentv1.LaunchTaskResponse, error) {
	if req.GetSpec() == nil {
		return nil, status.Error(codes.InvalidArgument, "spec: is required")
	}
	if s.Scheduler != "" {
		return nil, toStatus(fmt.Errorf("%w (%s): submit a job there (titus-scheduler job submit); a task launched here would be unknown to it and killed", ErrScheduled, s.Scheduler))
	}
	v, err := s.Manager.Launch(ctx, task.FromProto(req.GetSpec()))
	if err != nil {
		return nil, toStatus(err)
	}
	return &agentv1.LaunchTaskResponse{Task: task.ViewToProto(&v)}, nil
}

func (s *Server) KillTask(ctx context.Context, req *agentv1.KillTaskRequest) (*agentv1.KillTaskResponse, error) {
	// Checked here, before the conversion: seconds past what a Duration
	// holds would wrap around into some other grace.
	if g := req.GetGracePeriodSeconds(); g < 0 || g > int64(task.MaxKillGrace/time.Second) {
		return nil, status.Errorf(codes.InvalidArgument, "grace_period_seconds: must be between 0 (the task's own) and %d, got %d", int64(task.MaxKillGrace/time.Second), g)
	}
	v, err := s.Manager.Kill(ctx, req.GetId(), time.Duration(req.GetGracePeriodSeconds())*time.Second)
	if err != nil {
		return nil, toStatus(err)
	}
	return &agentv1.KillTaskResponse{Task: task.ViewToProto(&v)}, nil
}

func (s *Server) GetTask(ctx context.Context, req *agentv1.GetTaskRequest) (*agentv1.Task, error) {
	v, err := s.Manager.Get(req.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	return task.ViewToProto(&v), nil
}

func (s *Server) ListTasks(ctx context.Context, req *agentv1.ListTasksRequest) (*agentv1.ListTasksResponse, error) {
	out := &agentv1.ListTasksResponse{}
	for _, v := range s.Manager.List() {
		if !req.GetAll() && v.Status.State.Terminal() {
			continue
		}
		out.Tasks = append(out.Tasks, task.ViewToProto(&v))
	}
	return out, nil
}

func (s *Server) WatchEvents(req *agentv1.WatchEventsRequest, stream grpc.ServerStreamingServer[agentv1.TaskEvent]) error {
	ch := s.Manager.Subscribe(stream.Context())
	// Headers tell the client it is subscribed: no event after this is missed.
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	for ev := range ch {
		if req.GetTaskId() != "" && ev.TaskID != req.GetTaskId() {
			continue
		}
		tr := ev.Status.Transitions
		if len(tr) == 0 {
			continue
		}
		if err := stream.Send(&agentv1.TaskEvent{TaskId: ev.TaskID, Transition: task.TransitionToProto(tr[len(tr)-1]), ExitCode: ev.Status.ExitCode,
			Health: task.HealthToProto(ev.Status.Health), HealthChanged: ev.HealthChanged}); err != nil {
			return err
		}
	}
	if stream.Context().Err() != nil {
		return nil
	}
	return status.Error(codes.ResourceExhausted, "watcher fell behind; reconnect")
}

// TaskLogs streams the task's log file; with follow, it keeps reading until
// the task is final and the file is drained, or the client goes away.
func (s *Server) TaskLogs(req *agentv1.TaskLogsRequest, stream grpc.ServerStreamingServer[agentv1.LogChunk]) error {
	if _, err := s.Manager.Get(req.GetId()); err != nil {
		return toStatus(err)
	}
	f, err := os.Open(tasklog.Path(s.LogDir, req.GetId()))
	if err != nil {
		if os.IsNotExist(err) && !req.GetFollow() {
			return nil
		}
		if !os.IsNotExist(err) {
			return status.Errorf(codes.Internal, "open log: %v", err)
		}
	}
	// Closed whatever happens: an open log in a quota'd disk keeps the
	// disk from unmounting at teardown.
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	if req.GetTailLines() > 0 && f != nil {
		if err := seekTail(f, req.GetTailLines()); err != nil {
			return status.Errorf(codes.Internal, "tail log: %v", err)
		}
	}
	buf := make([]byte, 32<<10)
	for {
		if f == nil {
			f, _ = os.Open(tasklog.Path(s.LogDir, req.GetId()))
		}
		if f != nil {
			n, err := f.Read(buf)
			if n > 0 {
				if err := stream.Send(&agentv1.LogChunk{Data: append([]byte(nil), buf[:n]...)}); err != nil {
					return err
				}
				continue
			}
			if err != nil && err != io.EOF {
				return status.Errorf(codes.Internal, "read log: %v", err)
			}
			if st, err := os.Stat(tasklog.Path(s.LogDir, req.GetId())); err == nil {
				if pos, _ := f.Seek(0, io.SeekCurrent); st.Size() < pos {
					f.Close() // rotated
					f = nil
					continue
				}
			}
		}
		if !req.GetFollow() {
			return nil
		}
		v, err := s.Manager.Get(req.GetId())
		if err != nil || (v.Status.State.Terminal() && f != nil) {
			// one more drain happened above; the task is over
			return nil
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func seekTail(f *os.File, lines int64) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	const maxScan = 4 << 20
	start := max(st.Size()-maxScan, 0)
	if _, err := f.Seek(start, io.SeekStart); err != nil {
		return err
	}
	b, err := io.ReadAll(bufio.NewReader(f))
	if err != nil {
		return err
	}
	idx := len(b)
	if idx > 0 && b[idx-1] == '\n' {
		idx--
	}
	for n := int64(0); n < lines; n++ {
		i := bytes.LastIndexByte(b[:idx], '\n')
		if i < 0 {
			idx = -1
			break
		}
		idx = i
	}
	_, err = f.Seek(start+int64(idx+1), io.SeekStart)
	return err
}

// streamWriter sends exec output as it comes.
type streamWriter struct {
	stream grpc.ServerStreamingServer[agentv1.ExecOutput]
	stderr bool
	mu     chan struct{}
}

func (w *streamWriter) Write(p []byte) (int, error) {
	w.mu <- struct{}{}
	defer func() { <-w.mu }()
	out := &agentv1.ExecOutput{}
	if w.stderr {
		out.Stderr = append([]byte(nil), p...)
	} else {
		out.Stdout = append([]byte(nil), p...)
	}
	if err := w.stream.Send(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (s *Server) Exec(req *agentv1.ExecRequest, stream grpc.ServerStreamingServer[agentv1.ExecOutput]) error {
	if len(req.GetArgs()) == 0 {
		return status.Error(codes.InvalidArgument, "args: is required")
	}
	v, err := s.Manager.Get(req.GetId())
	if err != nil {
		return toStatus(err)
	}
	if v.Status.State != task.Running {
		return toStatus(ErrTaskNotActive)
	}
	if s.Sessions != nil {
		release, err := s.Sessions.acquire(req.GetId(), localCaller(stream.Context()))
		if err != nil {
			return toStatus(err)
		}
		defer release()
	}
	ctx := stream.Context()
	if t := req.GetTimeoutSeconds(); t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(t)*time.Second)
		defer cancel()
	}
	lock := make(chan struct{}, 1)
	code, err := s.Runtime.Exec(ctx, req.GetId(), req.GetArgs(), bytes.NewReader(req.GetStdin()),
		&streamWriter{stream: stream, mu: lock}, &streamWriter{stream: stream, stderr: true, mu: lock})
	if err != nil {
		return toStatus(err)
	}
	return stream.Send(&agentv1.ExecOutput{Exited: true, ExitCode: int32(code)})
}

func (s *Server) Health(ctx context.Context, _ *agentv1.HealthRequest) (*agentv1.HealthResponse, error) {
	checks := s.Checker.Check(ctx)
	healthy := true
	for _, c := range checks {
		healthy = healthy && c.Ok
	}
	return &agentv1.HealthResponse{Healthy: healthy, Checks: checks}, nil
}

func (s *Server) Version(ctx context.Context, _ *agentv1.VersionRequest) (*agentv1.VersionResponse, error) {
	cv, err := s.Runtime.Version(ctx)
	if err != nil {
		cv = "unreachable: " + err.Error()
	}
	return &agentv1.VersionResponse{Version: Version, Commit: Commit, ContainerdVersion: cv}, nil
}
