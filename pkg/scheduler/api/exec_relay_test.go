package api

import (
	"context"
	"io"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/execterm"
)

// execStream is a caller's end of ExecTask: its messages, then EOF.
type execStream struct {
	grpc.ServerStream
	ctx  context.Context
	in   []*agentv1.ExecInput
	sent []*agentv1.ExecOutput
}

func (s *execStream) Context() context.Context { return s.ctx }
func (s *execStream) Send(o *agentv1.ExecOutput) error {
	s.sent = append(s.sent, o)
	return nil
}
func (s *execStream) Recv() (*agentv1.ExecInput, error) {
	if len(s.in) == 0 {
		return nil, io.EOF
	}
	m := s.in[0]
	s.in = s.in[1:]
	return m, nil
}

// TestExecTaskBoundsTheCommand: every session start is queued on the
// agent's stream (up to relayAgentBuffer of them) and logged by the agent,
// so a command of any size a gRPC message allows (16 MiB) would grow the
// scheduler's and the agent's memory and logs. A command beyond a task's
// own command limits is refused at the door, before anything is relayed.
func TestExecTaskBoundsTheCommand(t *testing.T) {
	s := newServer(t)
	big := []string{"sh", "-c", strings.Repeat("x", 8000)}
	for range 10 {
		big = append(big, strings.Repeat("y", 8000))
	}
	st := &execStream{ctx: as("root@example.com"), in: []*agentv1.ExecInput{{Msg: &agentv1.ExecInput_Start{Start: &agentv1.ExecStart{Id: "job.0.0", Args: big}}}}}
	err := s.ExecTask(st)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "at most 65536") {
		t.Errorf("a %d-argument command: %v, want InvalidArgument naming the bound", len(big), err)
	}
}

// TestRelayRefusesLargeInput: one stdin message larger than any caller's
// end sends is refused before it is queued for the agent's stream.
func TestRelayRefusesLargeInput(t *testing.T) {
	var r execRelay
	ra := r.attach("i-1")
	err := ra.send(context.Background(), "s1", &agentv1.ExecInput{Msg: &agentv1.ExecInput_Stdin{Stdin: make([]byte, execterm.MaxInput+1)}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("send: %v, want InvalidArgument", err)
	}
	if n := len(ra.out); n != 0 {
		t.Errorf("%d messages queued for the agent", n)
	}
}
