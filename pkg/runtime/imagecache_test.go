package runtime

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// countingImage is a containerd image whose config and content reads are
// counted; the rest of client.Image is not used here.
type countingImage struct {
	client.Image
	config  ocispec.Descriptor
	store   *countingStore
	configs int
}

func (i *countingImage) Config(context.Context) (ocispec.Descriptor, error) {
	i.configs++
	return i.config, nil
}
func (i *countingImage) ContentStore() content.Store { return i.store }

type countingStore struct {
	content.Store
	blobs map[digest.Digest][]byte
	reads map[digest.Digest]int
}

func (s *countingStore) ReaderAt(_ context.Context, d ocispec.Descriptor) (content.ReaderAt, error) {
	s.reads[d.Digest]++
	return blobReader{bytes.NewReader(s.blobs[d.Digest])}, nil
}

func TestCachedImageReadsItsConfigOnce(t *testing.T) {
	ctx := context.Background()
	cfg := []byte(`{"config":{"Env":["PATH=/bin"]}}`)
	cfgDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfg), Size: int64(len(cfg))}
	layer := []byte("other blob")
	layerDesc := ocispec.Descriptor{Digest: digest.FromBytes(layer), Size: int64(len(layer))}
	st := &countingStore{blobs: map[digest.Digest][]byte{cfgDesc.Digest: cfg, layerDesc.Digest: layer}, reads: map[digest.Digest]int{}}
	inner := &countingImage{config: cfgDesc, store: st}
	var c imageCache
	key := Image{Name: "docker.io/library/busybox:latest", Digest: "sha256:" + fmt.Sprintf("%064d", 1)}
	for range 3 {
		img := c.get(key, func() client.Image { return inner })
		d, err := img.Config(ctx)
		if err != nil || d.Digest != cfgDesc.Digest {
			t.Fatalf("config: %v %v", d, err)
		}
		b, err := content.ReadBlob(ctx, img.ContentStore(), d)
		if err != nil || !bytes.Equal(b, cfg) {
			t.Fatalf("config blob: %q %v", b, err)
		}
		if _, err := content.ReadBlob(ctx, img.ContentStore(), layerDesc); err != nil {
			t.Fatal(err)
		}
	}
	if inner.configs != 1 || st.reads[cfgDesc.Digest] != 1 {
		t.Errorf("config read %d times, its blob %d times; want once each", inner.configs, st.reads[cfgDesc.Digest])
	}
	if st.reads[layerDesc.Digest] != 3 {
		t.Errorf("another blob read %d times, want every time (3): only the config is kept", st.reads[layerDesc.Digest])
	}
	// Another digest under the same name is another image.
	other := key
	other.Digest = "sha256:" + fmt.Sprintf("%064d", 2)
	made := false
	c.get(other, func() client.Image { made = true; return inner })
	if !made {
		t.Error("an image of another digest under the same name shared the cache entry")
	}
	c.forget(key.Name)
	made = false
	c.get(key, func() client.Image { made = true; return inner })
	if !made {
		t.Error("a removed image was still cached")
	}
}

// A blob that is not what its digest names is never kept.
func TestCachedImageKeepsOnlyVerifiedConfig(t *testing.T) {
	ctx := context.Background()
	cfg := []byte(`{"config":{}}`)
	cfgDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromString("something else"), Size: int64(len(cfg))}
	st := &countingStore{blobs: map[digest.Digest][]byte{cfgDesc.Digest: cfg}, reads: map[digest.Digest]int{}}
	var c imageCache
	img := c.get(Image{Name: "x"}, func() client.Image { return &countingImage{config: cfgDesc, store: st} })
	d, _ := img.Config(ctx)
	for range 2 {
		_, _ = content.ReadBlob(ctx, img.ContentStore(), d)
	}
	if st.reads[cfgDesc.Digest] < 2 {
		t.Errorf("a blob not matching its digest was kept (read %d times)", st.reads[cfgDesc.Digest])
	}
}

func TestImageCacheIsBounded(t *testing.T) {
	var c imageCache
	for i := range imageCacheSize * 3 {
		c.get(Image{Name: "img", Digest: fmt.Sprint(i)}, func() client.Image { return &countingImage{} })
	}
	if n := len(c.m); n > imageCacheSize {
		t.Errorf("%d images cached, want at most %d", n, imageCacheSize)
	}
}
