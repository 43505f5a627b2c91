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
// JSON file, replaced atomically (write temp, fsync, rename, fsync dir) on
// every change, before EC2 or netlink is touched for it.
type allocRecord struct {
	mu   sync.Mutex
	path string
	data recordFile
}

func openRecord(path string) (*allocRecord, error) {
	r := &allocRecord{path: path, data: recordFile{Version: 1, Tasks: map[string]recordEntry{}}}
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

func (r *allocRecord) put(taskID string, e recordEntry) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	old, had := r.data.Tasks[taskID]
	r.data.Tasks[taskID] = e
	if err := r.save(); err != nil {
		if had {
			r.data.Tasks[taskID] = old
		} else {
			delete(r.data.Tasks, taskID)
		}
		return err
	}
	return nil
}

func (r *allocRecord) remove(taskID string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.data.Tasks[taskID]; !ok {
		return nil
	}
	delete(r.data.Tasks, taskID)
	return r.save()
}

func (r *allocRecord) save() error {
	b, err := json.MarshalIndent(r.data, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(r.path)
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
		werr = os.Rename(tmp, r.path)
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
