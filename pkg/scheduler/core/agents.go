package core

import (
	"fmt"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Message is one thing the scheduler tells an agent; exactly one field is set.
type Message struct {
	// Registered answers a registration: the agent's id and the heartbeat interval to use.
	Registered *Registered
	// Launch starts tasks.
	Launch []*task.Spec
	// SendAllTasks asks the agent for a heartbeat listing every task, now.
	SendAllTasks bool
	// Kill stops tasks, for KillReason (empty: a user's kill) and KillMessage.
	Kill        []string
	KillReason  task.Reason
	KillMessage string
}

// Registered acknowledges an agent's registration.
type Registered struct {
	AgentID           string
	HeartbeatInterval time.Duration
	// ChangesOnly: the agent's heartbeats may list only the tasks whose
	// status changed since the previous one (HeartbeatChanges).
	ChangesOnly bool
}

// Session is one agent stream. Sends never block the scheduler: a stream
// that falls behind by a full buffer is closed and the agent reconnects and
// reconciles.
type Session struct {
	// out holds pointers: a buffer of sessionBuffer messages costs 32 KiB
	// per agent, not 360 KiB (1.7 GiB for 5,000 agents).
	out   chan *Message
	done  chan struct{}
	once  sync.Once
	agent *agentState
	// peer and since say where and when the session began.
	peer  string
	since time.Time
}

const sessionBuffer = 4096

func newSession() *Session {
	return &Session{out: make(chan *Message, sessionBuffer), done: make(chan struct{})}
}

func (s *Session) send(m Message) {
	select {
	case <-s.done:
	case s.out <- &m:
	default:
		s.close()
	}
}

func (s *Session) close() { s.once.Do(func() { close(s.done) }) }

// Out delivers what to send to the agent, in order.
func (s *Session) Out() <-chan *Message { return s.out }

// Done is closed when the scheduler ends the session (the agent must reconnect).
func (s *Session) Done() <-chan struct{} { return s.done }

// Heard records that the stream delivered a heartbeat now. It takes no lock.
func (s *Session) Heard() { s.agent.heard.Store(time.Now().UnixNano()) }

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// Connect registers an agent's stream and reconciles both sides: tasks it
// no longer has are lost, tasks it should not run are killed. The caller
// reads the session's Out until Done, and calls Disconnect at the end.
func (c *Core) Connect(reg model.Registration) (*Session, error) {
	if reg.InstanceID == "" || !nameRE.MatchString(reg.InstanceID) {
		return nil, errInvalidArgument("register.instance_id: must match " + nameRE.String())
	}
	if reg.Capacity.CPU <= 0 || reg.Capacity.Mem <= 0 {
		return nil, errInvalidArgument("register.capacity: cpu_millicores and memory_mib must be positive")
	}
	sess := newSession()
	now := time.Now()
	sess.peer, sess.since = reg.Peer, now
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped.Load() {
		return nil, model.ErrNotLeader
	}
	if a := c.agents[reg.InstanceID]; a != nil && a.sess != nil {
		if silent := a.silentFor(now); silent <= c.staleAfter() {
			c.stats.refusedSessions.Add(1)
			c.log.Warn("refused a second session for an instance id with a live one",
				"agent", a.id, "from", reg.Peer, "live_from", a.sess.peer, "live_since", a.sess.since, "live_heard_ago", silent.Round(time.Millisecond))
			return nil, errdefs.ErrAlreadyExists.WithMessage(fmt.Sprintf(
				"instance %s already has a live session from %s since %s (heard %s ago); refusing this one: is another host configured with the same instance id?",
				a.id, a.sess.peer, a.sess.since.UTC().Format(time.RFC3339), silent.Round(time.Millisecond)))
		}
		c.log.Warn("replacing a silent session", "agent", a.id, "from", reg.Peer, "old_from", a.sess.peer,
			"old_since", a.sess.since, "silent", a.silentFor(now).Round(time.Millisecond))
	}
	sess.agent = c.register(reg, sess, now)
	return sess, nil
}

// staleAfter is how long a session may go unheard before a new session
// for its instance id may replace it: a few heartbeats, well within the
// agent TTL, so an agent whose connection died half-open (no FIN seen)
// reconnects before its tasks are lost, while an impostor never displaces
// a live agent.
func (c *Core) staleAfter() time.Duration {
	return min(3*c.opts.HeartbeatInterval, c.opts.AgentTTL/2)
}

// Disconnect ends a session.
func (c *Core) Disconnect(sess *Session) {
	c.mu.Lock()
	if sess.agent.sess == sess {
		sess.agent.sess = nil
	}
	c.mu.Unlock()
	sess.close()
}

// register (re)attaches an agent's session and reconciles both sides.
// Callers hold c.mu.
func (c *Core) register(reg model.Registration, sess *Session, now time.Time) *agentState {
	a := c.agents[reg.InstanceID]
	if a == nil {
		a = newAgent(reg.InstanceID)
		c.agents[a.id] = a
	}
	if a.sess != nil && a.sess != sess {
		a.sess.close()
	}
	c.hostGen++
	a.instanceType, a.az, a.labels = reg.InstanceType, reg.AZ, reg.Labels
	a.capacity, a.enis, a.ipsPerENI = reg.Capacity.Resources, reg.Capacity.ENIs, reg.Capacity.IPsPerENI
	a.net = agentNet{cooldown: reg.Capacity.IPReuseCooldown, cooling: a.net.cooling}
	a.setAttributes(reg.Attributes)
	// Healthy as the agent says it is: one that reconnects with its disk
	// full took tasks it could only fail until its first heartbeat.
	a.sess, a.lost, a.healthy, a.lastSeen = sess, false, !reg.Unhealthy, now
	sess.send(Message{Registered: &Registered{AgentID: a.id, HeartbeatInterval: c.opts.HeartbeatInterval, ChangesOnly: true}})

	reported := make(map[string]bool, len(reg.Tasks))
	for _, st := range reg.Tasks {
		reported[st.TaskID] = true
		c.applyStatus(a, st, now)
	}
	var kills []string
	for id, t := range a.tasks {
		switch {
		case t.committing:
		case !reported[id]:
			c.end(t, task.Lost, "LostOnAgent", "the agent no longer has this task", 0, now)
		case t.killWanted && !t.lb.stopping: // a stopping task is killed once out of its target groups
			kills = append(kills, id)
		}
	}
	c.sendKill(a, kills...)
	c.setReport(a, reg.Network, reg.Tasks, false)
	c.st.SaveAgent(a.view(time.Time{}))
	c.poke()
	return a
}

// Heartbeat applies an agent's heartbeat listing every task it knows: its
// health, task states and, if it sent one, its ENI use (made knowing the
// tasks listed), under one lock.
func (c *Core) Heartbeat(sess *Session, healthy bool, tasks []model.TaskStatus, network *model.NetworkUsage) {
	c.update(sess, &healthy, tasks, network, false)
}

// HeartbeatChanges applies a heartbeat that lists only the tasks whose
// status changed since the agent's previous heartbeat (or registration).
// What the scheduler did on every heartbeat for each task listed, it does
// for the tasks whose status changed, and on every heartbeat for the tasks
// that wait on time: the Unhealthy ones a health policy replaces.
func (c *Core) HeartbeatChanges(sess *Session, healthy bool, tasks []model.TaskStatus, network *model.NetworkUsage) {
	c.update(sess, &healthy, tasks, network, true)
}

// ReportNetwork takes the ENI use an agent reports with its heartbeat,
// made knowing the tasks the heartbeat lists.
func (c *Core) ReportNetwork(sess *Session, u *model.NetworkUsage, listed []model.TaskStatus) {
	if u == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if a := sess.agent; a.sess == sess {
		c.setReport(a, u, listed, false)
	}
}

// Updates applies task state changes an agent reports.
func (c *Core) Updates(sess *Session, tasks []model.TaskStatus) {
	c.update(sess, nil, tasks, nil, false)
}

func (c *Core) update(sess *Session, healthy *bool, tasks []model.TaskStatus, network *model.NetworkUsage, changesOnly bool) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	a := sess.agent
	if a.sess != sess {
		return // superseded by a newer session
	}
	if healthy != nil {
		// Liveness is heartbeats alone: an agent whose heartbeat loop
		// is wedged is lost at the TTL, whatever else it still sends.
		a.lastSeen = now
		c.stats.heartbeats.Add(1)
		a.healthy = *healthy
		a.net.refused = nil // the heartbeat's report tells what the host has
	}
	for _, st := range tasks {
		c.applyStatus(a, st, now)
	}
	if healthy != nil {
		// Unhealthy tasks wait on the clock, not on a new status.
		for t := range a.unhealthy {
			c.checkHealth(t, now)
		}
	}
	c.setReport(a, network, tasks, changesOnly)
	if a.resync && a.sess != nil {
		// A status was not applied (its task's placement was being
		// written): changes-only heartbeats would not repeat it.
		a.resync = false
		a.sess.send(Message{SendAllTasks: true})
	}
}

