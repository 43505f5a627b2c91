package logship

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	bolt "go.etcd.io/bbolt"
)

// Run scans, uploads and keeps the log disk in bounds until ctx ends.
// An upload that fails stops the round; the next is tried after a
// jittered, growing delay, while scanning and disk pressure go on.
func (s *Shipper) Run(ctx context.Context) {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		s.Round(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.wake:
		}
	}
}

// Round is one pass of Run: scan every task, upload what is pending (if
// not backing off), keep the disk in bounds, forget finished tasks.
func (s *Shipper) Round(ctx context.Context) {
	s.mu.Lock()
	for _, t := range s.tasks {
		if !t.Ended {
			if err := s.scanLocked(t, false); err != nil {
				s.log.Error("scan task logs", "task", t.ID, "err", err)
			}
		}
	}
	s.mu.Unlock()
	if !s.cfg.Now().Before(s.nextTry) {
		if err := s.uploadPending(ctx); err != nil && ctx.Err() == nil {
			d := s.boff.Next()
			s.nextTry = s.cfg.Now().Add(d)
			s.m.UploadErrors.Inc()
			s.log.Warn("log upload failed; backing off", "err", err, "retry_in", d.Round(time.Millisecond), "attempt", s.boff.Attempts())
		}
	}
	s.retain()
	s.forgetDone()
	s.updateGauges()
}

// pending is every file to upload, oldest first.
func (s *Shipper) pending() []*fileRec {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*fileRec
	for _, fs := range s.files {
		for _, f := range fs {
			if f.State == StatePending && !f.Removed {
				out = append(out, f)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Rotated.Before(out[j].Rotated) })
	return out
}

func (s *Shipper) uploadPending(ctx context.Context) error {
	for _, f := range s.pending() {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.mu.Lock()
		t := s.tasks[f.Task]
		work := *f
		s.mu.Unlock()
		if t == nil {
			continue
		}
		save := func(c *fileRec) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			if f.State != StatePending {
				return errors.New("logship: file no longer pending")
			}
			c.Spooled = c.Spooled || f.Spooled // Finish may have spooled it meanwhile
			if err := s.db.putFile(c); err != nil {
				return err
			}
			*f = *c
			return nil
		}
		if err := s.index(ctx, t); err != nil {
			return err
		}
		sent, err := s.uploadOne(ctx, s.fileDir(t, &work), &work, save)
		if errors.Is(err, errGone) || errors.Is(err, errNotPlain) {
			s.dropGz(f)
		}
		if errors.Is(err, errGone) {
			// Removed by someone else before it was shipped.
			s.log.Error("log file vanished before it was shipped", "task", f.Task, "file", f.Name)
			work.State, work.Removed = StateDropped, true
			_ = save(&work)
			continue
		}
		if errors.Is(err, errNotPlain) {
			s.log.Error("log file replaced by something else before it was shipped; never read", "task", f.Task, "file", f.Name, "err", err)
			s.m.Refused.Inc()
			work.State = StateDropped
			_ = save(&work)
			continue
		}
		if err != nil {
			return err
		}
		work.State, work.UploadID = StateShipped, ""
		if err := save(&work); err != nil {
			return err
		}
		s.boff.Reset()
		s.m.ShippedFiles.Inc()
		s.m.ShippedBytes.Add(float64(work.Size))
		s.m.UploadedBytes.Add(float64(sent))
		s.log.Debug("log file shipped", "task", f.Task, "file", f.Name, "key", f.Key, "bytes", f.Size)
		if work.Spooled {
			_ = os.Remove(filepath.Join(s.cfg.SpoolDir, f.Task, f.Name))
		}
		if work.Gzip {
			s.dropGz(f)
		}
	}
	return nil
}

// index puts the job index entry (JobIndexKey) of t's job and
// application before the task's first upload: once per task, and once per
// job and application in this process. Tasks not launched by the
// scheduler (no application or job) have none.
func (s *Shipper) index(ctx context.Context, t *taskRec) error {
	s.mu.Lock()
	if t.Indexed || t.App == "" || t.Job == "" {
		s.mu.Unlock()
		return nil
	}
	key := JobIndexKey(s.cfg.Prefix, t.App, t.Job)
	done := s.indexed[key]
	s.mu.Unlock()
	if !done {
		_, err := s.api.PutObject(ctx, &s3.PutObjectInput{Bucket: &s.cfg.Bucket, Key: &key, ContentLength: aws.Int64(0),
			Body: strings.NewReader(""), ContentType: aws.String("application/x-empty")})
		if err != nil {
			return fmt.Errorf("put job index entry %s: %w", key, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.indexed[key] = true
	next := *t
	next.Indexed = true
	if err := s.db.update(func(bk *bolt.Bucket) error { return put(bk, taskKey(t.ID), &next) }); err != nil {
		return fmt.Errorf("logship: record the job index entry of %s: %w", t.ID, err)
	}
	t.Indexed = true
	return nil
}

// forgetDone drops ended tasks with nothing left to ship and no file
// left on the host: while a file is there, the record is what lets
// disk pressure delete it (shipped files go first).
func (s *Shipper) forgetDone() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, t := range s.tasks {
		if !t.Ended {
			continue
		}
		left := false
		for _, f := range s.files[id] {
			if f.State == StatePending || (!f.Removed && !f.Spooled) {
				left = true
			}
		}
		if left {
			continue
		}
		if err := s.db.forget(id); err != nil {
			s.log.Error("forget shipped task", "task", id, "err", err)
			continue
		}
		_ = os.RemoveAll(filepath.Join(s.cfg.SpoolDir, id))
		delete(s.tasks, id)
		delete(s.files, id)
	}
}

func (s *Shipper) updateGauges() {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n, bytes int64
	var oldest time.Time
	for _, fs := range s.files {
		for _, f := range fs {
			if f.State != StatePending || f.Removed {
				continue
			}
			n++
			bytes += f.Size
			if oldest.IsZero() || f.Rotated.Before(oldest) {
				oldest = f.Rotated
			}
		}
	}
	s.m.BacklogFiles.Set(float64(n))
	s.m.BacklogBytes.Set(float64(bytes))
	if oldest.IsZero() {
		s.m.OldestAge.Set(0)
	} else {
		s.m.OldestAge.Set(s.cfg.Now().Sub(oldest).Seconds())
	}
}
