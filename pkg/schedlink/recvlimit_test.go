package schedlink

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// bigLaunchServer registers the agent, then sends one Launch larger than
// gRPC's default 4 MiB receive limit.
type bigLaunchServer struct {
	schedv1.UnimplementedSchedulerServer
	launch *schedv1.Launch
}

func (s *bigLaunchServer) Connect(stream schedv1.Scheduler_ConnectServer) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	if err := stream.Send(&schedv1.SchedulerMessage{Msg: &schedv1.SchedulerMessage_Registered{Registered: &schedv1.Registered{AgentId: "a", HeartbeatIntervalMs: 60_000}}}); err != nil {
		return err
	}
	if err := stream.Send(&schedv1.SchedulerMessage{Msg: &schedv1.SchedulerMessage_Launch{Launch: s.launch}}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

// launchRecorder is a Tasks that records launches.
type launchRecorder struct {
	mu       sync.Mutex
	launched []string
	got      chan struct{}
	want     int
}

func (r *launchRecorder) Launch(_ context.Context, spec *task.Spec) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.launched = append(r.launched, spec.ID)
	if len(r.launched) == r.want {
		close(r.got)
	}
	return nil
}
func (r *launchRecorder) Kill(context.Context, string, task.Reason, string) error { return nil }
func (r *launchRecorder) List() []task.View                                       { return nil }
func (r *launchRecorder) Subscribe(ctx context.Context) <-chan task.Event {
	return make(chan task.Event)
}

// TestLaunchBeyondGRPCDefaultLimitIsReceived: a launch batch of about 6 MiB
// (under the scheduler's own 16 MiB limit) reaches the task manager instead
// of ending the session with ResourceExhausted.
func TestLaunchBeyondGRPCDefaultLimitIsReceived(t *testing.T) {
	const tasks = 6
	l := &schedv1.Launch{}
	for i := range tasks {
		l.Tasks = append(l.Tasks, &agentv1.TaskSpec{Id: fmt.Sprintf("j.%d.0", i), Image: "busybox", Env: map[string]string{"BLOB": strings.Repeat("x", 1<<20)}})
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	schedv1.RegisterSchedulerServer(srv, &bigLaunchServer{launch: l})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)

	rec := &launchRecorder{got: make(chan struct{}), want: tasks}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{Address: lis.Addr().String(), InstanceID: "i-1", MinBackoff: time.Hour, MaxBackoff: time.Hour}, rec)
	}()
	select {
	case <-rec.got:
	case <-time.After(10 * time.Second):
		t.Fatal("the 6 MiB launch never reached the task manager")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
