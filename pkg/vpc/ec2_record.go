package vpc

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// recordState is how far an allocation got before it was written down.
type recordState string

const (
	recordPending  recordState = "pending"  // intent written, no IP yet
	recordAssigned recordState = "assigned" // IP handed to the task
)

type recordEntry struct {
	State recordState `json:"state"`
	Key   PoolKey     `json:"key"`
	ENI   string      `json:"eni,omitempty"`
	IP    string      `json:"ip,omitempty"`
	IPv6  string      `json:"ipv6,omitempty"`
}

type recordFile struct {
	Version int                    `json:"version"`
	Tasks   map[string]recordEntry `json:"tasks"`
}

// allocRecord is the ec2 provider's durable list of allocations: a small
// JSON file, replaced atomically (write temp, fsync, rename, fsync dir).
//
// Changes are staged in memory (stagePut, stageRemove: no I/O, cheap under
// the provider's lock) and made durable by sync, which group-commits: the
// first waiter writes the whole current state once, every change staged
// before that write is durable with it, and waiters that arrive meanwhile
// share the next write. A crash loses only changes nobody has synced, and
// the file on disk is always one consistent state the memory had.
type allocRecord struct {
	mu   sync.Mutex
	cond *sync.Cond
	path string
	data recordFile
	// staged counts changes made in memory; flushed is the last of them
	// on disk; flushing says a writer is at work (outside mu).
	staged, flushed uint64
	flushing        bool
	// write puts b on disk at path atomically (writeAtomic; tests swap it
	// to crash between steps).
	write func(path string, b []byte) error
}

func openRecord(path string) (*allocRecord, error) {
	r := &allocRecord{path: path, data: recordFile{Version: 1, Tasks: map[string]recordEntry{}}, write: writeAtomic}
	r.cond = sync.NewCond(&r.mu)
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("record dir: %w", err)
		}
		return r, nil
	case err != nil:
		return nil, fmt.Errorf("read allocation record: %w", err)
	}
	if err := json.Unmarshal(b, &r.data); err != nil {
		return nil, fmt.Errorf("parse allocation record %s: %w", path, err)
	}
	if r.data.Tasks == nil {
		r.data.Tasks = map[string]recordEntry{}
	}
	return r, nil
}

func (r *allocRecord) entries() map[string]recordEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]recordEntry, len(r.data.Tasks))
	for k, v := range r.data.Tasks {
		out[k] = v
	}
	return out
}

// put records e for taskID and returns once it is on disk. If it cannot
// be written, the task's entry is what it was before.
func (r *allocRecord) put(taskID string, e recordEntry) error {
	old, had, gen := r.stagePut(taskID, e)
	if err := r.sync(gen); err != nil {
		r.mu.Lock()
		if cur, ok := r.data.Tasks[taskID]; ok && cur == e {
			if had {
				r.data.Tasks[taskID] = old
			} else {
				delete(r.data.Tasks, taskID)
			}
			r.staged++
		}
		r.mu.Unlock()
		return err
	}
	return nil
}

// remove drops taskID's entry and returns once that is on disk.
func (r *allocRecord) remove(taskID string) error {
	gen, ok := r.stageRemove(taskID)
	if !ok {
		return nil
	}
	return r.sync(gen)
}

// stagePut sets taskID's entry in memory only; the change is durable once
// sync(gen) returned nil. old and had are the entry it replaced.
func (r *allocRecord) stagePut(taskID string, e recordEntry) (old recordEntry, had bool, gen uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old, had = r.data.Tasks[taskID]
	r.data.Tasks[taskID] = e
	r.staged++
	return old, had, r.staged
}

// stageRemove drops taskID's entry in memory only (ok false: there was
// none); the change is durable once sync(gen) returned nil.
func (r *allocRecord) stageRemove(taskID string) (gen uint64, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.data.Tasks[taskID]; !ok {
		return r.staged, false
	}
	delete(r.data.Tasks, taskID)
	r.staged++
	return r.staged, true
}

// staging is the generation of the last staged change: sync(staging())
// waits for everything staged so far.
func (r *allocRecord) staging() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.staged
}

// sync returns once every change up to gen is on disk. One caller writes
// the current state for all that wait (group commit); if its write fails,
// it gets the error and the next waiter tries again.
func (r *allocRecord) sync(gen uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for r.flushed < gen {
		if r.flushing {
			r.cond.Wait()
			continue
		}
		upto := r.staged
		b, err := json.MarshalIndent(r.data, "", "  ")
		if err != nil {
			return err
		}
		r.flushing = true
		r.mu.Unlock()
		err = r.write(r.path, b)
		r.mu.Lock()
		r.flushing = false
		r.cond.Broadcast()
		if err != nil {
			return err
		}
		r.flushed = max(r.flushed, upto)
	}
	return nil
}

// writeAtomic replaces path with b: temp file, fsync, rename, fsync dir.
func writeAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".alloc-*")
	if err != nil {
		return fmt.Errorf("write allocation record: %w", err)
	}
	tmp := f.Name()
	_, werr := f.Write(b)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp, path)
	}
	if werr != nil {
		os.Remove(tmp)
		return fmt.Errorf("write allocation record: %w", werr)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
