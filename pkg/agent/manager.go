package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/titus-agent/titus-agent/pkg/agent/taskrunner"
	"github.com/titus-agent/titus-agent/pkg/imagegc"
	"github.com/titus-agent/titus-agent/pkg/refill"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Errors callers branch on, classified in errdefs' vocabulary; the gRPC
// edge maps them to codes (apierr.ToGRPC).
var (
	ErrTaskNotFound  = errdefs.ErrNotFound.WithMessage("task not found")
	ErrTaskExists    = errdefs.ErrAlreadyExists.WithMessage("task already exists")
	ErrTooManyTasks  = errdefs.ErrResourceExhausted.WithMessage("agent is at its task limit")
	ErrShuttingDown  = errdefs.ErrUnavailable.WithMessage("agent is shutting down")
	ErrTaskNotActive = errdefs.ErrFailedPrecondition.WithMessage("task is not running")
	// ErrScheduled refuses a launch by hand on an agent attached to a scheduler.
	ErrScheduled = errdefs.ErrFailedPrecondition.WithMessage("this agent takes its tasks from a scheduler")
)

// managerRuntime is what the manager needs from the container runtime.
type managerRuntime interface {
	taskrunner.Waiter
	List(ctx context.Context) ([]runtime.ContainerStatus, error)
	Delete(ctx context.Context, id string) error
}

// Reconciler frees host resources (IPs, netns, disks) of tasks not in keep;
// each subsystem that keeps per-task state on the host implements it.
type Reconciler interface {
	Reconcile(ctx context.Context, keep map[string]bool) error
}

// RecordRestorer re-learns what the task records say a subsystem handed
// out (user namespace ranges), before any reconciler or runner runs: the
// records are the authority, never what a task could have changed on the
// host. It gets the records of tasks whose host resources are not yet
// cleaned up.
type RecordRestorer interface {
	RestoreRecords(recs []*taskrunner.Record)
}

// ManagerConfig wires a Manager.
type ManagerConfig struct {
	Store   *Store
	Runtime managerRuntime
	Stages  [][]taskrunner.PrestartHook
	// Needs: the hooks of earlier stages a hook waits for, instead of all
	// of them (taskrunner.Config.Needs).
	Needs        map[string][]string
	RestoreHooks []taskrunner.RestoreHook
	// Poststart hooks run beside a running task (health checks).
	Poststart   []taskrunner.PoststartHook
	Reconcilers []Reconciler
	Restorers   []RecordRestorer
	Logger      *slog.Logger
	// MaxTasks bounds the tasks known at once (finished ones included until
	// they are pruned).
	MaxTasks int
	// Retention is how long finished tasks stay visible.
	Retention time.Duration
	// Observe gets each prestart hook's duration (metrics); may be nil.
	Observe func(hook string, d time.Duration)
	// Quarantined gets the number of quarantined task records at Restore
	// (metrics); may be nil.
	Quarantined func(n int)
	// HostCheck, if set, adds the rules a spec breaks on this host (a host
	// path or device it does not give) to c; Launch refuses such a spec
	// with the rest of its validation, before anything is allocated.
	HostCheck func(s *task.Spec, c *task.Checker)
	// GPUs hands out this host's GPUs; nil: it has none.
	GPUs GPUAssigner
	// Launches, if set, counts the launches on their critical path
	// (taskrunner.Config.Launches).
	Launches *refill.Gate
}

// Manager owns every task on the host: one runner per task.
type Manager struct {
	cfg ManagerConfig
	log *slog.Logger
	bus *broadcaster

	agentCtx context.Context

	mu      sync.Mutex
	runners map[string]*taskrunner.Runner
	// pending are launches being recorded (Accepted, not yet on disk):
	// their ids, places and GPUs are taken, they have no runner yet.
	pending map[string]*taskrunner.Record
	// gpuDoubt: the running container of a quarantined task (its record
	// unreadable) may hold GPUs; none are given out until an operator acts.
	gpuDoubt bool
}

// NewManager makes a manager; call Restore before serving.
func NewManager(agentCtx context.Context, cfg ManagerConfig) *Manager {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxTasks == 0 {
		cfg.MaxTasks = 5000
	}
	if cfg.Retention == 0 {
		cfg.Retention = time.Hour
	}
	return &Manager{cfg: cfg, log: cfg.Logger, bus: newBroadcaster(), agentCtx: agentCtx,
		runners: map[string]*taskrunner.Runner{}, pending: map[string]*taskrunner.Record{}}
}

