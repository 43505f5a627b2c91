package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// Containerd is a private containerd 2.x with its own root, state and
// sockets under a short temporary directory.
type Containerd struct {
	Address string // gRPC unix socket
	Root    string
	State   string
	Proc    *Process

	dir, config string
	pathPrefix  string
	cleanups    []func()
	starts      int // containerd processes started: each logs to its own file
}

// ContainerdOptions change how StartContainerdWith starts containerd.
type ContainerdOptions struct {
	// PathPrefix is put first on containerd's PATH, and so its shims': a
	// directory with a "runc" there stands in for the real one (a test's
	// wrapper that acts just before runc does).
	PathPrefix string
	// LogLevel is containerd's (default warn). At info it also logs
	// every shim it restores, drops or cleans up after a restart.
	LogLevel string
}

// containerdConfig disables everything the tests do not use (CRI, NRI,
// tracing, snapshotters other than overlayfs and native) and imports no
// system configuration.
const containerdConfig = `version = 3
root = %q
state = %q
imports = []
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.cri.v1.images",
  "io.containerd.cri.v1.runtime",
  "io.containerd.podsandbox.controller.v1.podsandbox",
  "io.containerd.nri.v1.nri",
  "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.monitor.container.v1.restart",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.differ.v1.erofs",
  "io.containerd.mount-handler.v1.erofs",
]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  level = %q

[plugins."io.containerd.internal.v1.opt"]
  path = %q
`

// StartContainerd starts a private containerd and waits until it answers.
// At cleanup it deletes every task, container, image, snapshot and lease it
// holds, stops containerd, kills leftover shims and container processes it
// started, unmounts what is left under its directories and removes them.
func StartContainerd(t TB) *Containerd {
	t.Helper()
	return StartContainerdWith(t, ContainerdOptions{})
}

// StartContainerdWith is StartContainerd with options.
func StartContainerdWith(t TB, o ContainerdOptions) *Containerd {
	t.Helper()
	LookPath(t, "containerd-shim-runc-v2")
	LookPath(t, "runc")
	// Unix socket paths must stay under 108 bytes: keep the directory short.
	dir, err := os.MkdirTemp("/tmp", "ctd")
	if err != nil {
		t.Fatalf("containerd dir: %v", err)
	}
	c := &Containerd{
		Address: filepath.Join(dir, "c.sock"),
		Root:    filepath.Join(dir, "root"),
		State:   filepath.Join(dir, "state"),
		dir:     dir,
		config:  filepath.Join(dir, "config.toml"),

		pathPrefix: o.PathPrefix,
	}
	t.Cleanup(c.cleanup)
	level := o.LogLevel
	if level == "" {
		level = "warn"
	}
	cfg := fmt.Sprintf(containerdConfig, c.Root, c.State, c.Address, c.Address+".ttrpc", level, filepath.Join(dir, "opt"))
	if err := os.WriteFile(c.config, []byte(cfg), 0o600); err != nil {
		t.Fatalf("containerd config: %v", err)
	}
	c.start(t)
	return c
}

// collector hands Process cleanups to the Containerd, which runs them in its
// own order (delete resources while containerd still runs, then stop it).
type collector struct {
	TB
	c *Containerd
}

func (k collector) Cleanup(f func()) { k.c.cleanups = append(k.c.cleanups, f) }

func (c *Containerd) start(t TB) {
	t.Helper()
	bin := LookPath(t, "containerd")
	cmd := exec.Command(bin, "--config", c.config)
	cmd.Dir = c.dir
	// containerd finds containerd-shim-runc-v2 on PATH; runc is in /usr/sbin.
	path := CacheBin() + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	if c.pathPrefix != "" {
		path = c.pathPrefix + ":" + path
	}
	cmd.Env = append(os.Environ(), "PATH="+path)
	// Each start logs to a file of its own (containerd, containerd-2, ...):
	// why a restarted containerd did not restore a task is in the log of
	// the start that restored.
	c.starts++
	name := "containerd"
	if c.starts > 1 {
		name = fmt.Sprintf("containerd-%d", c.starts)
	}
	c.Proc = StartProcess(collector{t, c}, c.dir, name, cmd)
	c.waitReady(t, 30*time.Second)
}

