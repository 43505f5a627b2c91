package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/execterm"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// fakeExecer records what the session asked of the runtime; it echoes
// stdin, records resizes and ends with the code the input asks for
// ("exit N"), or blocks until ctx ends when block is set.
type fakeExecer struct {
	mu      sync.Mutex
	calls   []string
	resizes []runtime.WindowSize
	block   chan struct{} // closed once the exec runs
}

func (f *fakeExecer) ExecProcess(ctx context.Context, id string, o runtime.ExecOptions) (int, error) {
	f.mu.Lock()
	f.calls = append(f.calls, fmt.Sprintf("%s %v tty=%v stdin=%v size=%dx%d", id, o.Args, o.TTY, o.Stdin != nil, o.Size.Width, o.Size.Height))
	f.mu.Unlock()
	if f.block != nil {
		close(f.block)
		<-ctx.Done()
		return -1, context.Cause(ctx)
	}
	b, _ := io.ReadAll(o.Stdin)
	for len(o.Resize) > 0 {
		f.resizes = append(f.resizes, <-o.Resize)
	}
	fmt.Fprintf(o.Stdout, "got %q", b)
	var code int
	fmt.Sscanf(string(b), "exit %d", &code)
	return code, nil
}

type fakeTasks map[string]task.State

func (f fakeTasks) Get(id string) (task.View, error) {
	st, ok := f[id]
	if !ok {
		return task.View{}, ErrTaskNotFound
	}
	return task.View{Status: task.Status{State: st}}, nil
}

// scriptTransport plays the caller: its inputs, then EOF (or blocks).
type scriptTransport struct {
	in   []*agentv1.ExecInput
	hold bool // after the script, block instead of EOF
	out  []string
	mu   sync.Mutex
}

func (s *scriptTransport) Recv() (*agentv1.ExecInput, error) {
	s.mu.Lock()
	if len(s.in) == 0 {
		s.mu.Unlock()
		if s.hold {
			select {}
		}
		return nil, io.EOF
	}
	m := s.in[0]
	s.in = s.in[1:]
	s.mu.Unlock()
	return m, nil
}

func (s *scriptTransport) Send(o *agentv1.ExecOutput) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.out = append(s.out, string(o.GetStdout())+string(o.GetStderr()))
	return nil
}

func stdinMsg(s string) *agentv1.ExecInput {
	return &agentv1.ExecInput{Msg: &agentv1.ExecInput_Stdin{Stdin: []byte(s)}}
}

