package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/pkg/tasklog"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// runtimeEnv is a private containerd and registry with busybox pushed, and a
// Runtime logging through this test binary (see TestMain).
type runtimeEnv struct {
	ctd   *testenv.Containerd
	reg   *testenv.Registry
	image string
	img   runtime.Image // image, once pulled
	cfg   runtime.Config
	rt    *runtime.Runtime
}

func newRuntimeEnv(t *testing.T) *runtimeEnv {
	t.Helper()
	e := &runtimeEnv{ctd: testenv.StartContainerd(t), reg: testenv.StartRegistry(t)}
	e.image = testenv.PushBusybox(t, e.reg, "test/busybox", "v1")
	e.cfg = runtime.Config{
		Address:             e.ctd.Address,
		PlainHTTPRegistries: []string{e.reg.Host},
		LogDir:              t.TempDir(),
		LoggerBinary:        testenv.LoggerBinary(t),
		LogMaxSizeMiB:       1,
		LogMaxFiles:         2,
	}
	e.rt = e.newRuntime(t)
	return e
}

func (e *runtimeEnv) newRuntime(t *testing.T) *runtime.Runtime {
	t.Helper()
	rt, err := runtime.New(context.Background(), e.cfg)
	if err != nil {
		t.Fatalf("runtime.New: %v", err)
	}
	t.Cleanup(func() { rt.Close() })
	return rt
}

// pulled is e.image as Pull resolves it (pulled the first time).
func (e *runtimeEnv) pulled(t *testing.T, ctx context.Context) runtime.Image {
	t.Helper()
	if e.img.Digest == "" {
		img, err := e.rt.Pull(ctx, e.image)
		if err != nil {
			t.Fatalf("pull: %v", err)
		}
		e.img = img
	}
	return e.img
}

// run creates and starts a container, deleting it at cleanup.
func (e *runtimeEnv) run(t *testing.T, ctx context.Context, cs runtime.ContainerSpec) uint32 {
	t.Helper()
	if cs.Image.Digest == "" {
		cs.Image = e.pulled(t, ctx)
	}
	t.Cleanup(func() { _ = e.rt.Delete(context.Background(), cs.ID) })
	if err := e.rt.Create(ctx, cs); err != nil {
		t.Fatalf("create %s: %v", cs.ID, err)
	}
	pid, err := e.rt.Start(ctx, cs.ID)
	if err != nil {
		t.Fatalf("start %s: %v", cs.ID, err)
	}
	return pid
}

func uniqueID(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func waitExit(t *testing.T, ch <-chan runtime.ExitStatus) runtime.ExitStatus {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(time.Minute):
		t.Fatal("no exit within a minute")
	}
	return runtime.ExitStatus{}
}

