package agent

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
)

// ExecSession runs an interactive exec for a caller on the local socket.
func (s *Server) ExecSession(stream grpc.BidiStreamingServer[agentv1.ExecInput, agentv1.ExecOutput]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	code, err := s.Sessions.Run(stream.Context(), first.GetStart(), localCaller(stream.Context()), stream)
	if err != nil {
		return toStatus(err)
	}
	return stream.Send(&agentv1.ExecOutput{Exited: true, ExitCode: int32(code)})
}

// localCaller names a caller on the local socket by its credentials.
func localCaller(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok {
		if pi, ok := p.AuthInfo.(peerInfo); ok {
			return fmt.Sprintf("local uid %d pid %d", pi.UID, pi.PID)
		}
	}
	return "local"
}
