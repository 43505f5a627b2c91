package isolation

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/mount"
)

// fakeSystem records commands and keeps a pretend mount table: "mount ...
// TARGET" mounts the last argument, "umount TARGET" unmounts it.
type fakeSystem struct {
	mu      sync.Mutex
	calls   []string
	mounted map[string]bool
	// outputs answers a command line that starts with the key.
	outputs map[string]string
	// fail makes a command line that starts with the key fail.
	fail map[string]error
}

func newFakeSystem() *fakeSystem {
	return &fakeSystem{mounted: map[string]bool{}, fail: map[string]error{},
		outputs: map[string]string{"losetup --find": "/dev/loop3\n"}}
}

func (f *fakeSystem) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	line := strings.Join(append([]string{name}, args...), " ")
	f.calls = append(f.calls, line)
	for prefix, err := range f.fail {
		if strings.HasPrefix(line, prefix) {
			return nil, fmt.Errorf("%s: %w", line, err)
		}
	}
	switch name {
	case "mount":
		f.mounted[args[len(args)-1]] = true
	case "umount":
		delete(f.mounted, args[len(args)-1])
	}
	for prefix, out := range f.outputs {
		if strings.HasPrefix(line, prefix) {
			return []byte(out), nil
		}
	}
	return nil, nil
}

// Mount is recorded as the mount(8) command line it stands for.
func (f *fakeSystem) Mount(m mount.Mount, target string) error {
	_, err := f.Run(context.Background(), "mount", "-t", m.Type, "-o", strings.Join(m.Options, ","), m.Source, target)
	return err
}

func (f *fakeSystem) Mounted(path string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mounted[path], nil
}

// take returns the calls so far with dir replaced by "D", and forgets them.
func (f *fakeSystem) take(dir string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, len(f.calls))
	for i, c := range f.calls {
		out[i] = strings.ReplaceAll(c, dir, "D")
	}
	f.calls = nil
	return out
}

// AttachLoop records the losetup command it stands for.
func (f *fakeSystem) AttachLoop(ctx context.Context, img string) (string, error) {
	out, err := f.Run(ctx, "losetup", "--find", "--show", "--direct-io=on", "--sector-size", "4096", img)
	return strings.TrimSpace(string(out)), err
}

// MoveMount is recorded as the mount(8) command line it stands for.
func (f *fakeSystem) MoveMount(from, to string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	line := "mount --move " + from + " " + to
	f.calls = append(f.calls, line)
	for prefix, err := range f.fail {
		if strings.HasPrefix(line, prefix) {
			return fmt.Errorf("%s: %w", line, err)
		}
	}
	if !f.mounted[from] {
		return fmt.Errorf("%s: not mounted", from)
	}
	delete(f.mounted, from)
	f.mounted[to] = true
	return nil
}
