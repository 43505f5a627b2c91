package runtime

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
)

// Image is a pulled, unpacked image.
type Image struct {
	Name   string // normalized reference
	Digest string // target (manifest or index) digest
}

// Pull fetches ref and unpacks it into the snapshotter. An image that is
// already present and unpacked is not fetched again.
func (r *Runtime) Pull(ctx context.Context, ref string) (Image, error) {
	img, err := r.pull(r.ctx(ctx), ref)
	if err != nil {
		return Image{}, err
	}
	return Image{Name: img.Name(), Digest: img.Target().Digest.String()}, nil
}

func (r *Runtime) pull(ctx context.Context, ref string) (client.Image, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", ref, err)
	}
	name := named.String()
	if img, err := r.client.GetImage(ctx, name); err == nil {
		ok, err := img.IsUnpacked(ctx, r.cfg.Snapshotter)
		if err == nil && ok {
			return img, nil
		}
		if err := img.Unpack(ctx, r.cfg.Snapshotter); err == nil {
			return img, nil
		}
		// Fall through: content may be gone; fetch it again.
	} else if !errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("look up image %s: %w", name, err)
	}
	img, err := r.client.Pull(ctx, name,
		client.WithPullUnpack,
		client.WithPullSnapshotter(r.cfg.Snapshotter),
		client.WithResolver(r.resolver()),
	)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", name, classifyPullError(err))
	}
	return img, nil
}

// classifyPullError adds ErrImageNotFound / ErrRegistryNotAllowed to the
// chain of errors callers branch on.
func classifyPullError(err error) error {
	msg := err.Error()
	switch {
	case errdefs.IsNotFound(err), strings.Contains(msg, "manifest unknown"), strings.Contains(msg, "name unknown"):
		return fmt.Errorf("%w: %w", ErrImageNotFound, err)
	case strings.Contains(msg, "server gave HTTP response to HTTPS client"):
		return fmt.Errorf("%w: %w", ErrRegistryNotAllowed, err)
	}
	return err
}

// newResolver resolves over HTTPS except for the configured plain-HTTP
// hosts (there is no implicit localhost exception), with per-host basic auth.
func newResolver(cfg Config) remotes.Resolver {
	plain := slices.Clone(cfg.PlainHTTPRegistries)
	auth := cfg.RegistryAuth
	return docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(
			docker.WithPlainHTTP(func(host string) (bool, error) {
				return slices.Contains(plain, host), nil
			}),
			docker.WithAuthorizer(docker.NewDockerAuthorizer(
				docker.WithAuthClient(&http.Client{Transport: docker.DefaultHTTPTransport(nil)}),
				docker.WithAuthCreds(func(host string) (string, string, error) {
					a, ok := auth[host]
					if !ok {
						return "", "", nil
					}
					return a.Username, a.Password, nil
				}),
			)),
		),
	})
}
