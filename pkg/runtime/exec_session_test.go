package runtime

import (
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/cio"

	"github.com/google/go-cmp/cmp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestSessionProcs(t *testing.T) {
	procs := []procInfo{
		{Pid: 1, PPid: 0, Session: 1},      // host init
		{Pid: 100, PPid: 90, Session: 100}, // task init
		{Pid: 200, PPid: 99, Session: 200}, // the exec (parent: the shim)
		{Pid: 201, PPid: 200, Session: 200},
		{Pid: 202, PPid: 201, Session: 202}, // setsid'd grandchild: still a descendant
		{Pid: 203, PPid: 100, Session: 200}, // re-parented to the task's init, same session
		{Pid: 300, PPid: 100, Session: 300}, // the task's own process
		{Pid: 301, PPid: 300, Session: 300},
	}
	for _, tc := range []struct {
		name string
		root int
		want []int
	}{
		{"exec", 200, []int{201, 202, 203}},
		{"leaf", 202, []int{}},
		{"gone", 999, []int{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if d := cmp.Diff(tc.want, sessionProcs(procs, tc.root)); d != "" {
				t.Errorf("sessionProcs(%d) (-want +got):\n%s", tc.root, d)
			}
		})
	}
}

type fakeProcs struct {
	procs  []procInfo
	killed []string
}

func (f *fakeProcs) Procs() ([]procInfo, error) { return f.procs, nil }
func (f *fakeProcs) Kill(pid int, sig syscall.Signal) error {
	f.killed = append(f.killed, sig.String()+" "+itoa(pid))
	if pid == 12 {
		return syscall.ESRCH // gone meanwhile: fine
	}
	return nil
}

func itoa(i int) string { return string(rune('0'+i/10)) + string(rune('0'+i%10)) }

func TestKillSession(t *testing.T) {
	f := &fakeProcs{procs: []procInfo{{Pid: 10, PPid: 5, Session: 10}, {Pid: 11, PPid: 10, Session: 10}, {Pid: 12, PPid: 11, Session: 10}, {Pid: 20, PPid: 5, Session: 20}}}
	if err := killSession(f, 10); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"killed 11", "killed 12"}, f.killed); d != "" {
		t.Errorf("kills (-want +got):\n%s", d)
	}
	f.killed = nil
	if err := killSession(f, 1); err != nil || f.killed != nil {
		t.Errorf("root 1 must never be walked: %v %v", f.killed, err)
	}
}

func TestParseStat(t *testing.T) {
	got, ok := parseStat(42, "42 (a) b (c)) S 7 42 40 0 -1 4194560 ...")
	if d := cmp.Diff(procInfo{Pid: 42, PPid: 7, Session: 40}, got); !ok || d != "" {
		t.Errorf("parseStat (-want +got):\n%s", d)
	}
	if _, ok := parseStat(1, "garbage"); ok {
		t.Error("garbage parsed")
	}
}

// An exec may change the arguments and the terminal, nothing else: the
// user, capabilities, no_new_privileges and the rest stay the task's.
func TestExecProcessSpecKeepsTheTasks(t *testing.T) {
	task := &specs.Process{
		Args: []string{"/app"}, User: specs.User{UID: 1000, GID: 1000},
		Capabilities:    &specs.LinuxCapabilities{Effective: []string{"CAP_NET_BIND_SERVICE"}},
		NoNewPrivileges: true, Env: []string{"A=1"}, Cwd: "/srv",
	}
	got := execProcessSpec(task, ExecOptions{Args: []string{"sh"}, TTY: true, Size: WindowSize{Width: 80, Height: 24}})
	want := *task
	want.Args = []string{"sh"}
	want.Terminal = true
	want.ConsoleSize = &specs.Box{Width: 80, Height: 24}
	if d := cmp.Diff(&want, got); d != "" {
		t.Errorf("exec spec (-want +got):\n%s", d)
	}
	if task.Args[0] != "/app" || task.Terminal {
		t.Error("the task's own spec was changed")
	}
}

// heldIO is an exec's output that something keeps open until it is closed.
type heldIO struct {
	cio.IO
	closed, canceled chan struct{}
	once             sync.Once
}

func (h *heldIO) Wait()        { <-h.closed }
func (h *heldIO) Cancel()      {}
func (h *heldIO) Close() error { h.once.Do(func() { close(h.closed) }); return nil }

// A process outside the session holding the output open does not hold the
// session: after the grace the agent closes its side.
func TestWaitOutputBounded(t *testing.T) {
	h := &heldIO{closed: make(chan struct{})}
	done := make(chan struct{})
	go func() { waitOutput(h, 10*time.Millisecond); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("waitOutput waited for a holder that never lets go")
	}
	select {
	case <-h.closed:
	default:
		t.Error("the output was not closed")
	}
}
