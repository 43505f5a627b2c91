package core

import (
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

func reg(id, peer string, tasks ...string) model.Registration {
	r := model.Registration{InstanceID: id, AZ: "az-1", Peer: peer, Capacity: model.Capacity{Resources: model.Resources{CPU: 4000, Mem: 65536}}}
	for _, t := range tasks {
		r.Tasks = append(r.Tasks, model.TaskStatus{TaskID: t, State: task.Running})
	}
	return r
}

func closed(s *Session) bool {
	select {
	case <-s.Done():
		return true
	default:
		return false
	}
}

// silence makes agent id look unheard for d.
func (ts *testScheduler) silence(id string, d time.Duration) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	a := ts.agents[id]
	a.lastSeen = time.Now().Add(-d)
	a.heard.Store(a.lastSeen.UnixNano())
}

// TestSecondSessionIsRefused is the impostor: a stream claiming the
// instance id of a live agent (reporting no tasks) is refused with
// AlreadyExists naming the live session, and the live agent keeps its
// session and its running tasks.
func TestSecondSessionIsRefused(t *testing.T) {
	ts := newTestScheduler(t, Config{AgentTTL: 10 * time.Second, HeartbeatInterval: time.Second})
	live, err := ts.Connect(reg("i-1", "198.18.0.1:4000"))
	if err != nil {
		t.Fatal(err)
	}
	id := ts.submit(testSpec(&model.ServiceJob{Desired: 2, Max: 2}, 1000))
	placed := ts.place()
	if len(placed) != 2 {
		t.Fatalf("placed %v, want 2 tasks", placed)
	}
	ts.Updates(live, []model.TaskStatus{{TaskID: placed[0], State: task.Running}, {TaskID: placed[1], State: task.Running}})

	_, err = ts.Connect(reg("i-1", "198.18.0.66:5000"))
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("second session: err = %v, want AlreadyExists", err)
	}
	for _, want := range []string{"instance i-1 already has a live session from 198.18.0.1:4000 since "} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if closed(live) {
		t.Fatal("the live session was closed by the impostor")
	}
	if n := ts.job(id).Counts; n.Running != 2 || n.Lost != 0 {
		t.Fatalf("counts after the impostor = %+v, want 2 running, 0 lost", n)
	}
	if got := ts.Stats().RefusedSessions; got != 1 {
		t.Errorf("refused sessions = %d, want 1", got)
	}
	// The live agent's stream still works.
	ts.Heartbeat(live, true, nil, nil)
	ts.mu.Lock()
	a := ts.agents["i-1"]
	if a.sess != live || a.lost {
		t.Errorf("agent state after the impostor: sess=%p (live %p) lost=%v", a.sess, live, a.lost)
	}
	ts.mu.Unlock()
}

// TestSessionReplacement: the real agent coming back is accepted once its
// old session ended (closed stream) or went silent past a few heartbeats
// (a half-open connection), before the TTL would lose its tasks.
func TestSessionReplacement(t *testing.T) {
	for _, tc := range []struct {
		name   string
		before func(ts *testScheduler, old *Session)
	}{
		{"old stream closed", func(ts *testScheduler, old *Session) { ts.Disconnect(old) }},
		{"old stream half-open and silent", func(ts *testScheduler, old *Session) { ts.silence("i-1", 4*time.Second) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestScheduler(t, Config{AgentTTL: 10 * time.Second, HeartbeatInterval: time.Second})
			old, err := ts.Connect(reg("i-1", "198.18.0.1:4000"))
			if err != nil {
				t.Fatal(err)
			}
			id := ts.submit(testSpec(&model.ServiceJob{Desired: 1, Max: 1}, 1000))
			placed := ts.place()
			ts.Updates(old, []model.TaskStatus{{TaskID: placed[0], State: task.Running}})
			tc.before(ts, old)

			sess, err := ts.Connect(reg("i-1", "198.18.0.1:4001", placed[0]))
			if err != nil {
				t.Fatalf("reconnect: %v", err)
			}
			if !closed(old) {
				t.Error("the old session is still open")
			}
			if closed(sess) {
				t.Error("the new session is closed")
			}
			if n := ts.job(id).Counts; n.Running != 1 || n.Lost != 0 {
				t.Fatalf("counts after reconnect = %+v, want 1 running, 0 lost", n)
			}
		})
	}
}

// TestStaleAfterIsWithinTheTTL: a silent session can be replaced before
// the agent would be declared lost, whatever the heartbeat setting.
func TestStaleAfterIsWithinTheTTL(t *testing.T) {
	for _, cfg := range []Config{{}, {AgentTTL: 2 * time.Second, HeartbeatInterval: 200 * time.Millisecond}, {AgentTTL: 10 * time.Second, HeartbeatInterval: 9 * time.Second}} {
		c, err := New(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		if s := c.staleAfter(); s <= c.opts.HeartbeatInterval && s != c.opts.AgentTTL/2 || s >= c.opts.AgentTTL {
			t.Errorf("config %+v: staleAfter = %s (heartbeat %s, ttl %s)", cfg, s, c.opts.HeartbeatInterval, c.opts.AgentTTL)
		}
	}
}

// TestOnlyHeartbeatsKeepAnAgent: a session whose heartbeats stopped is
// lost at the TTL though task updates still arrive on it (a wedged
// heartbeat loop, or a stream that only half works); a heartbeat keeps it.
func TestOnlyHeartbeatsKeepAnAgent(t *testing.T) {
	ts := newTestScheduler(t, Config{AgentTTL: 10 * time.Second, HeartbeatInterval: time.Second})
	for _, hb := range []bool{false, true} {
		id := "i-upd"
		if hb {
			id = "i-hb"
		}
		sess, err := ts.Connect(reg(id, "198.18.0.1:4000"))
		if err != nil {
			t.Fatal(err)
		}
		ts.silence(id, 11*time.Second)
		ts.Updates(sess, nil)
		if hb {
			ts.Heartbeat(sess, true, nil, nil)
		}
		ts.checkLiveness(time.Now())
		ts.mu.Lock()
		a := ts.agents[id]
		lost, connected := a.lost, a.sess != nil
		ts.mu.Unlock()
		if lost == hb || connected == !hb {
			t.Errorf("heartbeat %v after 11s silent, updates only otherwise: lost=%v connected=%v, want lost=%v", hb, lost, connected, !hb)
		}
		if !hb && !closed(sess) {
			t.Error("the lost agent's session is still open")
		}
	}
}