// eventually polls cond until it holds or a generous bound passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestRuntimeLifecycle(t *testing.T) {
	begin(t)
	e := newRuntimeEnv(t)
	ctx := testCtx(t)

	v, err := e.rt.Version(ctx)
	if err != nil || !strings.HasPrefix(strings.TrimPrefix(v, "v"), "2.") {
		t.Fatalf("Version = %q, %v; want v2.x", v, err)
	}
	img, err := e.rt.Pull(ctx, e.image)
	if err != nil {
		t.Fatalf("pull: %v", err)
	}
	if img.Name != e.image || !strings.HasPrefix(img.Digest, "sha256:") {
		t.Errorf("pulled %+v", img)
	}
	if _, err := e.rt.Pull(ctx, e.image); err != nil { // present: no refetch
		t.Fatalf("second pull: %v", err)
	}
	// A resumed launch pulls what its record holds: the same content by digest.
	pinned, err := img.Pinned()
	if err != nil {
		t.Fatal(err)
	}
	if again, err := e.rt.Pull(ctx, pinned); err != nil || again.Digest != img.Digest || again.MediaType != img.MediaType || again.Size != img.Size {
		t.Errorf("pull of %s = %+v, %v; want %+v", pinned, again, err, img)
	}

	id := uniqueID("life")
	cs := runtime.ContainerSpec{
		ID: id, Image: img, Hostname: "task-host",
		Args:     []string{"sh", "-c", `echo "hello $GREETING from $(hostname)"; echo oops >&2; ` + untilGo + `; exit 3`},
		Env:      []string{"GREETING=world"},
		Labels:   map[string]string{"app": "life"},
		SpecOpts: []oci.SpecOpts{isolation.WithResources(task.Resources{CPUMillicores: 500, MemoryMiB: 64, Pids: 64}, "")},
	}
	pid := e.run(t, ctx, cs)
	if err := e.rt.Create(ctx, cs); err != nil { // idempotent
		t.Fatalf("second create: %v", err)
	}
	if again, err := e.rt.Start(ctx, id); err != nil || again != pid {
		t.Fatalf("second start = %d, %v; want %d", again, err, pid)
	}

	st, err := e.rt.Status(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != runtime.StateRunning || st.Pid != pid || st.TaskID != id || st.Labels["app"] != "life" {
		t.Errorf("status = %+v", st)
	}
	list, err := e.rt.List(ctx)
	if err != nil || len(list) != 1 || list[0].ID != id {
		t.Errorf("List = %+v, %v; want just %s", list, err, id)
	}

	var out, errOut bytes.Buffer
	code, err := e.rt.Exec(ctx, id, []string{"sh", "-c", "cat /proc/self/cgroup >/dev/null; echo exec-out; echo exec-err >&2; exit 7"}, nil, &out, &errOut)
	if err != nil || code != 7 || out.String() != "exec-out\n" || errOut.String() != "exec-err\n" {
		t.Errorf("exec = %d, %v, stdout %q, stderr %q", code, err, out.String(), errOut.String())
	}
	out.Reset()
	code, err = e.rt.Exec(ctx, id, []string{"tr", "a-z", "A-Z"}, strings.NewReader("piped in\n"), &out, nil)
	if err != nil || code != 0 || out.String() != "PIPED IN\n" {
		t.Errorf("exec with stdin = %d, %v, %q", code, err, out.String())
	}

	ch, err := e.rt.Wait(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	letGo(t, e.rt, id)
	s := waitExit(t, ch)
	if s.Err != nil || s.Code != 3 || s.OOMKilled || s.ExitedAt.IsZero() {
		t.Errorf("exit = %+v; want code 3", s)
	}
	logPath := tasklog.Path(e.cfg.LogDir, id)
	eventually(t, "log lines", func() bool {
		b, _ := os.ReadFile(logPath)
		return strings.Contains(string(b), "hello world from task-host\n") && strings.Contains(string(b), "oops\n")
	})
	if st, _ := e.rt.Status(ctx, id); st.State != runtime.StateStopped || st.ExitCode != 3 {
		t.Errorf("status after exit = %+v", st)
	}
	if err := e.rt.Kill(ctx, id, syscall.SIGKILL); err != nil {
		t.Errorf("kill of exited task: %v", err)
	}

	for range 2 { // idempotent
		if err := e.rt.Delete(ctx, id); err != nil {
			t.Fatalf("delete: %v", err)
		}
	}
	if _, err := e.rt.Status(ctx, id); !errors.Is(err, runtime.ErrContainerNotFound) {
		t.Errorf("status after delete: %v; want ErrContainerNotFound", err)
	}
	assertNothingLeft(t, e, id)
}

// assertNothingLeft checks containerd has no container or snapshot for id
// and nothing is mounted for it.
func assertNothingLeft(t *testing.T, e *runtimeEnv, id string) {
	t.Helper()
	cl := e.ctd.Client(t)
	ctx := namespaces.WithNamespace(testCtx(t), runtime.DefaultNamespace)
	cs, err := cl.Containers(ctx)
	if err != nil || len(cs) != 0 {
		t.Errorf("containers left: %d (%v)", len(cs), err)
	}
	if _, err := cl.SnapshotService(runtime.DefaultSnapshotter).Stat(ctx, id); err == nil {
		t.Errorf("snapshot %s left", id)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), id) {
		t.Errorf("mounts of %s left", id)
	}
}

