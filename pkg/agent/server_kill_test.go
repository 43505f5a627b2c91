package agent

import (
	"context"
	"math"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
)

// A kill grace out of range is refused at the door, before the manager
// (nil here) or a Duration conversion that would wrap around sees it.
func TestKillTaskRefusesGraceOutOfRange(t *testing.T) {
	s := &Server{}
	for _, g := range []int64{-1, 3601, math.MaxInt64} {
		_, err := s.KillTask(context.Background(), &agentv1.KillTaskRequest{Id: "t1", GracePeriodSeconds: g})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("grace %d: %v, want InvalidArgument", g, err)
		}
	}
}
