package logship

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Bucket is the bbolt bucket of the shipper's state in the agent's store.
var Bucket = []byte("logship")

// File states.
const (
	// StatePending: recorded with its key, not yet in S3.
	StatePending = "pending"
	// StateShipped: in S3 under its key.
	StateShipped = "shipped"
	// StateSkipped: never shipped, by the task's choice (opt-out, cap).
	StateSkipped = "skipped"
	// StateDropped: deleted unshipped past the emergency threshold.
	StateDropped = "dropped"
)

// taskRec is one tracked task.
type taskRec struct {
	ID       string `json:"id"`
	App      string `json:"app,omitempty"`
	Job      string `json:"job,omitempty"`
	Dir      string `json:"dir"`
	OptOut   bool   `json:"optOut,omitempty"`
	MaxBytes int64  `json:"maxBytes,omitempty"`
	// NextSeq is the next rotation sequence number, by stream.
	NextSeq  map[string]int `json:"nextSeq,omitempty"`
	Assigned int64          `json:"assigned"` // bytes recorded to ship
	Ended    bool           `json:"ended,omitempty"`
	Added    time.Time      `json:"added"`
	// Indexed: the job index entry of the task's job and application
	// (JobIndexKey) is in S3.
	Indexed bool `json:"indexed,omitempty"`
}

// fileRec is one log file of a task, from the moment it gets its key.
type fileRec struct {
	Task string `json:"task"`
	// Name is the file's name in the task's log dir.
	Name string `json:"name"`
	// Spooled: its bytes were copied to the spool (the task's log dir
	// was on a disk that went away with the task).
	Spooled bool   `json:"spooled,omitempty"`
	Stream  string `json:"stream"`
	Seq     int    `json:"seq"`
	Key     string `json:"key"`
	Size    int64  `json:"size"`
	// Rotated is when the file stopped growing (its mtime).
	Rotated time.Time `json:"rotated"`
	State   string    `json:"state"`
	// Attempted is set before the first upload call: a resumed agent
	// asks S3 whether an attempt it did not see finish got there.
	Attempted bool   `json:"attempted,omitempty"`
	UploadID  string `json:"uploadID,omitempty"`
	Final     bool   `json:"final,omitempty"`
	// Gzip: the file is shipped gzip-compressed (its key ends in .gz),
	// from a compressed copy in the spool, GzSize bytes long once made.
	// A record made before compression existed has neither.
	Gzip   bool  `json:"gzip,omitempty"`
	GzSize int64 `json:"gzSize,omitempty"`
	// Removed: the local file is gone (retention, disk pressure).
	Removed bool `json:"removed,omitempty"`
}

func taskKey(id string) []byte       { return []byte("t/" + id) }
func fileKey(id, name string) []byte { return []byte("f/" + id + "/" + name) }
func filePrefix(id string) []byte    { return []byte("f/" + id + "/") }

// db wraps the bucket's reads and writes. Every write is one fsync'd
// bbolt transaction.
type db struct{ b *bolt.DB }

func openDB(b *bolt.DB) (db, error) {
	err := b.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(Bucket)
		return err
	})
	if err != nil {
		return db{}, fmt.Errorf("logship: state bucket: %w", err)
	}
	return db{b}, nil
}

func put(bk *bolt.Bucket, k []byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return bk.Put(k, b)
}

func (d db) update(fn func(bk *bolt.Bucket) error) error {
	return d.b.Update(func(tx *bolt.Tx) error { return fn(tx.Bucket(Bucket)) })
}

// load reads every task and its files.
func (d db) load() (map[string]*taskRec, map[string][]*fileRec, error) {
	tasks := map[string]*taskRec{}
	files := map[string][]*fileRec{}
	err := d.b.View(func(tx *bolt.Tx) error {
		return tx.Bucket(Bucket).ForEach(func(k, v []byte) error {
			switch {
			case strings.HasPrefix(string(k), "t/"):
				var t taskRec
				if err := json.Unmarshal(v, &t); err != nil {
					return fmt.Errorf("logship: record %s: %w", k, err)
				}
				tasks[t.ID] = &t
			case strings.HasPrefix(string(k), "f/"):
				var f fileRec
				if err := json.Unmarshal(v, &f); err != nil {
					return fmt.Errorf("logship: record %s: %w", k, err)
				}
				files[f.Task] = append(files[f.Task], &f)
			}
			return nil
		})
	})
	return tasks, files, err
}

func (d db) putFile(f *fileRec) error {
	return d.update(func(bk *bolt.Bucket) error { return put(bk, fileKey(f.Task, f.Name), f) })
}

// forget drops a task and all its file records.
func (d db) forget(id string) error {
	return d.update(func(bk *bolt.Bucket) error {
		c := bk.Cursor()
		p := filePrefix(id)
		var keys [][]byte
		for k, _ := c.Seek(p); k != nil && strings.HasPrefix(string(k), string(p)); k, _ = c.Next() {
			keys = append(keys, append([]byte(nil), k...))
		}
		for _, k := range keys {
			if err := bk.Delete(k); err != nil {
				return err
			}
		}
		return bk.Delete(taskKey(id))
	})
}
