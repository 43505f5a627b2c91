package runtime

import (
	"bufio"
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"

	"github.com/titus-agent/titus-agent/pkg/backoff"
)

// oomWatcher records the containers containerd reported OOM events for.
type oomWatcher struct {
	mu     sync.Mutex
	killed map[string]time.Time
	notify chan struct{} // closed and replaced on every record
}

func newOOMWatcher() *oomWatcher {
	return &oomWatcher{killed: map[string]time.Time{}, notify: make(chan struct{})}
}

func (w *oomWatcher) record(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.killed[id] = time.Now()
	close(w.notify)
	w.notify = make(chan struct{})
	for k, at := range w.killed { // keep the record small
		if time.Since(at) > time.Hour {
			delete(w.killed, k)
		}
	}
}

func (w *oomWatcher) forget(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.killed, id)
}

// seen reports whether id had an OOM event, and a channel closed on the
// next recorded event.
func (w *oomWatcher) seen(id string) (bool, <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.killed[id]
	return ok, w.notify
}

// waitFor waits up to d for an OOM event for id.
func (w *oomWatcher) waitFor(ctx context.Context, id string, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		ok, next := w.seen(id)
		if ok {
			return true
		}
		select {
		case <-next:
		case <-t.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// run subscribes to /tasks/oom events of ns until ctx ends, resubscribing
// (with backoff) when containerd goes away.
func (w *oomWatcher) run(ctx context.Context, c *client.Client, ns string) {
	b := backoff.New(backoff.Policy{Base: 100 * time.Millisecond, Max: 5 * time.Second})
	for ctx.Err() == nil {
		evs, errs := c.Subscribe(ctx, `topic=="/tasks/oom",namespace==`+strconv.Quote(ns))
		func() {
			for {
				select {
				case e := <-evs:
					b.Reset()
					v, err := typeurl.UnmarshalAny(e.Event)
					if err != nil {
						continue
					}
					if oom, ok := v.(*apievents.TaskOOM); ok {
						w.record(oom.ContainerID)
					}
				case err := <-errs:
					if err != nil && ctx.Err() == nil {
						log.G(ctx).WithError(err).Debug("oom event subscription lost")
					}
					return
				case <-ctx.Done():
					return
				}
			}
		}()
		b.Wait(ctx)
	}
}

// cgroupOOMKilled reads the kernel's OOM kill counter of a container's
// memory cgroup (v1 memory.oom_control, v2 memory.events), under either
// cgroup driver. The cgroupfs driver's cgroup lives until the task is
// deleted, and the systemd driver's task slice until Delete stops it
// (accountingRelDirs), so this closes the race where the OOM event
// arrives after the exit event. Any of the task's cgroups counting a kill
// counts (v1 counters are not hierarchical).
func cgroupOOMKilled(cgroupsPath string) bool {
	for _, f := range accountingFiles(cgroupRoot, cgroupsPath, "memory", "memory.oom_control", "memory.events") {
		if n, ok := readCounter(f, "oom_kill"); ok && n > 0 {
			return true
		}
	}
	return false
}

func readCounter(path, key string) (int64, bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), " ")
		if ok && k == key {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// cgroupPeakMemory reads the highest memory use of a container's cgroup
// (v1 memory.max_usage_in_bytes, v2 memory.peak; the largest of its
// cgroups', see accountingRelDirs); 0 if unknown.
func cgroupPeakMemory(cgroupsPath string) uint64 {
	var peak uint64
	for _, f := range accountingFiles(cgroupRoot, cgroupsPath, "memory", "memory.max_usage_in_bytes", "memory.peak") {
		if b, err := os.ReadFile(f); err == nil {
			if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil {
				peak = max(peak, n)
			}
		}
	}
	return peak
}