func (m *Manager) runnerConfig() taskrunner.Config {
	return taskrunner.Config{
		Stages:   m.cfg.Stages,
		Needs:    m.cfg.Needs,
		Runtime:  m.cfg.Runtime,
		Store:    m.cfg.Store,
		Notify:   m.bus.publish,
		Logger:   m.log,
		Observe:  m.cfg.Observe,
		Launches: m.cfg.Launches,

		Poststart: m.cfg.Poststart,
	}
}

// Launch validates a spec, records it durably as Accepted and starts its
// runner. The returned view is the accepted task.
func (m *Manager) Launch(ctx context.Context, spec *task.Spec) (task.View, error) {
	s := *spec
	s.Normalize()
	if err := m.validate(&s); err != nil {
		return task.View{}, err
	}
	if m.agentCtx.Err() != nil {
		return task.View{}, ErrShuttingDown
	}
	rec, err := m.reserve(&s)
	if err != nil {
		return task.View{}, err
	}
	// The fsync is outside m.mu: concurrent launches share a commit (the
	// store groups them) and nothing else waits on the disk.
	err = m.cfg.Store.Save(rec)
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.pending, s.ID)
	if err != nil {
		return task.View{}, fmt.Errorf("record task: %w", err)
	}
	// Both transitions, in order, as if written one by one.
	accepted := rec.Status
	accepted.State, accepted.Reason = task.Accepted, task.ReasonAccepted
	accepted.Transitions = slices.Clone(rec.Status.Transitions[:1])
	m.bus.publish(task.Event{TaskID: s.ID, Status: accepted})
	preparing := rec.Status
	preparing.Transitions = slices.Clone(rec.Status.Transitions)
	m.bus.publish(task.Event{TaskID: s.ID, Status: preparing})
	r := taskrunner.New(m.runnerConfig(), rec)
	m.runners[s.ID] = r
	go r.Run(m.agentCtx)
	return r.View(), nil
}

// reserve makes the record of a new task and holds its id, its place
// under MaxTasks and its GPUs (pending) until Launch has saved it. The
// record is Accepted and Preparing at once: one write records the intent
// and that its hooks may act (a launch cut short by a crash from then on
// is resumed once, taskrunner.Record.Resumable), instead of two.
func (m *Manager) reserve(s *task.Spec) (*taskrunner.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, running := m.runners[s.ID]
	if _, pending := m.pending[s.ID]; running || pending {
		return nil, fmt.Errorf("%w: %s", ErrTaskExists, s.ID)
	}
	if len(m.runners)+len(m.pending) >= m.cfg.MaxTasks {
		return nil, fmt.Errorf("%w (%d)", ErrTooManyTasks, m.cfg.MaxTasks)
	}
	rec := &taskrunner.Record{Spec: *s}
	now := time.Now()
	if _, err := rec.Status.Advance(task.Accepted, task.ReasonAccepted, "", now); err != nil {
		return nil, err
	}
	if _, err := rec.Status.Advance(task.Preparing, task.ReasonNone, "", now); err != nil {
		return nil, err
	}
	// Under m.mu, and pending until saved: no other launch sees these
	// devices free, and no container starts before they are on disk.
	gpus, err := m.assignGPUs(int(s.Resources.GPUs))
	if err != nil {
		return nil, err
	}
	rec.Resources.GPUs = gpus
	m.pending[s.ID] = rec
	return rec, nil
}

// validate checks a normalized spec: every field (task.Spec.Validate), then
// what this host gives (HostCheck); all broken rules in one error.
func (m *Manager) validate(s *task.Spec) error {
	err := s.Validate()
	if m.cfg.HostCheck == nil {
		return err
	}
	c := &task.Checker{}
	m.cfg.HostCheck(s, c)
	if len(c.Fields()) == 0 {
		return err
	}
	var ve *task.ValidationError
	if errors.As(err, &ve) {
		return &task.ValidationError{Fields: append(slices.Clip(ve.Fields), c.Fields()...)}
	}
	return errors.Join(err, &task.ValidationError{Fields: c.Fields()})
}

