package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/containerd/errdefs"

	"github.com/titus-agent/titus-agent/pkg/agent/taskrunner"
)

var (
	tasksBucket = []byte("tasks")
	// quarantineBucket keeps records that could not be read, byte for
	// byte, under their task id: their containers are never reaped on
	// their account (never kill on doubt), and an operator can inspect them.
	quarantineBucket = []byte("quarantine")
)

// StateFile is the task state's file name under the state directory.
const StateFile = "tasks.db"

// Store keeps task records in a bbolt file. Every Save is durable (fsync)
// before it returns: intent is recorded before the agent acts on it.
// Saves group-commit: a lone Save writes at once; Saves that arrive while
// a commit is in flight share the next one (one fsync for all).
type Store struct {
	db   *bolt.DB
	path string

	mu sync.Mutex
	// queue are the writes waiting for the next commit; busy is set while
	// a commit is in flight (its writer commits the queue after it).
	queue []*put
	busy  bool
	// rounds counts commits (tests).
	rounds atomic.Int64
}

// put is one record waiting to be committed; err gets the commit's result.
type put struct {
	key, val []byte
	err      chan error
}

// ErrStateLocked means another process holds the state file.
var ErrStateLocked = errdefs.ErrUnavailable.WithMessage("agent state file is in use")

// ErrStateCorrupt means the state file itself cannot be read. The agent
// does not start on it: without its records it would take every running
// task for unknown and reap it.
var ErrStateCorrupt = errdefs.ErrDataLoss.WithMessage("agent state file is corrupt")

// OpenStore opens (creating) the state file under dir. It fails if another
// agent holds the file.
func OpenStore(dir string) (*Store, error) { return OpenStoreTimeout(dir, 5*time.Second) }

// OpenStoreTimeout is OpenStore waiting at most timeout for the file lock.
// A file that is not a readable bbolt database, or whose pages fail bbolt's
// consistency check, is refused with ErrStateCorrupt naming the file and
// what to do; it is never rewritten.
func OpenStoreTimeout(dir string, timeout time.Duration) (s *Store, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	path := filepath.Join(dir, StateFile)
	corrupt := func(cause any) error {
		return fmt.Errorf("%w: %s: %v. The agent will not start without its task records (running containers "+
			"would be taken for unknown and killed). Keep the file for analysis, then either restore it from a "+
			"backup, or move it aside (mv %s %s.corrupt) and start the agent, accepting that every running "+
			"task on this host is reaped and rescheduled (see docs/operations.md)", ErrStateCorrupt, path, cause, path, path)
	}
	// bbolt panics on some corrupt pages instead of returning an error.
	defer func() {
		if r := recover(); r != nil {
			s, err = nil, corrupt(r)
		}
	}()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	switch {
	case errors.Is(err, bolt.ErrTimeout):
		return nil, fmt.Errorf("%w: %s is locked by another process (another agent running on %s?)", ErrStateLocked, path, dir)
	case errors.Is(err, bolt.ErrInvalid) || errors.Is(err, bolt.ErrVersionMismatch) || errors.Is(err, bolt.ErrChecksum):
		return nil, corrupt(err)
	case err != nil && strings.Contains(err.Error(), "file size too small"):
		return nil, corrupt(err)
	case err != nil:
		return nil, fmt.Errorf("open state file %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			db.Close()
		}
	}()
	var bad []error
	if err := db.View(func(tx *bolt.Tx) error {
		for e := range tx.Check() {
			bad = append(bad, e)
		}
		return nil
	}); err != nil {
		return nil, corrupt(err)
	}
	if len(bad) > 0 {
		return nil, corrupt(errors.Join(bad...))
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{tasksBucket, quarantineBucket} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("init state file %s: %w", path, err)
	}
	return &Store{db: db, path: path}, nil
}

// Path is the state file.
func (s *Store) Path() string { return s.path }

// DB is the store's bbolt file, for subsystems that keep their own
// bucket in it (pkg/logship).
func (s *Store) DB() *bolt.DB { return s.db }

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// Save writes one record, stamped with the current schema version.
func (s *Store) Save(rec *taskrunner.Record) error {
	v := *rec
	v.Version = taskrunner.RecordVersion
	b, err := json.Marshal(&v)
	if err != nil {
		return fmt.Errorf("encode task %s: %w", rec.Spec.ID, err)
	}
	err = s.commit(&put{key: []byte(rec.Spec.ID), val: b, err: make(chan error, 1)})
	if err != nil && (errors.Is(err, syscall.ENOSPC) || strings.Contains(err.Error(), "no space left")) {
		return fmt.Errorf("%w: %w", ErrStateDiskFull, err)
	}
	return err
}

