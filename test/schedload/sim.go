package schedload

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/titus-agent/titus-agent/pkg/schedlink"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// ErrNoSuchTask is returned by Kill for an unknown task.
var ErrNoSuchTask = errors.New("no such task")

// Behavior decides how a simulated task runs: for how long (negative = until
// killed) and with which exit code.
type Behavior func(spec *task.Spec) (runFor time.Duration, exit int32)

// RunForever keeps every task running until it is killed.
func RunForever(*task.Spec) (time.Duration, int32) { return -1, 0 }

// SimTasks is an in-memory task manager for simulated agents: a launched
// task is accepted and running at once, then ends as its Behavior says.
type SimTasks struct {
	behavior Behavior
	// OnLaunch, if set, is called for every new task.
	OnLaunch func(id string, at time.Time)
	// LaunchError, if set and it returns an error, fails the launch with it
	// (as a host that cannot set tasks up does; the link reports a platform error).
	LaunchError func(spec *task.Spec) error

	mu       sync.Mutex
	health   func(spec *task.Spec) task.HealthStatus
	launches map[string]int
	// views are the tasks in launch order, without their transitions,
	// and idx their positions by id. List hands out views itself, capped
	// at its length: a launch appends past what any reader sees, and a
	// change to a task copies views first when it was handed out
	// (shared). The simulated agents share the scheduler's process and
	// cores in a load run; a copy of every task each heartbeat cost them,
	// not the scheduler, a fifth of the run's CPU at 40 tasks an agent.
	views  []task.View
	shared bool
	// version counts changes to views (schedlink.Versioned).
	version uint64
	idx     map[string]int
	subs    map[chan task.Event]struct{}
	timer   map[string]*time.Timer
}

// NewSimTasks returns an empty task manager.
func NewSimTasks(b Behavior) *SimTasks {
	if b == nil {
		b = RunForever
	}
	return &SimTasks{behavior: b, idx: map[string]int{}, subs: map[chan task.Event]struct{}{}, timer: map[string]*time.Timer{}, launches: map[string]int{}}
}

// SetHealth makes tasks with a health check report the status fn gives
// them: the running ones now (a health change, as the agent sends it),
// later ones from their start. Without it they report no health.
func (s *SimTasks) SetHealth(fn func(spec *task.Spec) task.HealthStatus) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.health = fn
	now := time.Now()
	for i := range s.views {
		if v := s.views[i]; !v.Status.State.Terminal() && s.setHealth(&v, now) {
			*s.mutable(i) = v
			s.publish(task.Event{TaskID: v.Spec.ID, Status: v.Status, HealthChanged: true})
		}
	}
}

// setHealth applies the health policy to v; it reports a change. Callers hold s.mu.
func (s *SimTasks) setHealth(v *task.View, now time.Time) bool {
	if s.health == nil || v.Spec.HealthCheck == nil {
		return false
	}
	st := s.health(&v.Spec)
	if h := v.Status.Health; h != nil && h.Status == st {
		return false
	}
	v.Status.Health = &task.Health{Status: st, Since: now, Checked: now, OK: st == task.HealthHealthy}
	return true
}

// Launches counts the launch requests of each task id (a repeat is a
// scheduler that sent the same task twice).
func (s *SimTasks) Launches() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.launches))
	for k, v := range s.launches {
		out[k] = v
	}
	return out
}

var _ schedlink.Tasks = (*SimTasks)(nil)

// Launch implements schedlink.Tasks.
func (s *SimTasks) Launch(_ context.Context, spec *task.Spec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	if s.LaunchError != nil {
		if err := s.LaunchError(spec); err != nil {
			return err
		}
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.launches[spec.ID]++
	if _, ok := s.idx[spec.ID]; ok {
		return nil
	}
	if s.OnLaunch != nil {
		s.OnLaunch(spec.ID, now)
	}
	v := task.View{Spec: *spec}
	s.advance(&v, task.Accepted, task.ReasonAccepted, 0, now)
	s.setHealth(&v, now)
	s.advance(&v, task.Running, task.ReasonStarted, 0, now)
	s.idx[spec.ID] = len(s.views)
	s.views = append(s.views, v)
	s.version++
	runFor, exit := s.behavior(spec)
	if runFor >= 0 {
		id := spec.ID
		s.timer[id] = time.AfterFunc(runFor, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			i, ok := s.idx[id]
			if !ok {
				return // forgotten
			}
			st, reason := task.Finished, task.ReasonCompleted
			if exit != 0 {
				st, reason = task.Failed, task.ReasonNonZeroExit
			}
			s.advance(s.mutable(i), st, reason, exit, time.Now())
		})
	}
	return nil
}

