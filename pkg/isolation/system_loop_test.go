package isolation

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestAttachLoopMatchesLosetup attaches one image with AttachLoop and one
// with the losetup command it replaces, and wants the same loop device
// from the kernel: direct I/O on, 4 KiB logical sectors, the image as its
// backing file (so `losetup -j`, which teardown uses, finds it).
func TestAttachLoopMatchesLosetup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loop devices need root")
	}
	ctx := context.Background()
	dir := t.TempDir()
	image := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, 64<<20); err != nil {
			t.Fatal(err)
		}
		return p
	}
	detach := func(dev string) {
		t.Cleanup(func() {
			if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
				t.Errorf("detach %s: %v %s", dev, err, out)
			}
		})
	}
	sysfs := func(dev, img string) map[string]string {
		base := filepath.Join("/sys/block", filepath.Base(dev))
		got := map[string]string{}
		for _, f := range []string{"loop/dio", "queue/logical_block_size", "loop/backing_file"} {
			b, err := os.ReadFile(filepath.Join(base, f))
			if err != nil {
				t.Fatalf("%s: %v", dev, err)
			}
			got[f] = strings.ReplaceAll(strings.TrimSpace(string(b)), img, "IMG")
		}
		return got
	}

	ours := image("ours.img")
	dev, err := hostSystem{}.AttachLoop(ctx, ours)
	if err != nil {
		t.Fatalf("AttachLoop: %v", err)
	}
	detach(dev)
	theirs := image("theirs.img")
	out, err := exec.Command("losetup", "--find", "--show", "--direct-io=on", "--sector-size", "4096", theirs).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v %s", err, out)
	}
	ref := strings.TrimSpace(string(out))
	detach(ref)
	want := sysfs(ref, theirs)
	if want["loop/dio"] != "1" || want["queue/logical_block_size"] != "4096" {
		t.Fatalf("losetup's device: %v", want)
	}
	if diff := cmp.Diff(want, sysfs(dev, ours)); diff != "" {
		t.Errorf("loop device (-losetup +AttachLoop):\n%s", diff)
	}
	if j, err := exec.Command("losetup", "-j", ours).Output(); err != nil || !strings.HasPrefix(string(j), dev+":") {
		t.Errorf("losetup -j %s = %q, %v; want %s", ours, j, err, dev)
	}
	// A second attach of the same image takes another device.
	dev2, err := hostSystem{}.AttachLoop(ctx, ours)
	if err != nil {
		t.Fatalf("second AttachLoop: %v", err)
	}
	detach(dev2)
	if dev2 == dev {
		t.Errorf("second attach got the same device %s", dev)
	}
}