// setReport takes an agent's ENI use and counts its findings of subnet
// zones for the fleet. Callers hold c.mu.
func (c *Core) setReport(a *agentState, u *model.NetworkUsage, listed []model.TaskStatus, changesOnly bool) {
	if u == nil {
		return
	}
	a.setReportOf(u, listed, changesOnly)
	c.zones.note(a, u.ZoneSubnets, u.OtherZoneSubnets)
}

// Agents lists every agent known, by id.
func (c *Core) Agents() []*model.Agent {
	c.mu.RLock()
	defer c.mu.RUnlock()
	now := time.Now()
	out := make([]*model.Agent, 0, len(c.agents))
	for _, a := range c.agents {
		out = append(out, a.view(now))
	}
	sortAgents(out)
	return out
}

func sortAgents(l []*model.Agent) { sort.Slice(l, func(a, b int) bool { return l[a].ID < l[b].ID }) }

// Drain stops or resumes placements on the selected agents. Draining
// moves their service tasks elsewhere at the pace of each job's
// disruption budget: a replacement is started, and the old task stopped
// once its replacement is available (the step loop does the moving).
func (c *Core) Drain(sel model.AgentSelector, drain bool) ([]*model.Agent, error) {
	if sel.ID == "" && len(sel.Labels) == 0 {
		return nil, errInvalidArgument("id or labels: one is required")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	var out []*model.Agent
	for _, a := range c.agents {
		if !sel.Selects(a.id, a.labels) {
			continue
		}
		a.drained = drain
		c.st.SaveAgent(a.view(time.Time{}))
		for _, t := range a.tasks {
			c.touched(t.job)
		}
		out = append(out, a.view(now))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no agent matches", model.ErrNotFound)
	}
	c.stepLocked(false, now)
	for i, v := range out {
		out[i] = c.agents[v.ID].view(now)
	}
	c.poke()
	sortAgents(out)
	return out, nil
}
