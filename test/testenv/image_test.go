package testenv

import (
	"archive/tar"
	"errors"
	"io"
	"testing"
)

func TestBuildBusybox(t *testing.T) {
	img, err := buildBusybox()
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if len(cf.Config.Cmd) != 1 || cf.Config.Cmd[0] != "sh" || cf.OS != "linux" {
		t.Errorf("config = %+v", cf.Config)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers = %d, %v; want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	seen := map[string]string{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		seen[h.Name] = h.Linkname
	}
	for _, want := range []string{"bin/busybox", "etc/passwd", "etc/group", "tmp/"} {
		if _, ok := seen[want]; !ok {
			t.Errorf("layer lacks %s", want)
		}
	}
	if seen["bin/sh"] != "busybox" {
		t.Errorf("bin/sh -> %q; want busybox", seen["bin/sh"])
	}
}