// commit writes p durably, with whatever else is queued. A writer that
// finds no commit in flight commits the queue (its own record and any
// others) itself; writes queued during a commit go in the next one, made
// by a new goroutine. So a lone writer never waits on a timer (bbolt's
// Batch waits MaxBatchDelay even alone), and concurrent launches share
// fsyncs. A task's records are never in one commit twice: a runner's
// writes wait for each other.
func (s *Store) commit(p *put) error {
	s.mu.Lock()
	s.queue = append(s.queue, p)
	if s.busy {
		s.mu.Unlock()
		return <-p.err
	}
	s.busy = true
	s.mu.Unlock()
	s.commitQueued()
	return <-p.err
}

// commitQueued commits the queue once; if more queued meanwhile, a new
// goroutine takes over, so the caller returns after its own round.
func (s *Store) commitQueued() {
	s.mu.Lock()
	batch := s.queue
	s.queue = nil
	s.mu.Unlock()
	if err := s.update(batch); err != nil && len(batch) > 1 {
		// One bad write must not fail the others: each alone, as
		// bbolt's Batch does.
		for _, p := range batch {
			p.err <- s.update([]*put{p})
		}
	} else {
		for _, p := range batch {
			p.err <- err
		}
	}
	s.mu.Lock()
	if len(s.queue) == 0 {
		s.busy = false
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	go s.commitQueued()
}

// update commits puts in one fsync'd transaction.
func (s *Store) update(puts []*put) error {
	s.rounds.Add(1)
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(tasksBucket)
		for _, p := range puts {
			if err := b.Put(p.key, p.val); err != nil {
				return err
			}
		}
		return nil
	})
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

// decodeRecord reads a record of any version this agent knows, migrated
// to the current one.
func decodeRecord(key, v []byte) (*taskrunner.Record, error) {
	var probe struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(v, &probe); err != nil {
		return nil, err
	}
	rec := &taskrunner.Record{}
	switch probe.Version {
	case 0, 1:
		// Version 1 had no version field. Its foreign types (isolation's
		// UserNS, the OCI Mount) had the JSON names the record's own
		// types kept, and its "image" field (the reference) is ignored:
		// it decodes as it is.
		if err := json.Unmarshal(v, rec); err != nil {
			return nil, err
		}
	case taskrunner.RecordVersion:
		if err := json.Unmarshal(v, rec); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("record version %d is newer than this agent's %d (written by a newer agent?)",
			probe.Version, taskrunner.RecordVersion)
	}
	if rec.Spec.ID != string(key) {
		return nil, fmt.Errorf("record of task %q stored under %q", rec.Spec.ID, key)
	}
	rec.Version = taskrunner.RecordVersion
	return rec, nil
}

// Load returns every record, migrated to the current version. A record
// that cannot be read is moved, as it is, to the quarantine (see
// Quarantined) and reported in the error (ErrCorruptRecord); the others
// are returned. It is never deleted.
func (s *Store) Load() ([]*taskrunner.Record, error) {
	var out []*taskrunner.Record
	var errs []error
	err := s.db.Update(func(tx *bolt.Tx) error {
		tasks, q := tx.Bucket(tasksBucket), tx.Bucket(quarantineBucket)
		var bad [][2][]byte
		err := tasks.ForEach(func(k, v []byte) error {
			rec, err := decodeRecord(k, v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%w %q (quarantined in %s): %v", ErrCorruptRecord, k, s.path, err))
				bad = append(bad, [2][]byte{slices.Clone(k), slices.Clone(v)})
				return nil
			}
			out = append(out, rec)
			return nil
		})
		if err != nil {
			return err
		}
		for _, kv := range bad {
			if err := q.Put(kv[0], kv[1]); err != nil {
				return err
			}
			if err := tasks.Delete(kv[0]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load state from %s: %w", s.path, err)
	}
	return out, errors.Join(errs...)
}

// Quarantined returns the ids of the tasks whose records could not be read
// (this start or an earlier one), sorted.
func (s *Store) Quarantined() ([]string, error) {
	var ids []string
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(quarantineBucket).ForEach(func(k, _ []byte) error {
			ids = append(ids, string(k))
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read quarantine of %s: %w", s.path, err)
	}
	return ids, nil
}
