package schedlink

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// stallServer misbehaves on the first `stall` streams, then registers the
// agent as a scheduler does. mute: it reads the registration and never
// answers (a hostile or wedged peer holding the stream open). deaf: it
// acknowledges the registration and never reads again, so the agent's
// sends block on flow control while the transport still answers pings.
type stallServer struct {
	schedv1.UnimplementedSchedulerServer
	stall      int32
	deaf       bool
	calls      atomic.Int32
	registered chan struct{}
}

func (s *stallServer) Connect(stream schedv1.Scheduler_ConnectServer) error {
	n := s.calls.Add(1)
	if _, err := stream.Recv(); err != nil {
		return err
	}
	if n <= s.stall && !s.deaf {
		<-stream.Context().Done() // never answers
		return nil
	}
	if err := stream.Send(&schedv1.SchedulerMessage{Msg: &schedv1.SchedulerMessage_Registered{Registered: &schedv1.Registered{AgentId: "a", HeartbeatIntervalMs: 60_000}}}); err != nil {
		return err
	}
	if n <= s.stall {
		<-stream.Context().Done() // never reads again
		return nil
	}
	close(s.registered)
	<-stream.Context().Done()
	return nil
}

func serveStall(t *testing.T, s *stallServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	schedv1.RegisterSchedulerServer(srv, s)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// runLink runs the link until the test ends.
func runLink(t *testing.T, cfg Config, tasks Tasks) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, tasks) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
}

// TestUnacknowledgedRegistrationIsRetried: a peer on the scheduler's
// address that takes the stream and the registration and never answers
// (what held an agent for over 70s after a scheduler restart in CI, and
// what a hostile peer could do for good) no longer holds the link: after
// RegisterTimeout the agent tries again, and registers.
func TestUnacknowledgedRegistrationIsRetried(t *testing.T) {
	s := &stallServer{stall: 2, registered: make(chan struct{})}
	runLink(t, Config{Address: serveStall(t, s), InstanceID: "i-1", RegisterTimeout: 200 * time.Millisecond,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}, &launchRecorder{})
	select {
	case <-s.registered:
	case <-time.After(10 * time.Second):
		t.Fatalf("not registered after 10s: %d streams opened, the first %d never answered", s.calls.Load(), s.stall)
	}
	if got := s.calls.Load(); got != 3 {
		t.Errorf("%d streams, want 3 (two unanswered, then registered)", got)
	}
}

// TestSilentReplicaDoesNotHoldTheLink: the first replica listed accepts
// TCP connections and never speaks HTTP/2 (a process that bound the port
// and hangs, or a hostile one); the agent gives up on it within the
// registration timeout and registers with the leader next in the list,
// instead of waiting out gRPC's connect timeout on every round.
func TestSilentReplicaDoesNotHoldTheLink(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() }) // held open, never answered
		}
	}()
	leader := &stallServer{registered: make(chan struct{})}
	start := time.Now()
	runLink(t, Config{Address: lis.Addr().String() + "," + serveStall(t, leader), InstanceID: "i-1", RegisterTimeout: 300 * time.Millisecond,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}, &launchRecorder{})
	select {
	case <-leader.registered:
	case <-time.After(10 * time.Second):
		t.Fatal("not registered with the leader after 10s")
	}
	// gRPC's own connect timeout (5s) would have held the first attempt.
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("registered with the leader after %s, want within about the registration timeout", d)
	}
}

// bigTasks lists n tasks with long messages, so that every full heartbeat
// is large and a peer that stops reading fills the stream's flow-control
// window in a few heartbeats.
type bigTasks struct {
	launchRecorder
	views []task.View
}

func newBigTasks(n int) *bigTasks {
	b := &bigTasks{}
	for i := range n {
		b.views = append(b.views, task.View{Spec: task.Spec{ID: fmt.Sprintf("j.%d.0", i)},
			Status: task.Status{State: task.Running, Message: strings.Repeat("m", 200)}})
	}
	return b
}

func (b *bigTasks) List() []task.View { return b.views }

// TestStalledSendEndsTheSession: a scheduler that acknowledged the
// registration and then stopped reading (wedged, or hostile) answers
// keepalive pings, so only the blocked sends show it: after SendTimeout
// the agent ends the session and registers again.
func TestStalledSendEndsTheSession(t *testing.T) {
	s := &stallServer{stall: 1, deaf: true, registered: make(chan struct{})}
	runLink(t, Config{Address: serveStall(t, s), InstanceID: "i-1", HeartbeatInterval: 5 * time.Millisecond, SendTimeout: 300 * time.Millisecond,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}, newBigTasks(500))
	select {
	case <-s.registered:
	case <-time.After(10 * time.Second):
		t.Fatalf("still on the session that stopped reading after 10s (%d streams)", s.calls.Load())
	}
}
