package runtime

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/titus-agent/titus-agent/pkg/hostcmd"
)

// What a launch cut short by an agent kill leaves behind that containerd no
// longer tracks:
//
//   - A shim. containerd runs `containerd-shim-runc-v2 ... start` with the
//     client's request context; when the agent dies, the request is
//     cancelled and containerd SIGKILLs the `start` process, but the shim
//     daemon it had already forked lives on. containerd never registered it
//     and deletes its bundle, so nothing will ever stop it.
//   - A temporary mount. The containerd client mounts the new container's
//     snapshot on a containerd-mount* directory to read /etc/group
//     (oci.WithImageConfig → WithAdditionalGIDs) during every create; an
//     agent killed meanwhile leaves that overlay mounted.

// Reaped lists what ReapOrphans removed.
type Reaped struct {
	Shims  []string // ids of the shims killed
	Mounts []string // temporary mount points unmounted
	Execs  []string // exec sessions of an earlier agent ended, "<task>/<exec id>"
}

// shimSocketDir is where containerd-shim-runc-v2 puts its sockets
// (containerd's default state dir, whatever containerd's own state dir is).
const shimSocketDir = "/run/containerd/s"

// UseTempMountDir makes the containerd client mount snapshots for reading
// (image user and groups) under dir instead of the shared temporary
// directory, and unmounts what an earlier agent process left there. Call it
// once at start, before any container is created: dir belongs to this
// agent alone, so whatever is mounted there now is stale.
func UseTempMountDir(dir string) ([]string, error) {
	if err := mount.SetTempMountLocation(dir); err != nil {
		return nil, fmt.Errorf("temporary mount dir %s: %w", dir, err)
	}
	stale, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return nil, fmt.Errorf("list mounts under %s: %w", dir, err)
	}
	var out []string
	for _, m := range stale {
		if m.Mountpoint != dir {
			out = append(out, m.Mountpoint)
		}
	}
	warnings, err := mount.CleanupTempMounts(unix.MNT_DETACH)
	if err != nil {
		return nil, fmt.Errorf("unmount stale mounts under %s: %w", dir, err)
	}
	return out, errors.Join(warnings...)
}

// ReapOrphans kills the shims of this containerd and namespace that
// containerd does not know and that are older than this process (so not
// started for one of its own launches), with their children, their socket
// and bundle, and unmounts stale containerd-mount* overlays in the shared
// temporary directory made of this containerd's snapshots of the namespace,
// and ends the exec sessions of an earlier agent process
// (SweepExecSessions). Call it once at start, after the containers were
// reconciled.
func (r *Runtime) ReapOrphans(ctx context.Context) (Reaped, error) {
	ctx = r.ctx(ctx)
	var rep Reaped
	shims, err := r.reapShims(ctx)
	rep.Shims = shims
	mounts, merr := r.reapTempMounts(ctx)
	rep.Mounts = mounts
	execs, eerr := r.SweepExecSessions(ctx)
	rep.Execs = execs
	return rep, errors.Join(err, merr, eerr)
}

func (r *Runtime) reapShims(ctx context.Context) ([]string, error) {
	self, err := procStart("/proc", os.Getpid())
	if err != nil {
		return nil, err
	}
	var older []shimProc
	for _, s := range findShims("/proc", r.cfg.Address, r.cfg.Namespace) {
		if s.Start < self {
			older = append(older, s)
		}
	}
	if len(older) == 0 {
		return nil, nil
	}
	// List after the scan: a shim registered meanwhile is then known.
	resp, err := r.client.TaskService().List(ctx, &tasksapi.ListTasksRequest{})
	if err != nil {
		return nil, fmt.Errorf("list tasks: %w", err)
	}
	known := map[string]bool{}
	for _, t := range resp.Tasks {
		known[t.ID] = true
	}
	var reaped []string
	var errs []error
	for _, s := range older {
		if known[s.ID] {
			continue
		}
		killed, err := killShim("/proc", s)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		reaped = append(reaped, s.ID)
		errs = append(errs, removeShimState(shimSocketDir, s), removeRuncState(ctx, runcRoot, s, killed), r.releaseTaskSlice(ctx, s.ID))
	}
	return reaped, errors.Join(errs...)
}

// shimProc is a shim process as procfs shows it.
type shimProc struct {
	Pid                 int
	ID, Namespace, Addr string
	Start               uint64 // clock ticks after boot
	Bundle              string // working directory; "" once deleted
	cmdline             []byte
}