func TestExecSessionPumpsStdinAndResizes(t *testing.T) {
	rt := &fakeExecer{}
	e := &ExecSessions{Runtime: rt, Tasks: fakeTasks{"t1": task.Running}, MaxPerTask: 1, MaxPerHost: 1}
	tr := &scriptTransport{in: []*agentv1.ExecInput{
		{Msg: &agentv1.ExecInput_Resize{Resize: &agentv1.WindowSize{Width: 100, Height: 40}}},
		stdinMsg("exit "), stdinMsg("3"),
		{Msg: &agentv1.ExecInput_CloseStdin{CloseStdin: true}},
	}}
	start := &agentv1.ExecStart{Id: "t1", Args: []string{"sh"}, Tty: true, Stdin: true, Size: &agentv1.WindowSize{Width: 80, Height: 24}}
	code, err := e.Run(context.Background(), start, "me", tr)
	if err != nil || code != 3 {
		t.Fatalf("Run = %d, %v; want 3", code, err)
	}
	if d := cmp.Diff([]string{"t1 [sh] tty=true stdin=true size=80x24"}, rt.calls); d != "" {
		t.Errorf("runtime calls (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]string{`got "exit 3"`}, tr.out); d != "" {
		t.Errorf("output (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]runtime.WindowSize{{Width: 100, Height: 40}}, rt.resizes); d != "" {
		t.Errorf("resizes (-want +got):\n%s", d)
	}
	if e.total != 0 || len(e.perTask) != 0 {
		t.Errorf("slots not released: total %d, per task %v", e.total, e.perTask)
	}
}

func TestExecSessionRefusals(t *testing.T) {
	tasks := fakeTasks{"run": task.Running, "done": task.Finished}
	for _, tc := range []struct {
		name  string
		start *agentv1.ExecStart
		code  codes.Code
		msg   string
	}{
		{"no start", nil, codes.InvalidArgument, "first message must be a start"},
		{"no args", &agentv1.ExecStart{Id: "run"}, codes.InvalidArgument, "args: is required"},
		{"unknown task", &agentv1.ExecStart{Id: "nope", Args: []string{"sh"}}, codes.NotFound, "task not found"},
		{"finished task", &agentv1.ExecStart{Id: "done", Args: []string{"sh"}}, codes.FailedPrecondition, "not running"},
		{"huge window", &agentv1.ExecStart{Id: "run", Args: []string{"sh"}, Size: &agentv1.WindowSize{Width: 1 << 20, Height: 1}}, codes.InvalidArgument, "window size out of range"},
		// Attack: a command no task could have, logged whole at its end.
		{"too many args", &agentv1.ExecStart{Id: "run", Args: make([]string, task.MaxArgs+1)}, codes.InvalidArgument, "at most 256"},
		{"huge args", &agentv1.ExecStart{Id: "run", Args: []string{"sh", strings.Repeat("x", task.MaxArgLen+1)}}, codes.InvalidArgument, "at most 8192"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := &fakeExecer{}
			e := &ExecSessions{Runtime: rt, Tasks: tasks}
			_, err := e.Run(context.Background(), tc.start, "me", &scriptTransport{})
			st := status.Convert(toStatus(err))
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
				t.Errorf("err = %v %q; want %v containing %q", st.Code(), st.Message(), tc.code, tc.msg)
			}
			if len(rt.calls) != 0 {
				t.Errorf("refused session reached the runtime: %v", rt.calls)
			}
		})
	}
}

// Attack: flooding a task (or the host) with sessions hits the bound with
// an error naming the key, and a freed slot can be used again.
func TestExecSessionFloodHitsTheBound(t *testing.T) {
	e := &ExecSessions{Tasks: fakeTasks{"a": task.Running, "b": task.Running, "c": task.Running}, MaxPerTask: 2, MaxPerHost: 3}
	var releases []func()
	var got []string
	for _, id := range []string{"a", "a", "a", "b", "c", "c"} {
		rel, err := e.acquire(id, "me")
		if err != nil {
			got = append(got, id+": "+status.Convert(toStatus(err)).Code().String()+" "+err.Error())
			continue
		}
		got = append(got, id+": ok")
		releases = append(releases, rel)
	}
	want := []string{
		"a: ok", "a: ok",
		"a: ResourceExhausted too many exec sessions: task a has 2 (exec.maxSessionsPerTask); end one first",
		"b: ok",
		"c: ResourceExhausted too many exec sessions: this host has 3 (exec.maxSessionsPerHost); end one first",
		"c: ResourceExhausted too many exec sessions: this host has 3 (exec.maxSessionsPerHost); end one first",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	releases[0]()
	releases[0]() // twice is harmless
	if _, err := e.acquire("c", "me"); err != nil {
		t.Errorf("a freed slot is not usable: %v", err)
	}
}

func TestExecSessionBoundsEndIt(t *testing.T) {
	for _, tc := range []struct {
		name            string
		idle, maxLength time.Duration
		want            error
		key             string
	}{
		{"idle", time.Millisecond, 0, ErrExecIdle, "exec.idleTimeout"},
		{"too long", 0, time.Millisecond, ErrExecTooLong, "exec.maxSessionLength"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := &fakeExecer{block: make(chan struct{})}
			e := &ExecSessions{Runtime: rt, Tasks: fakeTasks{"t": task.Running}, Idle: tc.idle, MaxLength: tc.maxLength}
			_, err := e.Run(context.Background(), &agentv1.ExecStart{Id: "t", Args: []string{"sh"}}, "me", &scriptTransport{hold: true})
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("err = %v; want %v naming %s", err, tc.want, tc.key)
			}
			if c := status.Code(toStatus(err)); c != codes.DeadlineExceeded {
				t.Errorf("code = %v, want DeadlineExceeded", c)
			}
		})
	}
}

