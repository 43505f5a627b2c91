package execterm

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/term"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
)

// Stream is the session's transport: the agent's ExecSession or the
// scheduler's relay of it.
type Stream interface {
	Send(*agentv1.ExecInput) error
	Recv() (*agentv1.ExecOutput, error)
	CloseSend() error
}

// Terminal is the caller's terminal: the OS side effects of a session.
type Terminal interface {
	// IsTerminal says whether stdin is a terminal.
	IsTerminal() bool
	// MakeRaw puts it in raw mode and returns the restore.
	MakeRaw() (restore func(), err error)
	// Size is its current size.
	Size() (width, height int, err error)
	// Resized delivers a value per window-size change until stop.
	Resized() (c <-chan struct{}, stop func())
}

// Options of one session.
type Options struct {
	TaskID string
	Args   []string
	TTY    bool // -t
	Stdin  bool // -i
}

// ErrNotATerminal: -t with stdin from a pipe or a file.
var ErrNotATerminal = errors.New("-t needs a terminal on stdin, and stdin is not one (a pipe or a file): leave out -t, and use -i to stream stdin to the command")

// Run runs the session on s with the caller's stdin/stdout/stderr and
// terminal t, and returns the command's exit code. Interrupts reach the
// process inside as bytes of its terminal (raw mode) rather than killing
// the caller.
//
// -t wants a terminal on the caller's stdin: without one there is nothing
// to put in raw mode or to size, and the end of piped input hangs up the
// command's terminal while the command may still run (exit 129). Run then
// refuses with ErrNotATerminal before anything reaches the task.
func Run(stream Stream, o Options, t Terminal, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if o.TTY && !t.IsTerminal() {
		return -1, ErrNotATerminal
	}
	s := &lockedStream{Stream: stream}
	start := &agentv1.ExecStart{Id: o.TaskID, Args: o.Args, Tty: o.TTY, Stdin: o.Stdin}
	raw := o.TTY
	if raw {
		if w, h, err := t.Size(); err == nil {
			start.Size = &agentv1.WindowSize{Width: uint32(w), Height: uint32(h)}
		}
	}
	if err := s.Send(&agentv1.ExecInput{Msg: &agentv1.ExecInput_Start{Start: start}}); err != nil {
		return -1, err
	}
	if raw {
		restore, err := t.MakeRaw()
		if err != nil {
			return -1, fmt.Errorf("raw mode: %w", err)
		}
		defer restore()
		resized, stop := t.Resized()
		defer stop()
		go func() {
			for range resized {
				w, h, err := t.Size()
				if err != nil {
					continue
				}
				_ = s.Send(&agentv1.ExecInput{Msg: &agentv1.ExecInput_Resize{Resize: &agentv1.WindowSize{Width: uint32(w), Height: uint32(h)}}})
			}
		}()
	}
	if o.Stdin {
		go func() {
			buf := make([]byte, MaxInput/2)
			for {
				n, err := stdin.Read(buf)
				if n > 0 {
					if s.Send(&agentv1.ExecInput{Msg: &agentv1.ExecInput_Stdin{Stdin: append([]byte(nil), buf[:n]...)}}) != nil {
						return
					}
				}
				if err != nil {
					_ = s.Send(&agentv1.ExecInput{Msg: &agentv1.ExecInput_CloseStdin{CloseStdin: true}})
					return
				}
			}
		}()
	}
	for {
		out, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return -1, errors.New("exec ended without an exit code")
		}
		if err != nil {
			return -1, err
		}
		if len(out.GetStdout()) > 0 {
			_, _ = stdout.Write(out.GetStdout())
		}
		if len(out.GetStderr()) > 0 {
			_, _ = stderr.Write(out.GetStderr())
		}
		if out.GetExited() {
			return int(out.GetExitCode()), nil
		}
	}
}

// OSTerminal is the process's own stdin terminal.
type OSTerminal struct{ File *os.File }

func (o OSTerminal) IsTerminal() bool { return term.IsTerminal(int(o.File.Fd())) }

func (o OSTerminal) MakeRaw() (func(), error) {
	st, err := term.MakeRaw(int(o.File.Fd()))
	if err != nil {
		return nil, err
	}
	return func() { _ = term.Restore(int(o.File.Fd()), st) }, nil
}

func (o OSTerminal) Size() (int, int, error) { return term.GetSize(int(o.File.Fd())) }

func (o OSTerminal) Resized() (<-chan struct{}, func()) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGWINCH)
	out := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(out)
		for {
			select {
			case <-sig:
				select {
				case out <- struct{}{}:
				case <-done:
					return
				}
			case <-done:
				return
			}
		}
	}()
	return out, func() { signal.Stop(sig); close(done) }
}

// lockedStream serialises sends: stdin and resizes come from two goroutines.
type lockedStream struct {
	Stream
	mu sync.Mutex
}

func (l *lockedStream) Send(m *agentv1.ExecInput) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.Stream.Send(m)
}