// Kill asks a task to stop with the given grace (0 = the spec's), for its
// owner (KilledByUser).
func (m *Manager) Kill(ctx context.Context, id string, grace time.Duration) (task.View, error) {
	return m.KillFor(ctx, id, grace, task.ReasonKilledByUser, "")
}

// KillFor is Kill with the reason and message the task's record keeps.
func (m *Manager) KillFor(ctx context.Context, id string, grace time.Duration, reason task.Reason, msg string) (task.View, error) {
	r, err := m.runner(id)
	if err != nil {
		return task.View{}, err
	}
	r.Kill(grace, reason, msg)
	return r.View(), nil
}

// Get returns one task.
func (m *Manager) Get(id string) (task.View, error) {
	r, err := m.runner(id)
	if err != nil {
		return task.View{}, err
	}
	return r.View(), nil
}

func (m *Manager) runner(id string) (*taskrunner.Runner, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.runners[id]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrTaskNotFound, id)
	}
	return r, nil
}

// List returns every known task, sorted by id.
func (m *Manager) List() []task.View {
	m.mu.Lock()
	ids := slices.Sorted(maps.Keys(m.runners))
	rs := make([]*taskrunner.Runner, len(ids))
	for i, id := range ids {
		rs[i] = m.runners[id]
	}
	m.mu.Unlock()
	out := make([]task.View, len(rs))
	for i, r := range rs {
		out[i] = r.View()
	}
	return out
}

// Subscribe streams every transition until ctx ends. A subscriber that
// falls too far behind has its channel closed.
func (m *Manager) Subscribe(ctx context.Context) <-chan task.Event {
	return m.bus.subscribe(ctx)
}

// Counts returns how many tasks are in each state.
func (m *Manager) Counts() map[task.State]int {
	out := map[task.State]int{}
	for _, v := range m.List() {
		out[v.Status.State]++
	}
	return out
}

