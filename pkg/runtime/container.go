package runtime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"

	"github.com/titus-agent/titus-agent/pkg/tasklog"
)

// State is a container's task state as seen by containerd.
type State string

// Task states.
const (
	StateNoTask  State = "no-task" // container exists, no task (never started or deleted)
	StateCreated State = "created"
	StateRunning State = "running"
	StateStopped State = "stopped"
	StatePaused  State = "paused"
	StateUnknown State = "unknown"
)

// ContainerStatus is one container and its task.
type ContainerStatus struct {
	ID       string
	TaskID   string // the titus.agent/task-id label
	Labels   map[string]string
	State    State
	Pid      uint32
	ExitCode uint32
	ExitedAt time.Time
}

// ExitStatus is how a task ended. A non-nil Err means the wait itself failed
// (e.g. containerd restarted): the task may still run; call Wait again.
type ExitStatus struct {
	Code      uint32
	ExitedAt  time.Time
	OOMKilled bool
	// PeakMemoryBytes is the cgroup's highest memory use; 0 if unknown.
	PeakMemoryBytes uint64
	Err             error
}

// oomGrace is how long Wait waits for a late OOM event when a task died of
// SIGKILL and nothing else says it was the OOM killer.
const oomGrace = 500 * time.Millisecond

// createTimeout bounds a container create, which a caller's cancel does
// not cut short (see Create).
const createTimeout = time.Minute

// Create creates the container (not its task) from cs.Image as Pull
// resolved it; an image no longer present is ErrImageNotFound. An existing
// container with that ID is left as it is.
//
// A cancel of ctx (a kill during the launch) does not cut the create
// short: containerd goes on preparing the snapshot of a create whose
// caller went away, so a teardown running at once could remove the
// snapshot before it exists and leave it behind. The create finishes
// (bounded by createTimeout) and the caller's teardown then removes it.
func (r *Runtime) Create(ctx context.Context, cs ContainerSpec) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.ctx(ctx)), createTimeout)
	defer cancel()
	if cs.ID == "" {
		return errors.New("create container: empty ID")
	}
	if _, err := r.client.LoadContainer(ctx, cs.ID); err == nil {
		return nil
	} else if !errdefs.IsNotFound(err) {
		return fmt.Errorf("load container %s: %w", cs.ID, err)
	}
	img, err := r.image(cs.Image)
	if err != nil {
		return fmt.Errorf("create container %s: %w", cs.ID, err)
	}
	opts := []client.NewContainerOpts{
		client.WithImage(img),
		client.WithContainerLabels(containerLabels(cs)),
		client.WithRuntime(defaultRuntime, runcOptions(r.cfg.CgroupDriver)),
	}
	if cs.RootfsPath == "" {
		// A snapshot left by a create that failed half-way would block ours.
		sn := r.client.SnapshotService(r.cfg.Snapshotter)
		if err := sn.Remove(ctx, cs.ID); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("remove stale snapshot %s: %w", cs.ID, err)
		}
		opts = append(opts, client.WithSnapshotter(r.cfg.Snapshotter), client.WithNewSnapshot(cs.ID, img))
	}
	sopts := append(specOpts(cs, oci.WithImageConfig(img)), oci.WithCgroup(cgroupsPath(r.cfg.CgroupDriver, r.cfg.Namespace, cs.ID)))
	opts = append(opts, client.WithNewSpec(sopts...))
	start := time.Now()
	_, err = r.client.NewContainer(ctx, cs.ID, opts...)
	step(ctx, StepContainerCreate, start, err)
	if err != nil {
		if errdefs.IsAlreadyExists(err) {
			return nil
		}
		return fmt.Errorf("create container %s: %w", cs.ID, notFoundIsImage(err))
	}
	return nil
}

// Start starts the container's task and returns its pid. A task that is
// already running is left alone and its pid returned.
func (r *Runtime) Start(ctx context.Context, id string) (uint32, error) {
	return r.StartAfter(ctx, id, nil)
}

