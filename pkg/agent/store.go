package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/containerd/errdefs"

	"github.com/titus-agent/titus-agent/pkg/agent/taskrunner"
)

var tasksBucket = []byte("tasks")

// Store keeps task records in a bbolt file. Every Save is durable (fsync)
// before it returns: intent is recorded before the agent acts on it.
type Store struct{ db *bolt.DB }

// OpenStore opens (creating) the state file under dir. It fails if another
// agent holds the file.
func OpenStore(dir string) (*Store, error) { return OpenStoreTimeout(dir, 5*time.Second) }

// OpenStoreTimeout is OpenStore waiting at most timeout for the file lock.
func OpenStoreTimeout(dir string, timeout time.Duration) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	db, err := bolt.Open(filepath.Join(dir, "tasks.db"), 0o600, &bolt.Options{Timeout: timeout})
	if err != nil {
		return nil, fmt.Errorf("open state (is another agent running on %s?): %w", dir, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(tasksBucket)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("init state: %w", err)
	}
	db.MaxBatchDelay = 2 * time.Millisecond
	return &Store{db: db}, nil
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// Save writes one record.
func (s *Store) Save(rec *taskrunner.Record) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode task %s: %w", rec.Spec.ID, err)
	}
	// Batch coalesces concurrent launches into one fsync'd transaction.
	err = s.db.Batch(func(tx *bolt.Tx) error {
		return tx.Bucket(tasksBucket).Put([]byte(rec.Spec.ID), b)
	})
	if err != nil && (errors.Is(err, syscall.ENOSPC) || strings.Contains(err.Error(), "no space left")) {
		return fmt.Errorf("%w: %w", ErrStateDiskFull, err)
	}
	return err
}

// ErrStateDiskFull marks a write refused because the state directory's
// filesystem is full (bbolt does not always keep the errno in the chain).
var ErrStateDiskFull = errdefs.ErrResourceExhausted.WithMessage("agent state disk full")

// Delete forgets a record.
func (s *Store) Delete(id string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(tasksBucket).Delete([]byte(id)) })
}

// ErrCorruptRecord marks a record that could not be decoded.
var ErrCorruptRecord = errors.New("corrupt task record")

// Load returns every record. Undecodable records are reported, not fatal.
func (s *Store) Load() ([]*taskrunner.Record, error) {
	var out []*taskrunner.Record
	var errs []error
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(tasksBucket).ForEach(func(k, v []byte) error {
			rec := &taskrunner.Record{}
			if err := json.Unmarshal(v, rec); err != nil {
				errs = append(errs, fmt.Errorf("%w %q: %v", ErrCorruptRecord, k, err))
				return nil
			}
			out = append(out, rec)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("load state: %w", err)
	}
	return out, errors.Join(errs...)
}