// Restore re-adopts what a previous agent process left: running tasks keep
// running under their shims and get their runners back; tasks that ended
// meanwhile get their true exit status; containers labelled as ours but
// unknown are killed and removed; host resources of unknown tasks are freed.
// A task whose record could not be read is not unknown: its record is
// quarantined (Store.Load) and its container, if it has one, is left
// running with its host resources (never kill on doubt).
func (m *Manager) Restore(ctx context.Context) error {
	recs, loadErr := m.cfg.Store.Load()
	if loadErr != nil {
		m.log.Error("task records could not be read: quarantined, their containers are left running", "err", loadErr)
	}
	quarantined, err := m.cfg.Store.Quarantined()
	if err != nil {
		return err // without it, a quarantined task's container would look unknown
	}
	if m.cfg.Quarantined != nil {
		m.cfg.Quarantined(len(quarantined))
	}
	inQuarantine := map[string]bool{}
	for _, id := range quarantined {
		inQuarantine[id] = true
	}

	known := map[string]*taskrunner.Record{}
	for _, rec := range recs {
		known[rec.Spec.ID] = rec
	}
	containers, err := m.cfg.Runtime.List(ctx)
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	keep := map[string]bool{}
	for _, c := range containers {
		rec, ok := known[c.TaskID]
		if ok && c.ID == rec.Spec.ID {
			adoptUnrecordedStart(rec, c)
		}
		switch {
		case !ok && inQuarantine[c.TaskID]:
			m.log.Error("leaving alone the container of a task whose record is quarantined; "+
				"the agent does not manage it until an operator acts (docs/operations.md)",
				"container", c.ID, "task", c.TaskID, "state", c.State)
			keep[c.TaskID] = true
			m.mu.Lock()
			m.gpuDoubt = m.cfg.GPUs != nil // it may hold GPUs: give none out
			m.mu.Unlock()
			continue
		case ok && rec.Resumable():
			m.log.Warn("removing the half-made container of a launch to resume", "container", c.ID)
		case ok && !(rec.Status.State.Terminal() && rec.CleanedUp):
			continue
		default:
			m.log.Warn("reaping a container this agent does not know", "container", c.ID)
		}
		_ = m.cfg.Runtime.Kill(ctx, c.ID, syscall.SIGKILL)
		if err := m.cfg.Runtime.Delete(ctx, c.ID); err != nil {
			m.log.Error("reap container", "container", c.ID, "err", err)
		}
	}
	for _, rec := range recs {
		if !(rec.Status.State.Terminal() && rec.CleanedUp) {
			keep[rec.Spec.ID] = true
		}
	}
	var live []*taskrunner.Record
	for _, rec := range recs {
		if keep[rec.Spec.ID] {
			live = append(live, rec)
		}
	}
	for _, rs := range m.cfg.Restorers {
		rs.RestoreRecords(live)
	}
	// Before any runner: a resumed launch must not meet the orphan shim,
	// runc state or host resources of its cut-short first attempt.
	for _, rc := range m.cfg.Reconcilers {
		if err := rc.Reconcile(ctx, keep); err != nil {
			m.log.Error("reconcile", "err", err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, rec := range recs {
		r := taskrunner.New(m.runnerConfig(), rec)
		m.runners[rec.Spec.ID] = r
		if rec.Status.State == task.Accepted {
			go r.Run(m.agentCtx) // nothing was done yet: just do it now
			continue
		}
		go r.Restore(m.agentCtx, m.cfg.RestoreHooks)
	}
	return nil
}

// adoptUnrecordedStart completes the record of a task whose container was
// started by the previous agent, which died before recording it: the task
// is re-adopted (or gets its exit status) rather than started again.
func adoptUnrecordedStart(rec *taskrunner.Record, c runtime.ContainerStatus) {
	started := c.State == runtime.StateRunning || c.State == runtime.StateStopped || c.State == runtime.StatePaused
	if rec.Status.State != task.Starting || rec.Resources.Container || !started || c.Pid == 0 {
		return
	}
	rec.Resources.Container, rec.Resources.Pid = true, c.Pid
}

// Prune forgets finished, cleaned-up tasks older than the retention.
func (m *Manager) Prune(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, r := range m.runners {
		v := r.View()
		if !v.Status.State.Terminal() || len(v.Status.Transitions) == 0 {
			continue
		}
		select {
		case <-r.Done():
		default:
			continue
		}
		if now.Sub(v.Status.Transitions[len(v.Status.Transitions)-1].Time) < m.cfg.Retention {
			continue
		}
		if err := m.cfg.Store.Delete(id); err != nil {
			m.log.Error("prune", "task", id, "err", err)
			continue
		}
		delete(m.runners, id)
	}
}

// Wait blocks until every runner has returned (after agentCtx is cancelled).
func (m *Manager) Wait() {
	m.mu.Lock()
	rs := slices.Collect(maps.Values(m.runners))
	m.mu.Unlock()
	for _, r := range rs {
		<-r.Done()
	}
}

// broadcaster fans task events out to subscribers.
type broadcaster struct {
	mu   sync.Mutex
	subs map[chan task.Event]struct{}
}

func newBroadcaster() *broadcaster { return &broadcaster{subs: map[chan task.Event]struct{}{}} }

func (b *broadcaster) subscribe(ctx context.Context) <-chan task.Event {
	ch := make(chan task.Event, 1024)
	b.mu.Lock()
	b.subs[ch] = struct{}{}
	b.mu.Unlock()
	go func() {
		<-ctx.Done()
		b.mu.Lock()
		if _, ok := b.subs[ch]; ok {
			delete(b.subs, ch)
			close(ch)
		}
		b.mu.Unlock()
	}()
	return ch
}

func (b *broadcaster) publish(ev task.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		select {
		case ch <- ev:
		default: // too slow: cut it off rather than block every task
			delete(b.subs, ch)
			close(ch)
		}
	}
}

// ImagesInUse lists every task that holds an image on this host: from its
// acceptance (pending included) until its teardown is done. Image garbage
// collection never removes what these hold.
func (m *Manager) ImagesInUse() []imagegc.Holder {
	m.mu.Lock()
	var out []imagegc.Holder
	for id, rec := range m.pending {
		out = append(out, imagegc.Holder{TaskID: id, Ref: rec.Spec.Image})
	}
	rs := maps.Clone(m.runners)
	m.mu.Unlock()
	for id, r := range rs {
		ref, img, held := r.HeldImage()
		if !held {
			continue
		}
		h := imagegc.Holder{TaskID: id, Ref: ref}
		if img != nil {
			h.Name, h.Digest = img.Name, img.Digest
		}
		out = append(out, h)
	}
	return out
}
