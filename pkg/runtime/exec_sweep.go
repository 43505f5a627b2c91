package runtime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
)

// liveExecs are the exec ids of this process's sessions: a sweep never
// touches them.
type liveExecs struct {
	mu  sync.Mutex
	ids map[string]bool
}

func (l *liveExecs) add(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ids == nil {
		l.ids = map[string]bool{}
	}
	l.ids[id] = true
}

func (l *liveExecs) remove(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.ids, id)
}

func (l *liveExecs) has(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ids[id]
}

// staleExecCgroups are the exec session cgroups in the task cgroup dirs
// (of one hierarchy) whose session is not live, by exec id.
func staleExecCgroups(taskDirs []string, live func(execID string) bool) map[string]string {
	out := map[string]string{}
	for _, d := range taskDirs {
		subs, _ := filepath.Glob(filepath.Join(d, execCgroupPrefix+"*"))
		for _, s := range subs {
			id := strings.TrimPrefix(filepath.Base(s), execCgroupPrefix)
			if fi, err := os.Stat(s); err != nil || !fi.IsDir() || live(id) {
				continue
			}
			out[id] = s
		}
	}
	return out
}

// sweepExecCgroup kills everything in one exec session's cgroup and
// removes it. The task's own processes are in the task's cgroup, the
// parent, and are never looked at.
func sweepExecCgroup(o cgroupOS, dir string, v2 bool) error {
	c := &execCgroup{os: o, dir: dir, v2: v2, poll: 10 * time.Millisecond, wait: 10 * time.Second}
	return c.Kill()
}

// SweepExecSessions ends the exec sessions an earlier agent process left
// in this namespace's tasks: a session lives as long as the agent process
// that relays it, so at start every exec cgroup (titus-exec-<exec id>
// below a task's cgroup) that is not one of this process's sessions
// belongs to a session that is gone, with its client. What runs in it is
// killed, the cgroup removed, and containerd's record of the exec process
// deleted. The task and its own processes are untouched. It returns
// "<task>/<exec id>" of each session swept.
func (r *Runtime) SweepExecSessions(ctx context.Context) ([]string, error) {
	ctx = r.ctx(ctx)
	cs, err := r.client.Containers(ctx, fmt.Sprintf("labels.%q==true", LabelManaged))
	if err != nil {
		return nil, fmt.Errorf("sweep exec sessions: list containers: %w", err)
	}
	_, verr := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers"))
	v2 := verr == nil
	var swept []string
	var errs []error
	for _, c := range cs {
		spec, err := c.Spec(ctx)
		if errdefs.IsNotFound(err) {
			continue
		} else if err != nil {
			errs = append(errs, fmt.Errorf("sweep exec sessions of %s: %w", c.ID(), err))
			continue
		}
		if spec.Linux == nil {
			continue
		}
		rel, ok := cgroupRelDir(spec.Linux.CgroupsPath)
		if !ok {
			continue
		}
		stale := staleExecCgroups([]string{filepath.Dir(execCgroupDir(cgroupRoot, rel, v2, "x"))}, r.execs.has)
		if len(stale) == 0 {
			continue
		}
		t, terr := c.Task(ctx, nil)
		for id, dir := range stale {
			if err := sweepExecCgroup(hostCgroups{}, dir, v2); err != nil {
				errs = append(errs, fmt.Errorf("sweep exec session %s of %s: %w", id, c.ID(), err))
				continue
			}
			if terr == nil {
				if p, err := t.LoadProcess(ctx, id, nil); err == nil {
					if _, err := p.Delete(ctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
						errs = append(errs, fmt.Errorf("delete exec %s of %s: %w", id, c.ID(), err))
					}
				}
			}
			swept = append(swept, c.ID()+"/"+id)
		}
	}
	return swept, errors.Join(errs...)
}
