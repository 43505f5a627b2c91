package schedlink

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
)

// replica is a scheduler replica: a standby refuses the stream as the
// real one does; the leader takes the registration and keeps the stream.
type replica struct {
	schedv1.UnimplementedSchedulerServer
	leader     bool
	calls      atomic.Int32
	registered chan struct{}
	reg        atomic.Pointer[schedv1.Register] // the last registration
}

func (r *replica) Connect(stream schedv1.Scheduler_ConnectServer) error {
	r.calls.Add(1)
	if !r.leader {
		return status.Error(codes.Unavailable, "this scheduler is a standby; the leader is elsewhere")
	}
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	r.reg.Store(m.GetRegister())
	if err := stream.Send(&schedv1.SchedulerMessage{Msg: &schedv1.SchedulerMessage_Registered{Registered: &schedv1.Registered{AgentId: "a", HeartbeatIntervalMs: 60_000}}}); err != nil {
		return err
	}
	close(r.registered)
	<-stream.Context().Done()
	return nil
}

func serveReplica(t *testing.T, r *replica) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	schedv1.RegisterSchedulerServer(srv, r)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// TestStandbyRefusalsDoNotDelayReachingTheLeader: with the leader last in
// the list, the agent tries the standbys and reaches the leader in one
// round, with no backoff wait in between (the backoff here is an hour:
// one wait and the leader is never reached). Once every replica has
// refused, it does wait before the next round instead of spinning.
func TestStandbyRefusalsDoNotDelayReachingTheLeader(t *testing.T) {
	a, b := &replica{}, &replica{}
	leader := &replica{leader: true, registered: make(chan struct{})}
	addrs := []string{serveReplica(t, a), serveReplica(t, b), serveReplica(t, leader)}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{Address: strings.Join(addrs, ","), InstanceID: "i-1", MinBackoff: time.Hour, MaxBackoff: time.Hour}, &launchRecorder{})
	}()
	select {
	case <-leader.registered:
	case <-time.After(10 * time.Second):
		t.Fatalf("the leader was not reached in the first round (standby calls %d, %d)", a.calls.Load(), b.calls.Load())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if a.calls.Load() != 1 || b.calls.Load() != 1 {
		t.Errorf("standbys called %d and %d times, want once each", a.calls.Load(), b.calls.Load())
	}

	// Only standbys: one round, then the (hour-long) wait.
	c, d := &replica{}, &replica{}
	ctx, cancel = context.WithCancel(t.Context())
	go func() {
		done <- Run(ctx, Config{Address: serveReplica(t, c) + "," + serveReplica(t, d), InstanceID: "i-2", MinBackoff: time.Hour, MaxBackoff: time.Hour}, &launchRecorder{})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for d.calls.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // a spinning loop would call again meanwhile
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if c.calls.Load() != 1 || d.calls.Load() != 1 {
		t.Errorf("after a round of refusals: calls %d, %d; want one each, then the backoff", c.calls.Load(), d.calls.Load())
	}
}