// The caller vanishing (the stream breaks) ends the session.
func TestExecSessionEndsWhenCallerGoes(t *testing.T) {
	rt := &fakeExecer{block: make(chan struct{})}
	e := &ExecSessions{Runtime: rt, Tasks: fakeTasks{"t": task.Running}}
	_, err := e.Run(context.Background(), &agentv1.ExecStart{Id: "t", Args: []string{"sh"}}, "me", brokenTransport{})
	if err == nil || !strings.Contains(err.Error(), "caller gone") {
		t.Fatalf("err = %v, want caller gone", err)
	}
}

type brokenTransport struct{}

func (brokenTransport) Recv() (*agentv1.ExecInput, error) { return nil, errors.New("connection reset") }
func (brokenTransport) Send(*agentv1.ExecOutput) error    { return errors.New("connection reset") }

// Attack: one stdin message larger than any caller's end sends ends the
// session with an error saying so; the command never sees it.
func TestExecSessionRefusesLargeInput(t *testing.T) {
	rt := &fakeExecer{}
	e := &ExecSessions{Runtime: rt, Tasks: fakeTasks{"t1": task.Running}}
	tr := &scriptTransport{in: []*agentv1.ExecInput{stdinMsg(strings.Repeat("x", execterm.MaxInput+1))}}
	_, err := e.Run(context.Background(), &agentv1.ExecStart{Id: "t1", Args: []string{"cat"}, Stdin: true}, "me", tr)
	if st := status.Convert(toStatus(err)); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "65537 bytes") {
		t.Errorf("err = %v %q; want InvalidArgument naming the size", st.Code(), st.Message())
	}
	for _, o := range tr.out {
		if strings.Contains(o, "x") {
			t.Errorf("the command got the input: %d bytes of output", len(o))
		}
	}
}

// holdExecer runs every session until its context ends.
type holdExecer struct{ running chan string }

func (h holdExecer) ExecProcess(ctx context.Context, id string, o runtime.ExecOptions) (int, error) {
	h.running <- id
	<-ctx.Done()
	return -1, context.Cause(ctx)
}

// Attack: one caller (a tenant's principal, relayed by the scheduler)
// holding sessions in its own tasks would take every slot of the host,
// and no other tenant could debug its task there. A caller gets at most
// exec.maxSessionsPerCaller of the host's; another still gets in.
func TestExecSessionOneCallerCannotTakeTheHost(t *testing.T) {
	h := holdExecer{running: make(chan string, 8)}
	e := &ExecSessions{Runtime: h, Tasks: fakeTasks{"a": task.Running, "b": task.Running, "c": task.Running, "v": task.Running},
		MaxPerTask: 4, MaxPerHost: 8, MaxPerCaller: 2}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errs := make(chan error, 8)
	run := func(id, who string) {
		go func() {
			_, err := e.Run(ctx, &agentv1.ExecStart{Id: id, Args: []string{"sh"}}, who, &scriptTransport{hold: true})
			errs <- err
		}()
	}
	run("a", "alice@example.com")
	run("b", "alice@example.com")
	for range 2 {
		<-h.running
	}
	run("c", "alice@example.com")
	select {
	case err := <-errs:
		if st := status.Convert(toStatus(err)); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "exec.maxSessionsPerCaller") {
			t.Errorf("alice's third session: %v %q, want ResourceExhausted naming exec.maxSessionsPerCaller", st.Code(), st.Message())
		}
	case id := <-h.running:
		t.Errorf("alice's third session runs (in %s)", id)
	case <-time.After(5 * time.Second):
		t.Fatal("alice's third session neither runs nor is refused")
	}
	run("v", "bob@example.com")
	select {
	case id := <-h.running:
		if id != "v" {
			t.Errorf("bob's session runs in %s", id)
		}
	case err := <-errs:
		t.Errorf("bob's session refused: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("bob's session neither runs nor is refused")
	}
}
