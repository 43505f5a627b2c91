package testenv

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	goruntime "runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

var busybox struct {
	once sync.Once
	img  v1.Image
	err  error
}

// PushBusybox pushes a busybox image (built once per process from Debian's
// busybox-static) to reg as repo:tag and returns the full reference.
func PushBusybox(t TB, reg *Registry, repo, tag string) string {
	t.Helper()
	return push(t, reg, repo, tag, busyboxImage(t))
}

// busyboxImage builds the busybox image once per process.
func busyboxImage(t TB) v1.Image {
	t.Helper()
	busybox.once.Do(func() {
		if busybox.img, busybox.err = buildBusybox(); busybox.err == nil {
			_, busybox.err = busybox.img.Digest() // compute lazily built parts once
		}
	})
	if busybox.err != nil {
		t.Fatalf("build busybox image: %v", busybox.err)
	}
	return busybox.img
}

func push(t TB, reg *Registry, repo, tag string, img v1.Image) string {
	t.Helper()
	ref := reg.Host + "/" + repo + ":" + tag
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatalf("reference %s: %v", ref, err)
	}
	var opts []remote.Option
	if reg.User != "" {
		opts = append(opts, remote.WithAuth(&authn.Basic{Username: reg.User, Password: reg.Password}))
	}
	if err := remote.Write(r, img, opts...); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return ref
}

// buildBusybox makes a one-layer image: /bin/busybox with a symlink per
// applet, /etc/passwd, /etc/group and /tmp; cmd ["sh"].
func buildBusybox() (v1.Image, error) {
	bin := "/bin/busybox"
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, fmt.Errorf("busybox-static not installed: %w", err)
	}
	out, err := exec.Command(bin, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	add := func(h *tar.Header, body []byte) error {
		h.ModTime = mtime
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(body)
		return err
	}
	dirs := []string{"bin/", "etc/", "root/", "dev/", "proc/", "sys/"}
	for _, d := range dirs {
		if err := add(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755}, nil); err != nil {
			return nil, err
		}
	}
	if err := add(&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777}, nil); err != nil {
		return nil, err
	}
	if err := add(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(data))}, data); err != nil {
		return nil, err
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		if err := add(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox", Mode: 0o777}, nil); err != nil {
			return nil, err
		}
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":  "root:x:0:\nnogroup:x:65534:\n",
	}
	for _, n := range []string{"etc/passwd", "etc/group"} {
		if err := add(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644, Size: int64(len(files[n]))}, []byte(files[n])); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layerTar := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = goruntime.GOARCH
	cf.Config.Cmd = []string{"sh"}
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	return mutate.ConfigFile(img, cf)
}

// PushBusyboxWith pushes the busybox image with one more layer holding
// files (path in the image, without a leading slash, to a host file, added
// mode 0755) to reg as repo:tag and returns the full reference.
func PushBusyboxWith(t TB, reg *Registry, repo, tag string, files map[string]string) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range slices.Sorted(maps.Keys(files)) {
		data, err := os.ReadFile(files[n])
		if err != nil {
			t.Fatalf("image file %s: %v", n, err)
		}
		h := &tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o755, Size: int64(len(data)), ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("image file %s: %v", n, err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatalf("image file %s: %v", n, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatalf("image layer: %v", err)
	}
	layerTar := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		t.Fatalf("image layer: %v", err)
	}
	img, err := mutate.AppendLayers(busyboxImage(t), layer)
	if err != nil {
		t.Fatalf("image: %v", err)
	}
	return push(t, reg, repo, tag, img)
}

// PushBusyboxLayers pushes the busybox image with n more layers, each
// holding one file of size bytes of random data (so no other image shares
// them: a pull of it is cold), to reg as repo:tag and returns the full
// reference.
func PushBusyboxLayers(t TB, reg *Registry, repo, tag string, n, size int) string {
	t.Helper()
	img := busyboxImage(t)
	for i := range n {
		data := make([]byte, size)
		if _, err := rand.Read(data); err != nil {
			t.Fatalf("layer data: %v", err)
		}
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		h := &tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("layer%d", i), Mode: 0o644, Size: int64(size), ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		if err := tw.Close(); err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		layerTar := buf.Bytes()
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(layerTar)), nil
		})
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		if img, err = mutate.AppendLayers(img, layer); err != nil {
			t.Fatalf("image: %v", err)
		}
	}
	return push(t, reg, repo, tag, img)
}
