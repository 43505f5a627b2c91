package runtime

import (
	"bytes"
	"context"
	"sync"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// A launch reads the same image's manifest and config from containerd's
// content store three times (the pull's unpacked check, the disk's view
// of the layers, the container's spec and snapshot), each a few round
// trips. Content is addressed by digest and never changes, so the
// runtime keeps, per resolved image, what those reads give: its layers'
// diff IDs (containerd's image caches them itself, once asked) and its
// config. Nothing here trusts a name: an entry is found only by the
// whole resolved Image, digest included.

// imageCacheSize bounds the images kept (a few KiB each).
const imageCacheSize = 128

type imageCache struct {
	mu sync.Mutex
	m  map[Image]*cachedImage
}

// get returns the cached image for img, making it with mk if absent.
func (c *imageCache) get(img Image, mk func() client.Image) *cachedImage {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ci, ok := c.m[img]; ok {
		return ci
	}
	if c.m == nil {
		c.m = map[Image]*cachedImage{}
	}
	if len(c.m) >= imageCacheSize {
		for k := range c.m { // any one: a miss only costs the reads again
			delete(c.m, k)
			break
		}
	}
	ci := &cachedImage{Image: mk()}
	c.m[img] = ci
	return ci
}

// forget drops every entry of an image name (it was removed).
func (c *imageCache) forget(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.m {
		if k.Name == name {
			delete(c.m, k)
		}
	}
}

// cachedImage is a containerd image whose config descriptor and blob are
// read once.
type cachedImage struct {
	client.Image

	mu         sync.Mutex
	configDesc *ocispec.Descriptor
	configBlob []byte
}

// Config is the image's config descriptor, read once.
func (i *cachedImage) Config(ctx context.Context) (ocispec.Descriptor, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.configDesc != nil {
		return *i.configDesc, nil
	}
	d, err := i.Image.Config(ctx)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	i.configDesc = &d
	return d, nil
}

// ContentStore is containerd's, except that the config blob is read once.
func (i *cachedImage) ContentStore() content.Store {
	return &configOnce{Store: i.Image.ContentStore(), img: i}
}

type configOnce struct {
	content.Store
	img *cachedImage
}

func (s *configOnce) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	i := s.img
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.configDesc == nil || desc.Digest != i.configDesc.Digest {
		return s.Store.ReaderAt(ctx, desc)
	}
	if i.configBlob == nil {
		b, err := content.ReadBlob(ctx, s.Store, desc)
		if err != nil {
			return nil, err
		}
		// ReadBlob checked the size; the digest is checked here, so a
		// blob is kept only if it is the content its digest names.
		if digest.FromBytes(b) != desc.Digest {
			return s.Store.ReaderAt(ctx, desc)
		}
		i.configBlob = b
	}
	return blobReader{bytes.NewReader(i.configBlob)}, nil
}

type blobReader struct{ *bytes.Reader }

func (blobReader) Close() error { return nil }
