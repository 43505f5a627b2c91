package runtime

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Image is a pulled, unpacked image: the name it was pulled by and its
// target (manifest or index). Create and ImageView take it as it is and
// resolve nothing; a task's record keeps it, so a resumed launch pulls the
// same content (Pinned) even if the tag has moved since.
type Image struct {
	Name      string `json:"name"`   // normalized reference
	Digest    string `json:"digest"` // target digest
	MediaType string `json:"mediaType"`
	Size      int64  `json:"size"`
}

// Pinned is the reference by digest of img's repository and content.
func (img Image) Pinned() (string, error) {
	named, err := reference.ParseNormalizedNamed(img.Name)
	if err != nil {
		return "", fmt.Errorf("image name %q: %w", img.Name, err)
	}
	dgst, err := digest.Parse(img.Digest)
	if err != nil {
		return "", fmt.Errorf("image %s digest %q: %w", img.Name, img.Digest, err)
	}
	pinned, err := reference.WithDigest(reference.TrimNamed(named), dgst)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", img.Name, err)
	}
	return pinned.String(), nil
}

// Pull resolves ref, fetches it and unpacks it into the snapshotter. An
// image that is already present and unpacked is not fetched again; a
// reference by digest is first looked for locally by its content, under
// whatever name it was pulled.
func (r *Runtime) Pull(ctx context.Context, ref string) (Image, error) {
	img, err := r.pull(r.ctx(ctx), ref)
	if err != nil {
		return Image{}, err
	}
	t := img.Target()
	return Image{Name: img.Name(), Digest: t.Digest.String(), MediaType: t.MediaType, Size: t.Size}, nil
}

// image is img as a containerd image, built from its descriptor without a
// look-up: the content store must hold it (Pull put it there). Reading it
// reports a missing image as ErrImageNotFound.
func (r *Runtime) image(img Image) (client.Image, error) {
	dgst, err := digest.Parse(img.Digest)
	if err != nil {
		return nil, fmt.Errorf("image %q is not resolved (digest %q): %w", img.Name, img.Digest, err)
	}
	return r.images.get(img, func() client.Image {
		return client.NewImage(r.client, images.Image{
			Name:   img.Name,
			Target: ocispec.Descriptor{MediaType: img.MediaType, Digest: dgst, Size: img.Size},
		})
	}), nil
}

// cached is the runtime's cached image for img (see imageCache), for
// reading its content; img's own metadata (labels) stays img's.
func (r *Runtime) cached(img client.Image) client.Image {
	t := img.Target()
	return r.images.get(Image{Name: img.Name(), Digest: t.Digest.String(), MediaType: t.MediaType, Size: t.Size},
		func() client.Image { return img })
}

// notFoundIsImage marks a not-found error met while using a resolved image
// (content or unpacked layers gone) as ErrImageNotFound.
func notFoundIsImage(err error) error {
	if errdefs.IsNotFound(err) && !errors.Is(err, ErrImageNotFound) {
		return fmt.Errorf("%w: %w", ErrImageNotFound, err)
	}
	return err
}

// local finds named among the images present: by name, or for a
// reference by digest, any image with that target.
func (r *Runtime) local(ctx context.Context, named reference.Named) (client.Image, error) {
	c, ok := named.(reference.Canonical)
	if !ok {
		return r.client.GetImage(ctx, named.String())
	}
	imgs, err := r.client.ListImages(ctx, fmt.Sprintf("target.digest==%q", c.Digest().String()))
	if err != nil {
		return nil, err
	}
	if len(imgs) == 0 {
		return nil, fmt.Errorf("image %s: %w", named, errdefs.ErrNotFound)
	}
	m := imgs[0].Metadata()
	m.Name = named.String()
	return client.NewImage(r.client, m), nil
}

func (r *Runtime) pull(ctx context.Context, ref string) (client.Image, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", ref, err)
	}
	defer r.pulls.begin(pullKeys(named)...)()
	img, err := r.fetch(ctx, named)
	if err != nil {
		return nil, err
	}
	// Best effort: a missing label only makes the image look older to
	// garbage collection, which never removes an image a task holds.
	if now := time.Now(); staleLastUsed(img.Metadata().Labels, now) {
		_ = r.touch(ctx, img.Name(), now)
	}
	return img, nil
}

// lastUsedGranularity is how old an image's LabelLastUsed may be before a
// launch rewrites it: a label write is a containerd metadata transaction
// (an fsync), and least-recently-used order needs no finer clock than
// garbage collection's own interval.
const lastUsedGranularity = time.Minute

// staleLastUsed reports whether labels' LabelLastUsed is missing,
// unreadable or older than lastUsedGranularity at now.
func staleLastUsed(labels map[string]string, now time.Time) bool {
	t, err := time.Parse(time.RFC3339Nano, labels[LabelLastUsed])
	return err != nil || now.Sub(t) >= lastUsedGranularity || t.After(now)
}

// fetch is pull without the bookkeeping: a local image, else the registry's.
func (r *Runtime) fetch(ctx context.Context, named reference.Named) (client.Image, error) {
	name := named.String()
	if img, err := r.local(ctx, named); err == nil {
		ok, err := r.cached(img).IsUnpacked(ctx, r.cfg.Snapshotter)
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
	// containerd's unpacker applies each layer as soon as it and the
	// layers below it are fetched, while the rest still download; the
	// downloads of every pull share one bound.
	start := time.Now()
	img, err := r.client.Pull(ctx, name,
		client.WithPullUnpack,
		client.WithPullSnapshotter(r.cfg.Snapshotter),
		client.WithResolver(r.resolver()),
		client.WithDownloadLimiter(r.downloads),
	)
	step(ctx, StepImageFetch, start, err)
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
// hosts (there is no implicit localhost exception), with per-host basic
// auth: the configured credentials of a host, else those of
// cfg.Credentials (ECR) when it knows the host.
func newResolver(cfg Config) remotes.Resolver {
	plain := slices.Clone(cfg.PlainHTTPRegistries)
	auth := cfg.RegistryAuth
	source := cfg.Credentials
	return docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(
			docker.WithPlainHTTP(func(host string) (bool, error) {
				return slices.Contains(plain, host), nil
			}),
			docker.WithAuthorizer(docker.NewDockerAuthorizer(
				docker.WithAuthClient(&http.Client{Transport: docker.DefaultHTTPTransport(nil)}),
				docker.WithAuthCreds(func(host string) (string, string, error) {
					if a, ok := auth[host]; ok {
						return a.Username, a.Password, nil
					}
					if source == nil {
						return "", "", nil
					}
					ctx, cancel := context.WithTimeout(context.Background(), credentialsTimeout)
					defer cancel()
					a, ok, err := source.Credentials(ctx, host)
					if err != nil || !ok {
						return "", "", err
					}
					return a.Username, a.Password, nil
				}),
			)),
		),
	})
}