// TestRuntimeCreateOutlivesCancel: a kill while a launch creates its
// container cancels the launch's context. Cut short, containerd still
// finished the snapshot after the agent's teardown had removed it, which
// left it behind (seen in TestAgentEC2Network). The create now completes,
// so the teardown that follows removes container and snapshot alike.
func TestRuntimeCreateOutlivesCancel(t *testing.T) {
	begin(t)
	e := newRuntimeEnv(t)
	ctx := testCtx(t)
	id := uniqueID("cancel")
	cs := runtime.ContainerSpec{ID: id, Image: e.pulled(t, ctx), Args: []string{"true"}}
	t.Cleanup(func() { _ = e.rt.Delete(context.Background(), id) })
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := e.rt.Create(cctx, cs); err != nil {
		t.Fatalf("create with the launch's context canceled: %v; want it to complete", err)
	}
	if _, err := e.rt.Status(ctx, id); err != nil {
		t.Fatalf("status after create: %v", err)
	}
	if err := e.rt.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, e, id)
}

func TestRuntimeKillGrace(t *testing.T) {
	begin(t)
	e := newRuntimeEnv(t)
	ctx := testCtx(t)
	id := uniqueID("grace")
	e.run(t, ctx, runtime.ContainerSpec{ID: id, Args: []string{"sh", "-c", `trap "echo got-term" TERM; echo ready; while true; do sleep 0.1; done`}})
	logPath := tasklog.Path(e.cfg.LogDir, id)
	eventually(t, "trap installed", func() bool {
		b, _ := os.ReadFile(logPath)
		return strings.Contains(string(b), "ready")
	})
	ch, err := e.rt.Wait(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.rt.Kill(ctx, id, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	eventually(t, "SIGTERM delivered", func() bool {
		b, _ := os.ReadFile(logPath)
		return strings.Contains(string(b), "got-term")
	})
	select {
	case s := <-ch:
		t.Fatalf("task exited on ignored SIGTERM: %+v", s)
	default:
	}
	if err := e.rt.Kill(ctx, id, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if s := waitExit(t, ch); s.Err != nil || s.Code != 137 || s.OOMKilled {
		t.Errorf("exit = %+v; want 137, not OOM", s)
	}
}

func TestRuntimeOOMKilled(t *testing.T) {
	begin(t)
	e := newRuntimeEnv(t)
	ctx := testCtx(t)
	id := uniqueID("oom")
	// A shell variable doubling until it blows 16 MiB.
	e.run(t, ctx, runtime.ContainerSpec{ID: id, SpecOpts: []oci.SpecOpts{isolation.WithResources(task.Resources{MemoryMiB: 16}, "")},
		Args: []string{"sh", "-c", `x=0123456789abcdef; while true; do x="$x$x"; done`}})
	ch, err := e.rt.Wait(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if s := waitExit(t, ch); s.Err != nil || !s.OOMKilled || s.Code != 137 {
		t.Errorf("exit = %+v; want OOM-killed, 137", s)
	}
}

func TestRuntimeImageErrors(t *testing.T) {
	begin(t)
	e := newRuntimeEnv(t)
	ctx := testCtx(t)
	_, err := e.rt.Pull(ctx, e.reg.Host+"/test/missing:v1")
	if !errors.Is(err, runtime.ErrImageNotFound) {
		t.Errorf("missing repo: %v; want ErrImageNotFound", err)
	}
	_, err = e.rt.Pull(ctx, e.reg.Host+"/test/busybox:no-such-tag")
	if !errors.Is(err, runtime.ErrImageNotFound) {
		t.Errorf("missing tag: %v; want ErrImageNotFound", err)
	}
	// An image no longer in the store (garbage-collected since its pull).
	gone := runtime.Image{Name: e.reg.Host + "/test/missing:v1", Digest: "sha256:" + strings.Repeat("0", 64),
		MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 400}
	if err := e.rt.Create(ctx, runtime.ContainerSpec{ID: uniqueID("nf"), Image: gone}); !errors.Is(err, runtime.ErrImageNotFound) {
		t.Errorf("create with missing image: %v; want ErrImageNotFound", err)
	}

	strict := e.cfg
	strict.PlainHTTPRegistries = nil
	rt, err := runtime.New(ctx, strict)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	// A fresh tag so the pull cannot be satisfied from the content store.
	ref := testenv.PushBusybox(t, e.reg, "test/strict", "v1")
	if _, err := rt.Pull(ctx, ref); !errors.Is(err, runtime.ErrRegistryNotAllowed) {
		t.Errorf("plain HTTP to a registry not allowed: %v; want ErrRegistryNotAllowed", err)
	}
}

// TestRuntimeReadopt simulates an agent restart (a new Runtime) and a
// containerd restart while a task runs: the task keeps its pid, a Wait
// pending across the containerd restart reports an error (not an exit), and
// a new Wait gets the true exit code.
func TestRuntimeReadopt(t *testing.T) {
	begin(t)
	e := newRuntimeEnv(t)
	ctx := testCtx(t)
	id := uniqueID("readopt")
	pid := e.run(t, ctx, runtime.ContainerSpec{ID: id, Args: []string{"sh", "-c", "echo before; " + untilGo + "; echo after; exit 42"}})

	first, err := e.rt.Wait(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	e.rt.Close() // the agent goes away
	if s := waitExit(t, first); s.Err == nil {
		t.Errorf("wait of a closed runtime = %+v; want an error", s)
	}

	rt := e.newRuntime(t) // the agent is back
	e.rt = rt
	st, err := rt.Status(ctx, id)
	if err != nil || st.State != runtime.StateRunning || st.Pid != pid {
		t.Fatalf("re-adopted status = %+v, %v; want running pid %d", st, err, pid)
	}
	pending, err := rt.Wait(ctx, id)
	if err != nil {
		t.Fatal(err)
	}

	e.ctd.Restart(t)
	eventually(t, "containerd answering again", func() bool {
		st, err = rt.Status(ctx, id)
		return err == nil
	})
	if st.State != runtime.StateRunning || st.Pid != pid {
		t.Fatalf("status after containerd restart = %+v; want running pid %d", st, pid)
	}
	letGo(t, rt, id)
	// A Wait in flight when containerd went away reports an error, never a
	// made-up exit; the caller waits again. (If the call had not reached
	// containerd yet, it simply lands on the new instance.)
	s := waitExit(t, pending)
	if s.Err != nil {
		again, err := rt.Wait(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		s = waitExit(t, again)
	}
	if s.Err != nil || s.Code != 42 {
		t.Errorf("exit = %+v; want 42", s)
	}
	eventually(t, "log from before and after the restarts", func() bool {
		b, _ := os.ReadFile(tasklog.Path(e.cfg.LogDir, id))
		return string(b) == "before\nafter\n"
	})
}

func TestRuntimeImageView(t *testing.T) {
	begin(t)
	e := newRuntimeEnv(t)
	ctx := testCtx(t)
	task := uniqueID("view")
	dirs, err := e.rt.ImageView(ctx, task, e.pulled(t, ctx))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.rt.RemoveView(context.Background(), task) })
	if len(dirs) != 1 {
		t.Fatalf("lower dirs = %v; want one layer", dirs)
	}
	if _, err := os.Stat(dirs[0] + "/bin/busybox"); err != nil {
		t.Errorf("layer dir lacks busybox: %v", err)
	}
	again, err := e.rt.ImageView(ctx, task, e.img)
	if err != nil || len(again) != 1 || again[0] != dirs[0] {
		t.Errorf("second view = %v, %v", again, err)
	}
	for range 2 {
		if err := e.rt.RemoveView(ctx, task); err != nil {
			t.Fatal(err)
		}
	}
}

// untilGo is a shell loop that blocks until letGo runs.
const untilGo = "while [ ! -e /tmp/go ]; do sleep 0.1; done"

func letGo(t *testing.T, rt *runtime.Runtime, id string) {
	t.Helper()
	if code, err := rt.Exec(testCtx(t), id, []string{"touch", "/tmp/go"}, nil, nil, nil); err != nil || code != 0 {
		t.Fatalf("exec touch = %d, %v", code, err)
	}
}
