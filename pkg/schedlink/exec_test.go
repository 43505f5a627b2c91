package schedlink

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/execterm"
)

// recorder collects what the relay sends up the stream, as text.
type recorder struct {
	mu   sync.Mutex
	msgs []string
	done chan struct{}
}

func (r *recorder) send(m *schedv1.AgentMessage) error {
	o := m.GetExecOutput()
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case o.GetErrorCode() != 0:
		r.msgs = append(r.msgs, fmt.Sprintf("%s error %d %s", o.GetSession(), o.GetErrorCode(), o.GetError()))
	case o.GetOutput().GetExited():
		r.msgs = append(r.msgs, fmt.Sprintf("%s exit %d", o.GetSession(), o.GetOutput().GetExitCode()))
	default:
		r.msgs = append(r.msgs, fmt.Sprintf("%s out %q", o.GetSession(), o.GetOutput().GetStdout()))
	}
	if o.GetErrorCode() != 0 || o.GetOutput().GetExited() {
		close(r.done)
	}
	return nil
}

func input(session string, in *agentv1.ExecInput) *schedv1.ExecRelayInput {
	return &schedv1.ExecRelayInput{Session: session, Input: in}
}

// echoRun echoes stdin until close_stdin, then exits with the byte count;
// it blocks until its context ends when the input says "hang".
func echoRun(ctx context.Context, start *agentv1.ExecStart, who string, recv func() (*agentv1.ExecInput, error), send func(*agentv1.ExecOutput) error) (int, error) {
	n := 0
	_ = send(&agentv1.ExecOutput{Stdout: []byte(who + " runs " + start.GetArgs()[0])})
	for {
		in, err := recv()
		if err != nil {
			return -1, err
		}
		if in.GetCloseStdin() {
			return n, nil
		}
		if string(in.GetStdin()) == "hang" {
			<-ctx.Done()
			return -1, fmt.Errorf("ended: %w", context.Canceled)
		}
		n += len(in.GetStdin())
		_ = send(&agentv1.ExecOutput{Stdout: in.GetStdin()})
	}
}

func TestExecRelaySession(t *testing.T) {
	rec := &recorder{done: make(chan struct{})}
	r := newExecRelay(context.Background(), echoRun, rec.send)
	r.handle(input("s1", &agentv1.ExecInput{Msg: &agentv1.ExecInput_Start{Start: &agentv1.ExecStart{Id: "t", Args: []string{"sh"}, Principal: "alice"}}}))
	r.handle(input("other", &agentv1.ExecInput{Msg: &agentv1.ExecInput_Stdin{Stdin: []byte("lost")}})) // no such session: dropped
	r.handle(input("s1", &agentv1.ExecInput{Msg: &agentv1.ExecInput_Stdin{Stdin: []byte("abc")}}))
	r.handle(input("s1", &agentv1.ExecInput{Msg: &agentv1.ExecInput_CloseStdin{CloseStdin: true}}))
	<-rec.done
	want := []string{`s1 out "alice runs sh"`, `s1 out "abc"`, "s1 exit 3"}
	if d := cmp.Diff(want, rec.msgs); d != "" {
		t.Errorf("relayed (-want +got):\n%s", d)
	}
}

func TestExecRelayCancelEndsTheSession(t *testing.T) {
	rec := &recorder{done: make(chan struct{})}
	r := newExecRelay(context.Background(), echoRun, rec.send)
	r.handle(input("s1", &agentv1.ExecInput{Msg: &agentv1.ExecInput_Start{Start: &agentv1.ExecStart{Id: "t", Args: []string{"sh"}}}}))
	r.handle(input("s1", &agentv1.ExecInput{Msg: &agentv1.ExecInput_Stdin{Stdin: []byte("hang")}}))
	r.handle(&schedv1.ExecRelayInput{Session: "s1", Cancel: true})
	<-rec.done
	// Canceled (code 1) either way: the cancel may come before the command
	// reads "hang" (the relay's recv sees it) or after (the command does).
	if got := rec.msgs[len(rec.msgs)-1]; got != "s1 error 1 ended: context canceled" && got != "s1 error 1 exec session: the caller went away" {
		t.Errorf("last message %q, want the session ended as Canceled", got)
	}
}

func TestExecRelayRefusedWithoutRunner(t *testing.T) {
	rec := &recorder{done: make(chan struct{})}
	r := newExecRelay(context.Background(), nil, rec.send)
	r.handle(input("s1", &agentv1.ExecInput{Msg: &agentv1.ExecInput_Start{Start: &agentv1.ExecStart{Id: "t", Args: []string{"sh"}}}}))
	<-rec.done
	if d := cmp.Diff([]string{"s1 error 12 this agent does not run relayed exec sessions"}, rec.msgs); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}

// TestExecRelayBoundsInput: the relay holds a session's unread input, so
// a caller sending more than the command reads, or one message larger
// than any caller's end sends, would grow the agent's memory. Both end
// the session (only it) with an error saying why, before the input is
// kept.
func TestExecRelayBoundsInput(t *testing.T) {
	t.Run("one message too large", func(t *testing.T) {
		rec := &recorder{done: make(chan struct{})}
		r := newExecRelay(context.Background(), echoRun, rec.send)
		r.handle(input("s1", &agentv1.ExecInput{Msg: &agentv1.ExecInput_Start{Start: &agentv1.ExecStart{Id: "t", Args: []string{"sh"}, Principal: "alice"}}}))
		r.handle(input("s1", &agentv1.ExecInput{Msg: &agentv1.ExecInput_Stdin{Stdin: make([]byte, execterm.MaxInput+1)}}))
		select {
		case <-rec.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("the session goes on after a message of %d bytes; relayed %d messages", execterm.MaxInput+1, len(rec.msgs))
		}
		last := rec.msgs[len(rec.msgs)-1]
		if !strings.HasPrefix(last, "s1 error 3 ") || !strings.Contains(last, "65537 bytes") {
			t.Errorf("last message %q, want the session ended as InvalidArgument naming the size", last)
		}
	})
	t.Run("unread input over the byte bound", func(t *testing.T) {
		rec := &recorder{done: make(chan struct{})}
		r := newExecRelay(context.Background(), echoRun, rec.send)
		r.handle(input("s1", &agentv1.ExecInput{Msg: &agentv1.ExecInput_Start{Start: &agentv1.ExecStart{Id: "t", Args: []string{"sh"}}}}))
		r.handle(input("s1", &agentv1.ExecInput{Msg: &agentv1.ExecInput_Stdin{Stdin: []byte("hang")}})) // the command reads no more
		chunk := make([]byte, execterm.MaxInput)
		for range relayInputBytes/len(chunk) + 1 {
			r.handle(input("s1", &agentv1.ExecInput{Msg: &agentv1.ExecInput_Stdin{Stdin: chunk}}))
		}
		select {
		case <-rec.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("the session goes on with %d bytes unread; relayed %d messages", relayInputBytes+len(chunk), len(rec.msgs))
		}
		if last := rec.msgs[len(rec.msgs)-1]; !strings.HasPrefix(last, "s1 error 8 ") {
			t.Errorf("last message %q, want the session ended as ResourceExhausted", last)
		}
	})
}