// StartAfter is Start calling ready, if not nil, once the task exists (its
// shim runs and runc has created it, its process not yet running the
// task's command) and before that process starts. An error from ready
// stops it there: the task stays created, not started, and StartAfter
// returns the error.
func (r *Runtime) StartAfter(ctx context.Context, id string, ready func() error) (uint32, error) {
	ctx = r.ctx(ctx)
	c, err := r.load(ctx, id)
	if err != nil {
		return 0, err
	}
	t, err := c.Task(ctx, nil)
	switch {
	case errdefs.IsNotFound(err):
		ioc, err := r.ioCreator(id)
		if err != nil {
			return 0, err
		}
		start := time.Now()
		t, err = c.NewTask(ctx, ioc)
		step(ctx, StepTaskCreate, start, err)
		if err != nil {
			return 0, fmt.Errorf("create task %s: %w", id, err)
		}
		// Just created: no need to ask containerd its status.
	case err != nil:
		return 0, fmt.Errorf("load task %s: %w", id, err)
	default:
		st, err := t.Status(ctx)
		if err != nil {
			return 0, fmt.Errorf("task status %s: %w", id, err)
		}
		switch st.Status {
		case client.Running, client.Paused, client.Pausing:
			return t.Pid(), nil
		case client.Stopped:
			return t.Pid(), fmt.Errorf("start %s: %w", id, ErrTaskAlreadyFinished)
		}
	}
	if ready != nil {
		if err := ready(); err != nil {
			return 0, fmt.Errorf("start task %s: %w", id, err)
		}
	}
	start := time.Now()
	err = t.Start(ctx)
	step(ctx, StepTaskStart, start, err)
	if err != nil {
		return 0, fmt.Errorf("start task %s: %w", id, err)
	}
	return t.Pid(), nil
}

// ioCreator sends the task's output to the logger binary (owned by the
// shim, so it outlives the agent), or to a plain file, or nowhere.
func (r *Runtime) ioCreator(id string) (cio.Creator, error) {
	if r.cfg.LogDir == "" {
		return cio.NullIO, nil
	}
	if r.cfg.LoggerBinary == "" {
		p := tasklog.Path(r.cfg.LogDir, id)
		if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
			return nil, fmt.Errorf("log dir: %w", err)
		}
		return cio.LogFile(p), nil
	}
	lf := tasklog.Flags{LogDir: r.cfg.LogDir, MaxSizeMiB: r.cfg.LogMaxSizeMiB, MaxFiles: r.cfg.LogMaxFiles}
	return cio.BinaryIO(r.cfg.LoggerBinary, lf.Args()), nil
}

// Wait reports the exit of the container's task, which may have been started
// by an earlier agent process. The channel gets exactly one value.
func (r *Runtime) Wait(ctx context.Context, id string) (<-chan ExitStatus, error) {
	ctx = r.ctx(ctx)
	c, err := r.load(ctx, id)
	if err != nil {
		return nil, err
	}
	t, err := c.Task(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("load task %s: %w", id, err)
	}
	exitc, err := t.Wait(ctx)
	if err != nil {
		return nil, fmt.Errorf("wait task %s: %w", id, err)
	}
	out := make(chan ExitStatus, 1)
	go func() {
		defer close(out)
		s := <-exitc
		if err := s.Error(); err != nil {
			out <- ExitStatus{Err: fmt.Errorf("wait task %s: %w", id, err)}
			return
		}
		es := ExitStatus{Code: s.ExitCode(), ExitedAt: s.ExitTime()}
		es.OOMKilled = r.oomKilled(ctx, c, id, es.Code)
		if spec, err := c.Spec(ctx); err == nil && spec.Linux != nil {
			es.PeakMemoryBytes = cgroupPeakMemory(spec.Linux.CgroupsPath)
		}
		out <- es
	}()
	return out, nil
}

// oomKilled combines the OOM event record with the cgroup's own counter;
// for a SIGKILL death it also waits briefly for a late event.
func (r *Runtime) oomKilled(ctx context.Context, c client.Container, id string, code uint32) bool {
	if ok, _ := r.oom.seen(id); ok {
		return true
	}
	if spec, err := c.Spec(ctx); err == nil && spec.Linux != nil && cgroupOOMKilled(spec.Linux.CgroupsPath) {
		return true
	}
	if code == 128+uint32(syscall.SIGKILL) {
		return r.oom.waitFor(ctx, id, oomGrace)
	}
	return false
}