// advance moves a task forward and tells subscribers. Callers hold s.mu.
func (s *SimTasks) advance(v *task.View, st task.State, reason task.Reason, exit int32, now time.Time) {
	if _, err := v.Status.Advance(st, reason, "", now); err != nil {
		return
	}
	v.Status.ExitCode = exit
	v.Status.Transitions = nil // nobody reads them; List stays one copy
	s.publish(task.Event{TaskID: v.Spec.ID, Status: v.Status})
}

// publish tells subscribers. Callers hold s.mu.
func (s *SimTasks) publish(ev task.Event) {
	ev.Status.Transitions = nil
	for ch := range s.subs {
		select {
		case ch <- ev:
		default: // a slow subscriber misses it; heartbeats carry the state
		}
	}
}

// Kill implements schedlink.Tasks.
func (s *SimTasks) Kill(_ context.Context, id string, _ task.Reason, _ string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.idx[id]
	if !ok {
		return fmt.Errorf("%w: %s", ErrNoSuchTask, id)
	}
	v := s.mutable(i)
	if t := s.timer[id]; t != nil {
		t.Stop()
	}
	if !v.Status.State.Terminal() {
		s.advance(v, task.Killed, task.ReasonKilledByUser, 137, time.Now())
	}
	return nil
}

// List implements schedlink.Tasks. The slice is shared: do not modify it.
func (s *SimTasks) List() []task.View {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shared = true
	return s.views[:len(s.views):len(s.views)]
}

// mutable is the task at i to change, views copied first when a reader
// may hold them. Callers hold s.mu.
func (s *SimTasks) mutable(i int) *task.View {
	s.version++
	if s.shared {
		s.views, s.shared = slices.Clone(s.views), false
	}
	return &s.views[i]
}

// Subscribe implements schedlink.Tasks.
func (s *SimTasks) Subscribe(ctx context.Context) <-chan task.Event {
	ch := make(chan task.Event, 1024)
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	s.mu.Unlock()
	go func() {
		<-ctx.Done()
		s.mu.Lock()
		delete(s.subs, ch)
		s.mu.Unlock()
	}()
	return ch
}

// Running returns the ids of tasks not in a final state.
func (s *SimTasks) Running() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for i := range s.views {
		if v := &s.views[i]; !v.Status.State.Terminal() {
			out = append(out, v.Spec.ID)
		}
	}
	return out
}

// Forget drops every task, as a host that was rebuilt would.
func (s *SimTasks) Forget() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.timer {
		t.Stop()
	}
	s.views, s.shared, s.idx, s.timer = nil, false, map[string]int{}, map[string]*time.Timer{}
	s.version++
}

// Version implements schedlink.Versioned.
func (s *SimTasks) Version() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// Agent is a simulated agent: SimTasks behind the real agent link.
type Agent struct {
	Config schedlink.Config
	Tasks  *SimTasks

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// NewAgent returns a stopped simulated agent.
func NewAgent(cfg schedlink.Config, b Behavior) *Agent {
	return &Agent{Config: cfg, Tasks: NewSimTasks(b)}
}

// Start connects the agent (again); its tasks survive a Stop/Start.
func (a *Agent) Start(ctx context.Context) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cancel != nil {
		return
	}
	ctx, a.cancel = context.WithCancel(ctx)
	a.done = make(chan struct{})
	go func() {
		defer close(a.done)
		_ = schedlink.Run(ctx, a.Config, a.Tasks)
	}()
}

// Stop disconnects the agent, as a dead or partitioned host would.
func (a *Agent) Stop() {
	a.mu.Lock()
	cancel, done := a.cancel, a.done
	a.cancel = nil
	a.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}
