package apierr

import (
	"errors"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ToGRPC maps err to a gRPC status error with err's message: its errdefs
// class picks the code (errgrpc's table), an unclassified error is
// Internal, and a status error passes through unchanged.
func ToGRPC(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errdefs.Resolve(err) == errdefs.ErrUnknown && !errors.Is(err, errdefs.ErrUnknown) {
		return status.Error(codes.Internal, err.Error())
	}
	return errgrpc.ToGRPC(err)
}