// parseShimCmdline reads `containerd-shim-* -namespace NS -id ID -address A`
// (flags in any order, single or double dash, `-flag=value` too).
func parseShimCmdline(b []byte) (shimProc, bool) {
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	if len(args) == 0 || !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
		return shimProc{}, false
	}
	var s shimProc
	for i := 1; i < len(args); i++ {
		name, val, hasVal := strings.Cut(strings.TrimLeft(args[i], "-"), "=")
		if !hasVal && i+1 < len(args) {
			val = args[i+1]
		}
		switch name {
		case "namespace":
			s.Namespace = val
		case "id":
			s.ID = val
		case "address":
			s.Addr = val
		default:
			continue
		}
		if !hasVal {
			i++
		}
	}
	if s.ID == "" || s.Namespace == "" || s.Addr == "" || slices.Contains(args, "start") || slices.Contains(args, "delete") {
		return shimProc{}, false // not a shim daemon: `start` or `delete` runs exit by themselves
	}
	s.cmdline = b
	return s, true
}

// sameAddress compares containerd socket addresses, with or without unix://.
func sameAddress(a, b string) bool {
	clean := func(s string) string { return filepath.Clean(strings.TrimPrefix(s, "unix://")) }
	return clean(a) == clean(b)
}

// findShims lists the shim daemons serving address in namespace ns.
func findShims(proc, address, ns string) []shimProc {
	ents, _ := os.ReadDir(proc)
	var out []shimProc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(proc, e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		s, ok := parseShimCmdline(b)
		if !ok || s.Namespace != ns || !sameAddress(s.Addr, address) {
			continue
		}
		if s.Start, err = procStart(proc, pid); err != nil {
			continue // gone
		}
		s.Pid = pid
		if cwd, err := os.Readlink(filepath.Join(proc, e.Name(), "cwd")); err == nil && !strings.HasSuffix(cwd, " (deleted)") {
			s.Bundle = cwd
		}
		out = append(out, s)
	}
	return out
}

// procStat returns the fields of /proc/pid/stat after the command name.
func procStat(proc string, pid int) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "stat"))
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')') // the name may hold spaces and parentheses
	if i < 0 {
		return nil, fmt.Errorf("pid %d: malformed stat", pid)
	}
	return strings.Fields(string(b[i+1:])), nil
}

