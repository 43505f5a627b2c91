package execterm

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
)

// fakeStream records what the caller sends and answers with out.
type fakeStream struct {
	sent []string
	out  []*agentv1.ExecOutput
}

func (f *fakeStream) Send(m *agentv1.ExecInput) error {
	switch v := m.GetMsg().(type) {
	case *agentv1.ExecInput_Start:
		f.sent = append(f.sent, "start tty="+boolStr(v.Start.GetTty())+" stdin="+boolStr(v.Start.GetStdin()))
	case *agentv1.ExecInput_Stdin:
		f.sent = append(f.sent, "stdin "+string(v.Stdin))
	case *agentv1.ExecInput_CloseStdin:
		f.sent = append(f.sent, "close-stdin")
	case *agentv1.ExecInput_Resize:
		f.sent = append(f.sent, "resize")
	}
	return nil
}

func (f *fakeStream) Recv() (*agentv1.ExecOutput, error) {
	if len(f.out) == 0 {
		return nil, io.EOF
	}
	o := f.out[0]
	f.out = f.out[1:]
	return o, nil
}

func (f *fakeStream) CloseSend() error { return nil }

func boolStr(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

// fakeTerm is the caller's stdin: a terminal or not; it records raw mode.
type fakeTerm struct {
	tty  bool
	ops  []string
	stop chan struct{}
}

func (f *fakeTerm) IsTerminal() bool { return f.tty }
func (f *fakeTerm) MakeRaw() (func(), error) {
	f.ops = append(f.ops, "raw")
	return func() { f.ops = append(f.ops, "restore") }, nil
}
func (f *fakeTerm) Size() (int, int, error) { return 80, 24, nil }
func (f *fakeTerm) Resized() (<-chan struct{}, func()) {
	c := make(chan struct{})
	return c, func() { close(c) }
}

// -t from a pipe is refused before anything is sent: nothing reaches the
// task, the caller's input is not read, and the error says what to do.
func TestRunRefusesTTYWithoutTerminal(t *testing.T) {
	for _, o := range []Options{{TaskID: "web", Args: []string{"sh"}, TTY: true}, {TaskID: "web", Args: []string{"sh"}, TTY: true, Stdin: true}} {
		s, term := &fakeStream{}, &fakeTerm{}
		in := strings.NewReader("echo hi\n")
		code, err := Run(s, o, term, in, io.Discard, io.Discard)
		if !errors.Is(err, ErrNotATerminal) || code != -1 {
			t.Fatalf("%+v: code %d err %v, want ErrNotATerminal", o, code, err)
		}
		if !strings.Contains(err.Error(), "leave out -t") || !strings.Contains(err.Error(), "-i") {
			t.Errorf("the error does not say what to do: %v", err)
		}
		if len(s.sent) != 0 || len(term.ops) != 0 || in.Len() != len("echo hi\n") {
			t.Errorf("%+v: sent %v, terminal %v, stdin read %d bytes", o, s.sent, term.ops, len("echo hi\n")-in.Len())
		}
	}
}

func TestRun(t *testing.T) {
	for _, tc := range []struct {
		name     string
		o        Options
		tty      bool
		wantSent []string
		wantOps  []string
	}{
		{"-i from a pipe", Options{Stdin: true}, false, []string{"start tty=false stdin=true", "stdin hi\n", "close-stdin"}, nil},
		{"-t on a terminal", Options{TTY: true}, true, []string{"start tty=true stdin=false"}, []string{"raw", "restore"}},
		{"no flags", Options{}, true, []string{"start tty=false stdin=false"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.TaskID, tc.o.Args = "web", []string{"cat"}
			s := &fakeStream{}
			term := &fakeTerm{tty: tc.tty}
			var out bytes.Buffer
			// The output comes once stdin was sent and closed (when streamed).
			ds := &waitStream{fakeStream: s, ready: make(chan struct{})}
			if !tc.o.Stdin {
				close(ds.ready)
			}
			s.out = []*agentv1.ExecOutput{{Stdout: []byte("hi\n")}, {Exited: true, ExitCode: 3}}
			in := strings.NewReader("hi\n")
			code, err := Run(ds, tc.o, term, in, &out, io.Discard)
			if err != nil || code != 3 || out.String() != "hi\n" {
				t.Fatalf("code %d err %v out %q", code, err, out.String())
			}
			if d := cmp.Diff(tc.wantSent, s.sent); d != "" {
				t.Errorf("sent (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tc.wantOps, term.ops); d != "" {
				t.Errorf("terminal (-want +got):\n%s", d)
			}
		})
	}
}

// waitStream holds the first answer until the caller closed stdin.
type waitStream struct {
	*fakeStream
	ready chan struct{}
}

func (w *waitStream) Send(m *agentv1.ExecInput) error {
	err := w.fakeStream.Send(m)
	if m.GetCloseStdin() {
		close(w.ready)
	}
	return err
}

func (w *waitStream) Recv() (*agentv1.ExecOutput, error) {
	<-w.ready
	return w.fakeStream.Recv()
}