// Kill signals the task's init process. A missing or finished task is not
// an error.
func (r *Runtime) Kill(ctx context.Context, id string, sig syscall.Signal) error {
	ctx = r.ctx(ctx)
	c, err := r.client.LoadContainer(ctx, id)
	if errdefs.IsNotFound(err) {
		return nil
	} else if err != nil {
		return fmt.Errorf("load container %s: %w", id, err)
	}
	t, err := c.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return nil
	} else if err != nil {
		return fmt.Errorf("load task %s: %w", id, err)
	}
	if err := t.Kill(ctx, sig); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("kill %s with %v: %w", id, sig, err)
	}
	return nil
}

// Delete removes the task (killing it if it still runs), the container and
// its snapshot. What is already gone is skipped, so it is safe to repeat.
func (r *Runtime) Delete(ctx context.Context, id string) error {
	ctx = r.ctx(ctx)
	defer r.oom.forget(id)
	c, err := r.client.LoadContainer(ctx, id)
	if errdefs.IsNotFound(err) {
		return errors.Join(r.removeSnapshot(ctx, id), r.releaseTaskSlice(ctx, id))
	} else if err != nil {
		return fmt.Errorf("load container %s: %w", id, err)
	}
	if t, err := c.Task(ctx, nil); err == nil {
		if _, err := t.Delete(ctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("delete task %s: %w", id, err)
		}
	} else if !errdefs.IsNotFound(err) {
		return fmt.Errorf("load task %s: %w", id, err)
	}
	if err := c.Delete(ctx, client.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete container %s: %w", id, err)
	}
	return errors.Join(r.removeSnapshot(ctx, id), r.releaseTaskSlice(ctx, id))
}

func (r *Runtime) removeSnapshot(ctx context.Context, id string) error {
	err := r.client.SnapshotService(r.cfg.Snapshotter).Remove(ctx, id)
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("remove snapshot %s: %w", id, err)
	}
	return nil
}

// Status describes one container and its task.
func (r *Runtime) Status(ctx context.Context, id string) (ContainerStatus, error) {
	ctx = r.ctx(ctx)
	c, err := r.load(ctx, id)
	if err != nil {
		return ContainerStatus{}, err
	}
	return r.status(ctx, c)
}

func (r *Runtime) status(ctx context.Context, c client.Container) (ContainerStatus, error) {
	labels, err := c.Labels(ctx)
	if err != nil {
		return ContainerStatus{}, fmt.Errorf("labels of %s: %w", c.ID(), err)
	}
	cs := ContainerStatus{ID: c.ID(), TaskID: labels[LabelTaskID], Labels: labels, State: StateNoTask}
	t, err := c.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return cs, nil
	} else if err != nil {
		return cs, fmt.Errorf("load task %s: %w", c.ID(), err)
	}
	st, err := t.Status(ctx)
	if err != nil {
		return cs, fmt.Errorf("task status %s: %w", c.ID(), err)
	}
	cs.Pid = t.Pid()
	cs.State = stateOf(st.Status)
	cs.ExitCode = st.ExitStatus
	cs.ExitedAt = st.ExitTime
	return cs, nil
}

func stateOf(s client.ProcessStatus) State {
	switch s {
	case client.Created:
		return StateCreated
	case client.Running:
		return StateRunning
	case client.Stopped:
		return StateStopped
	case client.Paused, client.Pausing:
		return StatePaused
	}
	return StateUnknown
}

// List returns the containers labelled as managed by the agent.
func (r *Runtime) List(ctx context.Context) ([]ContainerStatus, error) {
	ctx = r.ctx(ctx)
	cs, err := r.client.Containers(ctx, fmt.Sprintf("labels.%q==true", LabelManaged))
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := make([]ContainerStatus, 0, len(cs))
	for _, c := range cs {
		st, err := r.status(ctx, c)
		if errdefs.IsNotFound(err) {
			continue // deleted meanwhile
		} else if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

func (r *Runtime) load(ctx context.Context, id string) (client.Container, error) {
	c, err := r.client.LoadContainer(ctx, id)
	if errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("%s: %w: %w", id, ErrContainerNotFound, err)
	} else if err != nil {
		return nil, fmt.Errorf("load container %s: %w", id, err)
	}
	return c, nil
}
