package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/google/uuid"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// WindowSize is a terminal's size in characters.
type WindowSize struct {
	Width, Height uint16
}

// ExecOptions describe one command run inside a running task.
type ExecOptions struct {
	Args []string
	// TTY gives the process a pseudo-terminal (the process spec's
	// terminal: true); all its output then comes on Stdout.
	TTY bool
	// Stdin, when set, feeds the process; at its EOF the process's stdin
	// is closed.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Size is the terminal's first size; Resize carries later ones.
	Size   WindowSize
	Resize <-chan WindowSize
}

// Exec runs args in the running task's namespaces with the task's process
// settings and returns its exit code.
func (r *Runtime) Exec(ctx context.Context, id string, args []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	return r.ExecProcess(ctx, id, ExecOptions{Args: args, Stdin: stdin, Stdout: stdout, Stderr: stderr})
}

// ExecProcess runs a command inside the task id, in its namespaces and
// cgroup, as the task's user with the task's capabilities, seccomp filter
// and no_new_privileges: the process spec is the task's own with only the
// arguments (and the terminal) replaced, so an exec can never hold more
// than the task does. Each exec runs in its own cgroup below the task's
// (execCgroup): when ctx ends before the command does, the command and
// every process it started (setsid and double forks included) are killed,
// so a vanished client leaves nothing behind; when the command ends, what
// it left running is killed too.
func (r *Runtime) ExecProcess(ctx context.Context, id string, o ExecOptions) (int, error) {
	ctx = r.ctx(ctx)
	if len(o.Args) == 0 {
		return -1, errors.New("exec: no command")
	}
	c, err := r.load(ctx, id)
	if err != nil {
		return -1, err
	}
	t, err := c.Task(ctx, nil)
	if err != nil {
		return -1, fmt.Errorf("load task %s: %w", id, err)
	}
	spec, err := c.Spec(ctx)
	if err != nil {
		return -1, fmt.Errorf("spec of %s: %w", id, err)
	}
	pspec := execProcessSpec(spec.Process, o)

	stdin := o.Stdin
	var in *eofCloser
	if stdin != nil {
		in = &eofCloser{r: stdin, ready: make(chan struct{})}
		stdin = in
	}
	copts := []cio.Opt{cio.WithStreams(stdin, orDiscard(o.Stdout), orDiscard(o.Stderr))}
	if o.TTY {
		copts = append(copts, cio.WithTerminal)
	}
	execID := "exec-" + uuid.NewString()[:8]
	r.execs.add(execID)
	defer r.execs.remove(execID)
	// The session's own cgroup below the task's: what the exec starts
	// cannot leave it, setsid and double forks included.
	var cgroupsPath string
	if spec.Linux != nil {
		cgroupsPath = spec.Linux.CgroupsPath
	}
	scope, err := newExecCgroup(hostCgroups{}, cgroupRoot, cgroupsPath, execCgroupPrefix+execID)
	if err != nil {
		return -1, fmt.Errorf("exec in %s: %w", id, err)
	}
	defer scope.Kill() //nolint:errcheck // best effort: also the task's teardown removes it
	p, err := t.Exec(ctx, execID, pspec, cio.NewCreator(copts...))
	if err != nil {
		if in != nil {
			in.close = func() {}
			close(in.ready)
		}
		return -1, fmt.Errorf("exec in %s: %w", id, err)
	}
	bg := context.WithoutCancel(ctx)
	if in != nil {
		// At EOF of the caller's stdin, close the process's stdin too.
		in.close = func() { _ = p.CloseIO(bg, client.WithStdinCloser) }
		close(in.ready)
	}
	defer p.Delete(bg, client.WithProcessKill) //nolint:errcheck // best effort
	exitc, err := p.Wait(ctx)
	if err != nil {
		return -1, fmt.Errorf("wait exec in %s: %w", id, err)
	}
	if err := p.Start(ctx); err != nil {
		return -1, fmt.Errorf("start exec in %s: %w", id, explainExecStart(hostNS{}, int(t.Pid()), err))
	}
	pid := int(p.Pid())
	// Whatever way the exec ends, what it started ends too: everything in
	// its cgroup, and (what it forked before it was moved there) its
	// descendants and session.
	defer func() { _ = killSession(hostProcs{}, pid) }()
	if err := enterExecCgroup(scope, hostProcs{}, pid); err != nil {
		_ = p.Kill(bg, syscall.SIGKILL)
		<-exitc
		return -1, fmt.Errorf("exec in %s: %w", id, err)
	}

	done := make(chan struct{})
	defer close(done)
	if o.TTY && o.Resize != nil {
		go func() {
			for {
				select {
				case <-done:
					return
				case ws, ok := <-o.Resize:
					if !ok {
						return
					}
					_ = p.Resize(bg, uint32(ws.Width), uint32(ws.Height))
				}
			}
		}()
	}
	select {
	case s := <-exitc:
		code, _, err := s.Result()
		if err != nil {
			return -1, fmt.Errorf("exec in %s: %w", id, err)
		}
		// What it left running ends now: it would otherwise hold the
		// output open, and the session with it.
		_ = scope.Kill()
		_ = killSession(hostProcs{}, pid)
		if io := p.IO(); io != nil {
			waitOutput(io, execOutputGrace)
		}
		return int(code), nil
	case <-ctx.Done():
		// The session's processes first, while the tree still links them
		// to the exec; then the exec itself.
		_ = scope.Kill()
		_ = killSession(hostProcs{}, pid)
		_ = p.Kill(bg, syscall.SIGKILL)
		<-exitc
		return -1, context.Cause(ctx)
	}
}

// execProcessSpec is the task's process spec with only what an exec may
// change: its arguments, whether it has a terminal and the terminal's size.
func execProcessSpec(task *specs.Process, o ExecOptions) *specs.Process {
	p := *task
	p.Args = append([]string(nil), o.Args...)
	p.Terminal = o.TTY
	p.ConsoleSize = nil
	if o.TTY && o.Size.Width > 0 && o.Size.Height > 0 {
		p.ConsoleSize = &specs.Box{Width: uint(o.Size.Width), Height: uint(o.Size.Height)}
	}
	return &p
}

// eofCloser calls close once its reader hits EOF (after ready is closed).
type eofCloser struct {
	r     io.Reader
	ready chan struct{}
	close func()
	once  sync.Once
}

func (e *eofCloser) Read(b []byte) (int, error) {
	n, err := e.r.Read(b)
	if err == io.EOF {
		e.once.Do(func() {
			go func() { <-e.ready; e.close() }()
		})
	}
	return n, err
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

// execOutputGrace is how long an exited exec's output may take to drain.
// Only a process outside the session (one that left it before the agent
// moved the exec into its cgroup) can hold the output open longer.
const execOutputGrace = 2 * time.Second

// waitOutput waits for the process's output to be copied out, at most
// grace: then it closes its side, so that a process still holding the
// output open cannot hold the session.
func waitOutput(pio cio.IO, grace time.Duration) {
	done := make(chan struct{})
	go func() { pio.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		_ = pio.Close()
		pio.Cancel()
		<-done
	}
}
