package healthcheck

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// reports records what a service reports, safely across goroutines.
type reports struct {
	mu  sync.Mutex
	got []task.Health
	ch  chan task.Health
}

func newReports() *reports { return &reports{ch: make(chan task.Health, 100)} }

func (r *reports) report(h task.Health, changed bool) {
	if !changed {
		return
	}
	r.mu.Lock()
	r.got = append(r.got, h)
	r.mu.Unlock()
	r.ch <- h
}

func (r *reports) next(t *testing.T) task.Health {
	t.Helper()
	select {
	case h := <-r.ch:
		return h
	case <-time.After(10 * time.Second):
		t.Fatal("no health report")
	}
	return task.Health{}
}

// nsRecorder stands in for the netns dialer: it records which namespace
// each check dials from and where to.
type nsRecorder struct {
	mu     sync.Mutex
	ops    []string
	listen net.Listener
}

func (n *nsRecorder) open(path string) (DialFunc, func() error, error) {
	n.add("open " + path)
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
			n.add("dial in " + path + " " + addr)
			var d net.Dialer
			return d.DialContext(ctx, network, n.listen.Addr().String())
		}, func() error {
			n.add("close " + path)
			return nil
		}, nil
}

func (n *nsRecorder) add(s string) {
	n.mu.Lock()
	n.ops = append(n.ops, s)
	n.mu.Unlock()
}

func (n *nsRecorder) get() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.ops...)
}

func TestServiceTCPFromTaskNetNS(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ns := &nsRecorder{listen: l}
	s := New(nil, nil)
	s.openDialer = ns.open
	spec := &task.Spec{ID: "t1", HealthCheck: &task.HealthCheck{Kind: task.HealthTCP, Port: 8080, Interval: 10 * time.Millisecond,
		Timeout: time.Second, HealthyThreshold: 1, UnhealthyThreshold: 1}}
	rep := newReports()
	n := &task.NetworkAttachment{NetNSPath: "/run/netns/t1", IPv4: "198.18.0.5"}
	if err := s.Start(context.Background(), spec, n, time.Now(), nil, rep.report); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background(), spec, n, time.Now(), nil, rep.report); err != nil { // idempotent
		t.Fatal(err)
	}
	if h := rep.next(t); h.Status != task.HealthStarting {
		t.Fatalf("first report %+v", h)
	}
	if h := rep.next(t); h.Status != task.HealthHealthy {
		t.Fatalf("second report %+v", h)
	}
	s.Stop("t1")
	s.Stop("t1") // idempotent
	if s.Checked() != 0 {
		t.Fatal("still checked after Stop")
	}
	ops := ns.get()
	want := []string{"open /run/netns/t1", "dial in /run/netns/t1 198.18.0.5:8080"}
	if diff := cmp.Diff(want, ops[:2]); diff != "" {
		t.Fatalf("ops (-want +got):\n%s", diff)
	}
	if ops[len(ops)-1] != "close /run/netns/t1" {
		t.Fatalf("netns not closed last: %v", ops)
	}
	for _, op := range ops[1 : len(ops)-1] {
		if op != "dial in /run/netns/t1 198.18.0.5:8080" {
			t.Fatalf("a check dialled elsewhere: %q", op)
		}
	}
}

// Without a netns of its own a task's network check is refused, never
// dialled from the host's namespace.
func TestServiceRefusesHostNamespace(t *testing.T) {
	s := New(nil, nil)
	s.openDialer = func(string) (DialFunc, func() error, error) { t.Fatal("opened a dialer"); return nil, nil, nil }
	for _, kind := range []task.HealthKind{task.HealthHTTP, task.HealthTCP} {
		spec := &task.Spec{ID: "t1", HealthCheck: &task.HealthCheck{Kind: kind, Port: 80, Interval: time.Second, Timeout: time.Second, HealthyThreshold: 1, UnhealthyThreshold: 1}}
		for _, n := range []*task.NetworkAttachment{nil, {IPv4: "198.18.0.5"}, {NetNSPath: "/run/netns/x"}} {
			if err := s.Start(context.Background(), spec, n, time.Now(), nil, func(task.Health, bool) {}); !errors.Is(err, ErrNoNetNS) {
				t.Fatalf("%s with %+v: %v", kind, n, err)
			}
		}
	}
}

func TestServiceExecUnhealthyAndShutdown(t *testing.T) {
	ex := &fakeExec{code: 1, output: "db down"}
	var mu sync.Mutex
	s := New(lockedExec{ex, &mu}, nil)
	spec := &task.Spec{ID: "t2", HealthCheck: &task.HealthCheck{Kind: task.HealthExec, Command: []string{"check"}, Interval: 10 * time.Millisecond,
		Timeout: time.Second, HealthyThreshold: 1, UnhealthyThreshold: 2}}
	rep := newReports()
	ctx, cancel := context.WithCancel(context.Background())
	// A restarted agent: the recorded Healthy stands until two failures.
	last := &task.Health{Status: task.HealthHealthy, Since: time.Unix(5, 0)}
	if err := s.Start(ctx, spec, nil, time.Unix(1, 0), last, rep.report); err != nil {
		t.Fatal(err)
	}
	h := rep.next(t)
	if h.Status != task.HealthUnhealthy || h.Output != "exit code 1: db downdb down" {
		t.Fatalf("report %+v", h)
	}
	cancel() // agent shutdown ends the checks; Stop still returns
	s.Stop("t2")
}

type lockedExec struct {
	f  *fakeExec
	mu *sync.Mutex
}

func (l lockedExec) Exec(ctx context.Context, id string, args []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Exec(ctx, id, args, stdin, stdout, stderr)
}
