package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/imagegc"
	"github.com/titus-agent/titus-agent/pkg/runtime"
)

// ImageOperator is the operator's view of the image store (imagegc.GC).
type ImageOperator interface {
	List(ctx context.Context) ([]imagegc.Image, error)
	Remove(ctx context.Context, ref string) (imagegc.Result, error)
	Prune(ctx context.Context, minAge time.Duration) (imagegc.Result, error)
	MinAge() time.Duration
	Usage(ctx context.Context) (int64, error)
}

func (s *Server) images() (ImageOperator, error) {
	if s.Images == nil {
		return nil, status.Error(codes.FailedPrecondition, "image management is not wired")
	}
	return s.Images, nil
}

// imageErr classifies the runtime's image errors at the edge.
func imageErr(err error) error {
	switch {
	case errors.Is(err, runtime.ErrImageNotFound):
		return toStatus(fmt.Errorf("%w: %w", errdefs.ErrNotFound, err))
	case errors.Is(err, runtime.ErrImageBusy):
		return toStatus(fmt.Errorf("%w: %w", errdefs.ErrFailedPrecondition, err))
	}
	return toStatus(err)
}

func (s *Server) ListImages(ctx context.Context, _ *agentv1.ListImagesRequest) (*agentv1.ListImagesResponse, error) {
	im, err := s.images()
	if err != nil {
		return nil, err
	}
	imgs, err := im.List(ctx)
	if err != nil {
		return nil, imageErr(err)
	}
	out := &agentv1.ListImagesResponse{}
	for _, img := range imgs {
		out.Images = append(out.Images, &agentv1.ImageInfo{
			Name: img.Name, Digest: img.Digest, SizeBytes: img.Size,
			Created: timestamppb.New(img.Created), LastUsed: timestamppb.New(img.LastUsed),
			Pinned: img.Pinned, UsedBy: img.UsedBy,
		})
	}
	if out.StoreBytes, err = im.Usage(ctx); err != nil {
		return nil, imageErr(err)
	}
	return out, nil
}

// RemoveImage removes each image asked; the first refusal ends the call
// (those before it are gone).
func (s *Server) RemoveImage(ctx context.Context, req *agentv1.RemoveImageRequest) (*agentv1.RemoveImageResponse, error) {
	im, err := s.images()
	if err != nil {
		return nil, err
	}
	if len(req.GetImages()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "images: name at least one")
	}
	out := &agentv1.RemoveImageResponse{}
	for _, ref := range req.GetImages() {
		res, err := im.Remove(ctx, ref)
		if err != nil {
			if errors.Is(err, errdefs.ErrFailedPrecondition) || errors.Is(err, runtime.ErrImageNotFound) || errors.Is(err, runtime.ErrImageBusy) {
				return nil, imageErr(err)
			}
			return nil, imageErr(fmt.Errorf("%s: %w", ref, err))
		}
		out.Removed = append(out.Removed, res.Removed...)
		out.FreedBytes += res.Freed
	}
	return out, nil
}

func (s *Server) PruneImages(ctx context.Context, req *agentv1.PruneImagesRequest) (*agentv1.PruneImagesResponse, error) {
	im, err := s.images()
	if err != nil {
		return nil, err
	}
	minAge := im.MinAge()
	if d := req.GetMinAge(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return nil, status.Error(codes.InvalidArgument, "min_age: must be a duration of 0 or more")
		}
		minAge = d.AsDuration()
	}
	res, err := im.Prune(ctx, minAge)
	if err != nil {
		return nil, imageErr(err)
	}
	return &agentv1.PruneImagesResponse{Removed: res.Removed, FreedBytes: res.Freed, StoreBytes: res.After}, nil
}
