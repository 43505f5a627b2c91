package authz

import (
	"errors"

	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc/status"
)

// HiddenError is a refusal answered as NotFound: to a caller who may read
// neither a job nor its tasks, a job of another application answers as a
// job that does not exist would, so that an id tells nothing of whose it
// is. The caller sees only the NotFound status; the audit trail records
// the refusal (Outcome).
type HiddenError struct {
	// Refusal is the decision the caller is not told.
	Refusal error
	answer  *status.Status
}

// Hide answers refusal as notFound (the error the same call gets for
// something that does not exist).
func Hide(refusal, notFound error) error {
	return &HiddenError{Refusal: refusal, answer: status.Convert(errgrpc.ToGRPC(notFound))}
}

func (e *HiddenError) Error() string { return e.answer.Err().Error() }

// GRPCStatus is what the caller gets.
func (e *HiddenError) GRPCStatus() *status.Status { return e.answer }

// Outcome is what the audit trail records of a call's error: its gRPC
// code's name and message, or, for a refusal answered as NotFound, the
// refusal's, saying what the caller was told.
func Outcome(err error) (code, message string) {
	if h, ok := errors.AsType[*HiddenError](err); ok {
		s := status.Convert(errgrpc.ToGRPC(h.Refusal))
		return s.Code().String(), s.Message() + "; answered " + h.answer.Code().String() + ", as for a job that does not exist"
	}
	s := status.Convert(err)
	if err == nil {
		return s.Code().String(), ""
	}
	return s.Code().String(), s.Message()
}