// procStart is the process's start time (field 22 of stat).
func procStart(proc string, pid int) (uint64, error) {
	f, err := procStat(proc, pid)
	if err != nil {
		return 0, err
	}
	if len(f) < 20 {
		return 0, fmt.Errorf("pid %d: short stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// processRuns says whether pid is a live process (not a zombie).
func processRuns(proc string, pid int) bool {
	f, err := procStat(proc, pid)
	return err == nil && len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

// descendants lists pid's descendants, deepest last.
func descendants(proc string, pid int) []int {
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		tasks, _ := os.ReadDir(filepath.Join(proc, strconv.Itoa(p), "task"))
		for _, t := range tasks {
			b, _ := os.ReadFile(filepath.Join(proc, strconv.Itoa(p), "task", t.Name(), "children"))
			for _, f := range strings.Fields(string(b)) {
				if c, err := strconv.Atoi(f); err == nil && !slices.Contains(out, c) {
					out = append(out, c)
					queue = append(queue, c)
				}
			}
		}
	}
	return out
}

// killShim stops the shim, kills its descendants (they cannot be reaped,
// so their pids cannot be reused, while it is stopped), then the shim, and
// returns the descendants killed. A pidfd pins the shim so a reused pid is
// never signalled.
func killShim(proc string, s shimProc) ([]int, error) {
	fd, err := unix.PidfdOpen(s.Pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("pidfd of shim %d: %w", s.Pid, err)
	}
	defer unix.Close(fd)
	b, _ := os.ReadFile(filepath.Join(proc, strconv.Itoa(s.Pid), "cmdline"))
	if st, err := procStart(proc, s.Pid); err != nil || st != s.Start || !bytes.Equal(b, s.cmdline) {
		return nil, nil // exited, and the pid is someone else's now
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGSTOP, nil, 0); err != nil {
		return nil, fmt.Errorf("stop shim %d: %w", s.Pid, err)
	}
	kids := descendants(proc, s.Pid)
	for i := len(kids) - 1; i >= 0; i-- {
		_ = unix.Kill(kids[i], unix.SIGKILL)
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return kids, fmt.Errorf("kill shim %d: %w", s.Pid, err)
	}
	return kids, nil
}

// runcRoot is where the runc v2 shim keeps runc's state by default
// (root/<namespace>/<id>), shared by every containerd on the host.
const runcRoot = "/run/containerd/runc"

// removeRuncState deletes the runc container a killed shim had created
// (state, cgroup), only when its init process was one of the shim's
// children killed or is gone: a running runc container of that id
// belonging to another containerd on the host is left alone.
func removeRuncState(ctx context.Context, root string, s shimProc, killed []int) error {
	root = filepath.Join(root, s.Namespace)
	dir := filepath.Join(root, s.ID)
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if errors.Is(err, os.ErrNotExist) {
		// A runc create killed (with the shim, or by the cancelled request)
		// before it saved the state leaves only its exec fifo, and the
		// task's cgroups, empty.
		var errs []error
		if _, ferr := os.Lstat(filepath.Join(dir, "exec.fifo")); ferr == nil {
			errs = append(errs, os.RemoveAll(dir))
		}
		return errors.Join(append(errs, removeEmptyCgroups(cgroupRoot, s.Namespace, s.ID))...)
	} else if err != nil {
		return fmt.Errorf("runc state of %s: %w", s.ID, err)
	}
	var st struct {
		InitProcessPid int `json:"init_process_pid"`
	}
	if err := json.Unmarshal(b, &st); err != nil || st.InitProcessPid <= 0 {
		return nil
	}
	if !slices.Contains(killed, st.InitProcessPid) && processRuns("/proc", st.InitProcessPid) {
		return nil
	}
	// Its own process group (hostcmd): a SIGTERM to the agent's group
	// must not cut the reaping short.
	if _, err := hostcmd.Run(ctx, "runc", "--root", root, "delete", "--force", s.ID); err != nil {
		return fmt.Errorf("reap %s: %w", s.ID, err)
	}
	return nil
}

// cgroupRoot holds the cgroup hierarchies (v1: one per controller).
var cgroupRoot = "/sys/fs/cgroup" // a variable for tests

// removeEmptyCgroups removes the task's cgroup (containerd's default path
// /<namespace>/<id>, or the systemd driver's scope, in its task slice or,
// as earlier agents made it, in TaskSlice) from every hierarchy where it
// is empty. rmdir refuses a cgroup with processes in it, so another
// containerd's live container of the same id is never touched. The task
// slice itself is systemd's to remove (releaseTaskSlice).
func removeEmptyCgroups(root, ns, id string) error {
	var dirs []string
	for _, p := range []string{cgroupsPath(CgroupDriverCgroupfs, ns, id), cgroupsPath(CgroupDriverSystemd, ns, id), legacyScopePath(ns, id)} {
		rel, _ := cgroupRelDir(p)
		v1, err := filepath.Glob(filepath.Join(root, "*", rel))
		if err != nil {
			return err
		}
		dirs = append(append(dirs, v1...), filepath.Join(root, rel)) // v1 hierarchies, v2
	}
	var errs []error
	for _, d := range dirs {
		// An exec session's cgroup an agent did not live to remove.
		subs, _ := filepath.Glob(filepath.Join(d, execCgroupPrefix+"*"))
		for _, s := range subs {
			if err := syscall.Rmdir(s); err != nil && !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.EBUSY) && !errors.Is(err, syscall.ENOTEMPTY) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", s, err))
			}
		}
		if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.EBUSY) && !errors.Is(err, syscall.ENOTEMPTY) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// shimSocket is the socket path a runc v2 shim listens on
// (github.com/containerd/containerd/v2/pkg/shim.SocketAddress).
func shimSocket(dir, address, ns, id string, debug bool) string {
	p := filepath.Join(address, ns, id)
	if debug {
		p = filepath.Join(p, "debug")
	}
	return filepath.Join(dir, fmt.Sprintf("%x", sha256.Sum256([]byte(p))))
}

// removeShimState removes a killed shim's sockets and, when containerd did
// not already, its bundle (only a bundle of this namespace and id, and only
// once nothing is mounted in it).
func removeShimState(socketDir string, s shimProc) error {
	var errs []error
	for _, debug := range []bool{false, true} {
		p := shimSocket(socketDir, s.Addr, s.Namespace, s.ID, debug)
		if fi, err := os.Lstat(p); err == nil && fi.Mode()&os.ModeSocket != 0 {
			if err := os.Remove(p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	b := s.Bundle
	if b == "" || filepath.Base(b) != s.ID || filepath.Base(filepath.Dir(b)) != s.Namespace ||
		filepath.Base(filepath.Dir(filepath.Dir(b))) != "io.containerd.runtime.v2.task" {
		return errors.Join(errs...)
	}
	if err := mount.UnmountRecursive(filepath.Join(b, "rootfs"), unix.MNT_DETACH); err != nil {
		return errors.Join(append(errs, fmt.Errorf("unmount rootfs of bundle %s: %w", b, err))...)
	}
	if ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(b)); err != nil || len(ms) > 0 {
		return errors.Join(append(errs, fmt.Errorf("bundle %s still has mounts (%d): %v", b, len(ms), err))...)
	}
	if err := os.RemoveAll(b); err != nil {
		errs = append(errs, fmt.Errorf("remove bundle %s: %w", b, err))
	}
	return errors.Join(errs...)
}

// reapTempMounts unmounts containerd-mount* overlays in the shared
// temporary directory (where agents before UseTempMountDir mounted them)
// whose layers all lie in this containerd's snapshotter and which hold a
// snapshot of this namespace or one already removed.
func (r *Runtime) reapTempMounts(ctx context.Context) ([]string, error) {
	root, err := r.snapshotterRoot(ctx)
	if err != nil {
		return nil, err
	}
	ours, err := r.activeSnapshotDirs(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	var errs []error
	for _, dir := range tempDirs() {
		ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
		if err != nil {
			return nil, fmt.Errorf("list mounts under %s: %w", dir, err)
		}
		for _, m := range ms {
			if !strings.HasPrefix(filepath.Base(m.Mountpoint), "containerd-mount") || filepath.Dir(m.Mountpoint) != dir ||
				!staleTempMount(m, root, ours) {
				continue
			}
			if err := mount.UnmountAll(m.Mountpoint, unix.MNT_DETACH); err != nil {
				errs = append(errs, err)
				continue
			}
			_ = os.Remove(m.Mountpoint) // empty once unmounted
			out = append(out, m.Mountpoint)
		}
	}
	return out, errors.Join(errs...)
}

// tempDirs are where mount.WithTempMount puts its mounts by default.
func tempDirs() []string {
	dirs := []string{filepath.Clean(os.TempDir())}
	if x := os.Getenv("XDG_RUNTIME_DIR"); x != "" && filepath.Clean(x) != dirs[0] {
		dirs = append(dirs, filepath.Clean(x))
	}
	return dirs
}

// overlayLayers returns an overlay mount's lower and upper dirs.
func overlayLayers(vfsOptions string) []string {
	var out []string
	for _, o := range strings.Split(vfsOptions, ",") {
		if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
			out = append(out, strings.Split(v, ":")...)
		} else if v, ok := strings.CutPrefix(o, "upperdir="); ok {
			out = append(out, v)
		}
	}
	return out
}

// staleTempMount says whether m is an overlay of root's snapshots holding
// one of ours (or a removed one).
func staleTempMount(m *mountinfo.Info, root string, ours map[string]bool) bool {
	if m.FSType != "overlay" {
		return false
	}
	layers := overlayLayers(m.VFSOptions)
	if len(layers) == 0 {
		return false
	}
	mine := false
	for _, l := range layers {
		if !strings.HasPrefix(l, root+"/") {
			return false
		}
		if _, err := os.Stat(l); ours[l] || errors.Is(err, os.ErrNotExist) {
			mine = true
		}
	}
	return mine
}

// snapshotterRoot asks containerd where its snapshotter keeps snapshots.
func (r *Runtime) snapshotterRoot(ctx context.Context) (string, error) {
	resp, err := r.client.IntrospectionService().Plugins(ctx, "type==io.containerd.snapshotter.v1,id=="+r.cfg.Snapshotter)
	if err != nil {
		return "", fmt.Errorf("introspect snapshotter %s: %w", r.cfg.Snapshotter, err)
	}
	for _, p := range resp.Plugins {
		if root := p.Exports["root"]; root != "" {
			return filepath.Clean(root), nil
		}
	}
	return "", fmt.Errorf("snapshotter %s exports no root", r.cfg.Snapshotter)
}

// activeSnapshotDirs are the writable dirs of the namespace's active
// snapshots (a container's rootfs), which a read-only temporary mount of it
// stacks on top of its lower dirs. Committed layers are left out: they are
// not proof that a mount is this namespace's.
func (r *Runtime) activeSnapshotDirs(ctx context.Context) (map[string]bool, error) {
	sn := r.client.SnapshotService(r.cfg.Snapshotter)
	var keys []string
	err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if info.Kind == snapshots.KindActive {
			keys = append(keys, info.Name)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("walk snapshots: %w", err)
	}
	out := map[string]bool{}
	for _, k := range keys {
		ms, err := sn.Mounts(ctx, k)
		if err != nil {
			continue // removed meanwhile
		}
		for _, m := range ms {
			if m.Type == "bind" || m.Type == "rbind" {
				out[m.Source] = true
			}
			for _, o := range m.Options {
				if v, ok := strings.CutPrefix(o, "upperdir="); ok {
					out[v] = true
				}
			}
		}
	}
	return out, nil
}