func (c *Containerd) waitReady(t TB, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(Scaled(timeout))
	for time.Now().Before(deadline) {
		if c.Proc.Cmd.ProcessState != nil {
			break
		}
		if _, err := os.Stat(c.Address); err == nil {
			if err := c.ping(); err == nil {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("containerd did not come up within %s:\n%s", timeout, tail(c.Proc.Log(), 40))
}

func (c *Containerd) ping() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	cl, err := client.New(c.Address, client.WithTimeout(time.Second))
	if err != nil {
		return err
	}
	defer cl.Close()
	_, err = cl.Version(ctx)
	return err
}

// Client returns a client of this containerd, closed at cleanup.
func (c *Containerd) Client(t TB) *client.Client {
	t.Helper()
	cl, err := client.New(c.Address)
	if err != nil {
		t.Fatalf("containerd client: %v", err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// Restart stops containerd (leaving shims and containers running) and starts
// it again on the same directories and socket.
func (c *Containerd) Restart(t TB) {
	t.Helper()
	c.Proc.Stop()
	c.start(t)
}

// Kill9Restart kills containerd with SIGKILL (its shims and their tasks
// live on, as when the daemon crashes) and starts it again on the same
// directories and socket.
func (c *Containerd) Kill9Restart(t TB) {
	t.Helper()
	_ = c.Proc.Cmd.Process.Kill()
	_ = c.Proc.Cmd.Wait()
	c.start(t)
}

func (c *Containerd) cleanup() {
	if c.Proc != nil && c.Proc.Cmd.ProcessState == nil {
		c.deleteAll()
	}
	for i := len(c.cleanups) - 1; i >= 0; i-- {
		c.cleanups[i]()
	}
	c.killShims()
	RemoveDir(c.dir)
}

// deleteAll removes every task, container, image, snapshot and lease in
// every namespace.
func (c *Containerd) deleteAll() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl, err := client.New(c.Address, client.WithTimeout(5*time.Second))
	if err != nil {
		return
	}
	defer cl.Close()
	nss, err := cl.NamespaceService().List(ctx)
	if err != nil {
		return
	}
	for _, ns := range nss {
		nctx := namespaces.WithNamespace(ctx, ns)
		cs, _ := cl.Containers(nctx)
		for _, ctr := range cs {
			if t, err := ctr.Task(nctx, nil); err == nil {
				_, _ = t.Delete(nctx, client.WithProcessKill)
			}
			_ = ctr.Delete(nctx, client.WithSnapshotCleanup)
		}
		if imgs, err := cl.ImageService().List(nctx); err == nil {
			for _, img := range imgs {
				_ = cl.ImageService().Delete(nctx, img.Name)
			}
		}
		if ls, err := cl.LeasesService().List(nctx); err == nil {
			for _, l := range ls {
				_ = cl.LeasesService().Delete(nctx, l)
			}
		}
		for _, sn := range []string{"overlayfs", "native"} {
			s := cl.SnapshotService(sn)
			// Children first: walk until nothing more can be removed.
			for range 20 {
				var keys []string
				_ = s.Walk(nctx, func(_ context.Context, info snapshots.Info) error {
					keys = append(keys, info.Name)
					return nil
				})
				if len(keys) == 0 {
					break
				}
				for _, k := range keys {
					_ = s.Remove(nctx, k) // a parent fails until its children are gone
				}
			}
		}
		_ = cl.NamespaceService().Delete(nctx, ns)
	}
}

// killShims kills shims (own process groups) and container processes whose
// pid files live in this containerd's state directory.
func (c *Containerd) killShims() {
	var pids []int
	_ = filepath.WalkDir(c.State, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(d.Name(), ".pid") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
			pids = append(pids, pid)
		}
		return nil
	})
	// Shims whose bundle is already gone (a task create cut short by an
	// agent kill) have no pid file left: find them by the address they
	// serve, and take their children (a container's init, the log driver)
	// with them, or those would outlive the test.
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && strings.Contains(string(b), "containerd-shim") && strings.Contains(string(b), c.Address) {
			pids = append(append(pids, childrenOf(pid)...), pid)
		}
	}
	for _, pid := range pids {
		if !startedUnder(pid, c.dir) && !isChildOfShim(pid) {
			continue
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// childrenOf lists pid's direct children.
func childrenOf(pid int) []int {
	var out []int
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// isChildOfShim reports whether pid's parent is a containerd shim.
func isChildOfShim(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b)[i+1:])
	if len(f) < 2 {
		return false
	}
	comm, _ := os.ReadFile("/proc/" + f[1] + "/comm")
	return strings.HasPrefix(strings.TrimSpace(string(comm)), "containerd-shim")
}

// startedUnder guards against pid reuse: the process must mention dir in its
// command line or working directory (shims run in the bundle directory).
func startedUnder(pid int, dir string) bool {
	if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err == nil && strings.HasPrefix(cwd, dir) {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && strings.Contains(string(b), dir)
}
