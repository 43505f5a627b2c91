package agent

import (
	"context"
	"encoding/json"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/metadataproxy"
)

// VPCOperator is the operator's view of the network provider.
type VPCOperator interface {
	Provider() string
	Status(ctx context.Context) (any, error)
	// GC frees what no task holds; without apply it only reports.
	GC(ctx context.Context, live map[string]bool, apply bool) ([]string, error)
}

// MetadataGetter answers a metadata path as a task would see it.
type MetadataGetter interface {
	Get(ctx context.Context, taskID, path string) (code int, body []byte, contentType string, err error)
}

func (s *Server) VPCStatus(ctx context.Context, _ *agentv1.VPCStatusRequest) (*agentv1.VPCStatusResponse, error) {
	if s.VPC == nil {
		return nil, status.Error(codes.FailedPrecondition, "no network provider configured (network.provider: none)")
	}
	st, err := s.VPC.Status(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	b, err := json.Marshal(st)
	if err != nil {
		return nil, toStatus(err)
	}
	return &agentv1.VPCStatusResponse{Provider: s.VPC.Provider(), StatusJson: b}, nil
}

func (s *Server) VPCGC(ctx context.Context, req *agentv1.VPCGCRequest) (*agentv1.VPCGCResponse, error) {
	if s.VPC == nil {
		return nil, status.Error(codes.FailedPrecondition, "no network provider configured (network.provider: none)")
	}
	live := map[string]bool{}
	for _, v := range s.Manager.List() {
		if !v.Status.State.Terminal() {
			live[v.Spec.ID] = true
		}
	}
	actions, err := s.VPC.GC(ctx, live, req.GetApply())
	if err != nil {
		return nil, toStatus(err)
	}
	return &agentv1.VPCGCResponse{Actions: actions}, nil
}

func (s *Server) MetadataGet(ctx context.Context, req *agentv1.MetadataGetRequest) (*agentv1.MetadataGetResponse, error) {
	if s.Metadata == nil {
		return nil, status.Error(codes.FailedPrecondition, "the metadata service is not enabled")
	}
	if _, err := s.Manager.Get(req.GetTaskId()); err != nil {
		return nil, toStatus(err)
	}
	code, body, ct, err := s.Metadata.Get(ctx, req.GetTaskId(), req.GetPath())
	if errors.Is(err, metadataproxy.ErrUnknownTask) {
		// A task without a netns (or not yet or no longer running) has no
		// metadata service.
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return &agentv1.MetadataGetResponse{Status: int32(code), Body: body, ContentType: ct}, nil
}
