package logship

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"syscall"
)

// retain keeps the log disks in bounds. Per task, at most KeepFiles
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
	// Each filesystem on its own: a quota'd task's log dir is its own
	// disk, the others share the log dir's.
	for _, g := range s.groupsLocked() {
		s.relieveLocked(g)
	}
}

// fsGroup is the local files on one filesystem, and a path on it.
type fsGroup struct {
	path  string
	files []*fileRec
}

// groupsLocked groups the local files by the filesystem they are on.
func (s *Shipper) groupsLocked() []*fsGroup {
	devs := map[string]uint64{} // dir → device
	byDev := map[uint64]*fsGroup{}
	var out []*fsGroup
	for id, fs := range s.files {
		t := s.tasks[id]
		if t == nil {
			continue
		}
		for _, f := range fs {
			if f.Removed {
				continue
			}
			dir := s.fileDir(t, f)
			dev, ok := devs[dir]
			if !ok {
				var st syscall.Stat_t
				if err := syscall.Stat(dir, &st); err != nil {
					continue
				}
				dev = uint64(st.Dev)
				devs[dir] = dev
			}
			g := byDev[dev]
			if g == nil {
				g = &fsGroup{path: dir}
				byDev[dev] = g
				out = append(out, g)
			}
			g.files = append(g.files, f)
		}
	}
	return out
}

// relieveLocked deletes files of g while its filesystem is past the
// thresholds: shipped and skipped ones past DiskHigh, then unshipped ones
// past DiskEmergency, oldest first.
func (s *Shipper) relieveLocked(g *fsGroup) {
	frac := s.usage(g.path)
	if frac < s.cfg.DiskHigh {
		return
	}
	for _, f := range candidates(g.files, done) {
		if frac < s.cfg.DiskHigh {
			break
		}
		s.removeLocked(s.tasks[f.Task], f, "disk_pressure")
		frac = s.usage(g.path)
	}
	if frac < s.cfg.DiskEmergency {
		return
	}
	for _, f := range candidates(g.files, func(f *fileRec) bool { return f.State == StatePending }) {
		if frac < s.cfg.DiskEmergency {
			break
		}
		s.log.Error("log disk past the emergency threshold: deleting a log file before it was shipped",
			"task", f.Task, "file", f.Name, "key", f.Key, "bytes", f.Size, "used", frac, "threshold", s.cfg.DiskEmergency, "disk", g.path)
		s.m.EmergencyDeleted.Inc()
		if s.removeLocked(s.tasks[f.Task], f, "emergency") {
			f.State = StateDropped
			if err := s.db.putFile(f); err != nil {
				s.log.Error("record dropped log file", "task", f.Task, "file", f.Name, "err", err)
			}
		}
		frac = s.usage(g.path)
	}
}

func done(f *fileRec) bool { return f.State == StateShipped || f.State == StateSkipped }

// candidates are the files of fs still local and matching ok, oldest
// first.
func candidates(fs []*fileRec, ok func(*fileRec) bool) []*fileRec {
	var out []*fileRec
	for _, f := range fs {
		if !f.Removed && ok(f) {
			out = append(out, f)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Rotated.Before(out[j].Rotated) })
	return out
}

// usage is the log disk's used fraction (0 when unknown: never delete on
// doubt).
func (s *Shipper) usage(path string) float64 {
	used, total, err := s.cfg.Disk.Usage(path)
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
	if f.Gzip {
		p := s.gzPath(f)
		_ = os.Remove(p)
		delete(s.made, p) // s.mu is held
	}
	f.Removed = true
	if err := s.db.putFile(f); err != nil {
		s.log.Error("record deleted log file", "task", f.Task, "file", f.Name, "err", err)
	}
	s.m.Removed.WithLabelValues(reason).Inc()
	return true
}
