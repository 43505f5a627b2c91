package logship

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
)

// retain keeps the log disk in bounds. Per task, at most KeepFiles
// rotated files stay once shipped (or skipped). Past DiskHigh, shipped and
// skipped files go, oldest first, the current files of running tasks
// never. Past DiskEmergency, unshipped rotated files go too, oldest
// first, each counted in EmergencyDeleted and logged as an error.
func (s *Shipper) retain() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, t := range s.tasks {
		var local []*fileRec
		for _, f := range s.files[id] {
			if !f.Final && !f.Removed && !f.Spooled {
				local = append(local, f)
			}
		}
		for i := 0; len(local)-i > s.cfg.KeepFiles && i < len(local); i++ {
			if f := local[i]; done(f) {
				s.removeLocked(t, f, "retention")
			}
		}
	}
	frac := s.usage()
	if frac < s.cfg.DiskHigh {
		return
	}
	for _, f := range s.candidatesLocked(done) {
		if frac < s.cfg.DiskHigh {
			break
		}
		s.removeLocked(s.tasks[f.Task], f, "disk_pressure")
		frac = s.usage()
	}
	if frac < s.cfg.DiskEmergency {
		return
	}
	for _, f := range s.candidatesLocked(func(f *fileRec) bool { return f.State == StatePending }) {
		if frac < s.cfg.DiskEmergency {
			break
		}
		s.log.Error("log disk past the emergency threshold: deleting a log file before it was shipped",
			"task", f.Task, "file", f.Name, "key", f.Key, "bytes", f.Size, "used", frac, "threshold", s.cfg.DiskEmergency)
		s.m.EmergencyDeleted.Inc()
		if s.removeLocked(s.tasks[f.Task], f, "emergency") {
			f.State = StateDropped
			if err := s.db.putFile(f); err != nil {
				s.log.Error("record dropped log file", "task", f.Task, "file", f.Name, "err", err)
			}
		}
		frac = s.usage()
	}
}

func done(f *fileRec) bool { return f.State == StateShipped || f.State == StateSkipped }

// candidatesLocked are local files matching ok, oldest first.
func (s *Shipper) candidatesLocked(ok func(*fileRec) bool) []*fileRec {
	var out []*fileRec
	for _, fs := range s.files {
		for _, f := range fs {
			if !f.Removed && ok(f) {
				out = append(out, f)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Rotated.Before(out[j].Rotated) })
	return out
}

// usage is the log disk's used fraction (0 when unknown: never delete on
// doubt).
func (s *Shipper) usage() float64 {
	used, total, err := s.cfg.Disk.Usage(s.cfg.LogDir)
	if err != nil || total == 0 {
		return 0
	}
	return float64(used) / float64(total)
}

// removeLocked deletes f's local bytes and records it.
func (s *Shipper) removeLocked(t *taskRec, f *fileRec, reason string) bool {
	if t == nil {
		return false
	}
	err := os.Remove(filepath.Join(s.fileDir(t, f), f.Name))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Error("delete log file", "task", f.Task, "file", f.Name, "err", err)
		return false
	}
	f.Removed = true
	if err := s.db.putFile(f); err != nil {
		s.log.Error("record deleted log file", "task", f.Task, "file", f.Name, "err", err)
	}
	s.m.Removed.WithLabelValues(reason).Inc()
	return true
}
