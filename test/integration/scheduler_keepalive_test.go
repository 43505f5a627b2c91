package integration

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/schedlink"
	"github.com/titus-agent/titus-agent/test/schedload"
)

// blackholeRelay forwards TCP to a target until blackhole is called; from
// then on what the connections open at that moment carry is read and
// dropped both ways, and nothing is closed or reset: each end sees a peer
// that went silent, as across a partition or towards a killed VM. It
// records when each end of those connections hung up itself. New
// connections are forwarded as before.
type blackholeRelay struct {
	l      net.Listener
	target string

	mu       sync.Mutex
	accepted int
	hole     chan struct{}       // closed by blackhole
	conns    []net.Conn          // every connection, closed at cleanup
	hungUp   map[string][]string // "front" (the agent) / "back" (the scheduler) → since the blackhole
	holeTime time.Time
}

func newBlackholeRelay(t *testing.T, target string) *blackholeRelay {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &blackholeRelay{l: l, target: target, hole: make(chan struct{}), hungUp: map[string][]string{}}
	t.Cleanup(func() {
		l.Close()
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, c := range r.conns {
			c.Close()
		}
	})
	go r.serve()
	return r
}

func (r *blackholeRelay) addr() string { return r.l.Addr().String() }

func (r *blackholeRelay) serve() {
	for {
		front, err := r.l.Accept()
		if err != nil {
			return
		}
		back, err := net.Dial("tcp", r.target)
		if err != nil {
			front.Close()
			continue
		}
		r.mu.Lock()
		r.accepted++
		hole := r.hole
		r.conns = append(r.conns, front, back)
		r.mu.Unlock()
		go r.pipe("front", front, back, hole)
		go r.pipe("back", back, front, hole)
	}
}

// pipe copies from→to until the blackhole, then drains from until it is
// closed by its peer, never closing to.
func (r *blackholeRelay) pipe(side string, from, to net.Conn, hole chan struct{}) {
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		select {
		case <-hole:
			if err != nil {
				r.mu.Lock()
				r.hungUp[side] = append(r.hungUp[side], time.Since(r.holeTime).Round(100*time.Millisecond).String())
				r.mu.Unlock()
				return
			}
			continue
		default:
		}
		if n > 0 {
			if _, werr := to.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if tc, ok := to.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			return
		}
	}
}

func (r *blackholeRelay) blackhole() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.holeTime = time.Now()
	close(r.hole)
	r.hole = make(chan struct{}) // connections made from now on pass
}

func (r *blackholeRelay) state() (accepted int, hungUp map[string][]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := map[string][]string{}
	for k, v := range r.hungUp {
		m[k] = append([]string(nil), v...)
	}
	return r.accepted, m
}

// TestSchedulerKeepaliveBlackholedStream: the agent's established stream
// to the scheduler goes silent without a reset. The scheduler marks the
// agent disconnected within its TTL (heartbeats stopped, whatever TCP
// says), its keepalive pings go unanswered and it drops its end; the
// agent's own pings go unanswered, it drops its end and reconnects, and
// is connected again: all within keepalive time + timeout (15s), where
// TCP alone took minutes.
func TestSchedulerKeepaliveBlackholedStream(t *testing.T) {
	begin(t)
	e, _ := newSchedEnv(t, schedOptions(t))
	relay := newBlackholeRelay(t, e.addrs[0])
	a := schedload.NewAgent(schedlink.Config{
		Address: relay.addr(), InstanceID: "ka", InstanceType: "m5.large", AZ: "az-a",
		Capacity:   schedlink.Capacity{CPUMillicores: 4000, MemoryMiB: 8192, DiskMiB: 10000, NetworkMbps: 1000, ENIs: 3, IPsPerENI: 10},
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 300 * time.Millisecond,
	}, schedload.RunForever)
	a.Start(e.ctx)
	t.Cleanup(a.Stop)
	e.waitAgents(1)

	agent := func() *schedv1.Agent {
		resp, err := e.api.ListAgents(e.ctx, &schedv1.ListAgentsRequest{})
		if err != nil || len(resp.Agents) != 1 {
			t.Fatalf("list agents: %v %v", resp, err)
		}
		return resp.Agents[0]
	}
	relay.blackhole()
	start := time.Now()

	// The scheduler: no heartbeat within the TTL, the agent is disconnected.
	for agent().Connected {
		if time.Since(start) > schedTTL+2*time.Second {
			t.Fatalf("the scheduler still shows the agent connected %s after its stream went silent (TTL %s)", time.Since(start), schedTTL)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("scheduler: agent disconnected after %s", time.Since(start).Round(10*time.Millisecond))

	// Both ends drop the silent connection (keepalive 10s + 5s) and the
	// agent is back over a new one.
	// A fixed bound, not one derived from the defaults: raising them past
	// it is what this test is for.
	const limit = 20 * time.Second
	last := ""
	for {
		accepted, hung := relay.state()
		ag := agent()
		if len(hung["front"]) >= 1 && len(hung["back"]) >= 1 && accepted >= 2 && ag.Connected {
			t.Logf("agent hung up after %s, scheduler after %s; reconnected (%s since the blackhole)",
				hung["front"][0], hung["back"][0], time.Since(start).Round(10*time.Millisecond))
			break
		}
		last = fmt.Sprintf("connections %d, hung up %v, connected %v", accepted, hung, ag.Connected)
		if time.Since(start) > limit {
			t.Fatalf("not recovered within %s of the blackhole: %s", limit, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
