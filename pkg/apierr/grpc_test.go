package apierr

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var (
	errGone = errdefs.ErrNotFound.WithMessage("task not found")
	errFull = errdefs.ErrResourceExhausted.WithMessage("queue full")
)

func TestToGRPC(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{fmt.Errorf("%w: job %q", errGone, "j1"), codes.NotFound, `task not found: job "j1"`},
		{fmt.Errorf("%w: limit 5", errFull), codes.ResourceExhausted, "queue full: limit 5"},
		{errdefs.ErrInvalidArgument.WithMessage("bad"), codes.InvalidArgument, "bad"},
		{fmt.Errorf("dial: %w", errdefs.ErrUnavailable), codes.Unavailable, "dial: unavailable"},
		{fmt.Errorf("wait: %w", context.Canceled), codes.Canceled, "wait: context canceled"},
		{fmt.Errorf("wait: %w", context.DeadlineExceeded), codes.DeadlineExceeded, "wait: context deadline exceeded"},
		{errors.New("disk on fire"), codes.Internal, "disk on fire"},
		{status.Error(codes.Aborted, "as is"), codes.Aborted, "as is"},
	} {
		st, ok := status.FromError(ToGRPC(tc.err))
		if !ok || st.Code() != tc.code || st.Message() != tc.msg {
			t.Errorf("ToGRPC(%v) = %v %q, want %v %q", tc.err, st.Code(), st.Message(), tc.code, tc.msg)
		}
	}
	if ToGRPC(nil) != nil {
		t.Error("ToGRPC(nil) != nil")
	}
	if errors.Is(errGone, errFull) || !errors.Is(fmt.Errorf("x: %w", errGone), errGone) {
		t.Error("sentinels of errdefs classes must stay distinct and matchable")
	}
}
