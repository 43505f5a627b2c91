package logship

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/titus-agent/titus-agent/pkg/backoff"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Config configures a Shipper.
type Config struct {
	Bucket string
	// Prefix starts every key (see Key).
	Prefix string
	// LogDir is the agent's task log directory: LogDir/<task id>.
	LogDir string
	// SpoolDir keeps the unshipped files of ended tasks whose log dir
	// goes away with them (a quota'd disk). Default LogDir/.logship.
	SpoolDir string
	// Interval is how often log dirs are scanned (default 2s).
	Interval time.Duration
	// Gzip ships files recorded from now on gzip-compressed, under keys
	// ending in .gz (a file keeps the way it was recorded with).
	Gzip bool
	// MultipartThreshold: files at least this large go up in parts of
	// PartSize (defaults 16 MiB and 8 MiB; S3 needs parts ≥ 5 MiB).
	MultipartThreshold int64
	PartSize           int64
	// Backoff spaces upload attempts while S3 fails (default 1s doubling
	// to 1m, full jitter).
	Backoff backoff.Policy
	// KeepFiles is how many rotated files of a task stay on disk once
	// shipped (default 5); unshipped ones stay regardless.
	KeepFiles int
	// DiskHigh is the log disk's used fraction from which shipped (and
	// skipped) files are deleted, oldest first (default 0.85).
	// DiskEmergency is the fraction from which unshipped rotated files
	// are deleted too, oldest first, each counted and logged (default
	// 0.95).
	DiskHigh, DiskEmergency float64
	Logger                  *slog.Logger
	// Disk reports the log disk's usage (default: statfs).
	Disk Disk
	Now  func() time.Time
}

// Disk reports a filesystem's usage.
type Disk interface {
	Usage(path string) (used, total uint64, err error)
}

// Statfs is Disk on statfs(2).
type Statfs struct{}

func (Statfs) Usage(path string) (used, total uint64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, 0, err
	}
	total = st.Blocks * uint64(st.Bsize)
	return total - st.Bfree*uint64(st.Bsize), total, nil
}

// TaskInfo is what the shipper needs of a task.
type TaskInfo struct {
	ID       string
	App, Job string
	// Labels are the task's labels (task.LabelLogShip...).
	Labels map[string]string
}

// TaskInfoOf is spec's TaskInfo.
func TaskInfoOf(spec *task.Spec) TaskInfo {
	return TaskInfo{ID: spec.ID, App: spec.Labels[task.LabelApplication], Job: spec.Labels[task.LabelJobID], Labels: spec.Labels}
}

// errNotPlain means a recorded log file was replaced by something else
// (a link): it is never read.
var errNotPlain = errors.New("logship: not a plain file")

// ErrBadTaskID is returned for a task id that is not one plain path
// segment: it could name a directory outside the log dir.
var ErrBadTaskID = errors.New("logship: task id is not a plain name")

// Shipper uploads the log files of the tasks it tracks. Its state is in
// the agent's bbolt store; Run does the work.
type Shipper struct {
	cfg Config
	api S3API
	db  db
	m   *Metrics
	log *slog.Logger

	mu    sync.Mutex
	tasks map[string]*taskRec
	files map[string][]*fileRec // by task, in the order recorded

	wake chan struct{}
	// indexed are the job index entries put by this process.
	indexed map[string]bool
	// made are the compressed copies this process made (see gzipped).
	made map[string]bool
	// refused are the log dir entries seen not to be plain files.
	refused map[string]bool
	// nextTry is when uploads may be tried again after a failure.
	nextTry time.Time
	boff    *backoff.Backoff
}

// New makes a Shipper on the agent's store, loading its state.
func New(cfg Config, api S3API, store *bolt.DB, m *Metrics) (*Shipper, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("logship: no bucket")
	}
	if cfg.LogDir == "" {
		return nil, errors.New("logship: no log dir")
	}
	if cfg.SpoolDir == "" {
		cfg.SpoolDir = filepath.Join(cfg.LogDir, ".logship")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 2 * time.Second
	}
	if cfg.PartSize < 5<<20 {
		cfg.PartSize = 8 << 20
	}
	if cfg.MultipartThreshold <= 0 {
		cfg.MultipartThreshold = 16 << 20
	}
	if cfg.Backoff.Base <= 0 {
		cfg.Backoff = backoff.Policy{Base: time.Second, Max: time.Minute, Jitter: backoff.Full}
	}
	if cfg.KeepFiles <= 0 {
		cfg.KeepFiles = 5
	}
	if cfg.DiskHigh <= 0 {
		cfg.DiskHigh = 0.85
	}
	if cfg.DiskEmergency <= 0 {
		cfg.DiskEmergency = 0.95
	}
	if cfg.DiskEmergency < cfg.DiskHigh {
		return nil, fmt.Errorf("logship: emergency disk threshold %.2f is below the high one %.2f", cfg.DiskEmergency, cfg.DiskHigh)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Disk == nil {
		cfg.Disk = Statfs{}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	d, err := openDB(store)
	if err != nil {
		return nil, err
	}
	tasks, files, err := d.load()
	if err != nil {
		return nil, err
	}
	for id, fs := range files {
		sort.Slice(fs, func(i, j int) bool { return fs[i].Rotated.Before(fs[j].Rotated) })
		files[id] = fs
	}
	s := &Shipper{cfg: cfg, api: api, db: d, m: m, log: cfg.Logger.With("component", "logship"),
		tasks: tasks, files: files, wake: make(chan struct{}, 1), indexed: map[string]bool{}, made: map[string]bool{}, refused: map[string]bool{}, boff: backoff.New(cfg.Backoff)}
	s.updateGauges()
	return s, nil
}

func validID(id string) bool {
	return id != "" && !strings.ContainsAny(id, "/\\\x00") && !strings.HasPrefix(id, ".")
}

// Track starts shipping a task's logs. It is idempotent: a task tracked
// before (an agent restart) keeps its state.
func (s *Shipper) Track(t TaskInfo) error {
	if !validID(t.ID) {
		return fmt.Errorf("%w: %q", ErrBadTaskID, t.ID)
	}
	ls, fe := task.LogShippingOf(t.Labels)
	if fe != nil {
		return fmt.Errorf("logship: %w", fe)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.tasks[t.ID]; ok {
		return nil
	}
	rec := &taskRec{ID: t.ID, App: t.App, Job: t.Job, Dir: filepath.Join(s.cfg.LogDir, t.ID),
		OptOut: ls.OptOut, MaxBytes: ls.MaxBytes, NextSeq: map[string]int{}, Added: s.cfg.Now()}
	if err := s.db.update(func(bk *bolt.Bucket) error { return put(bk, taskKey(t.ID), rec) }); err != nil {
		return fmt.Errorf("logship: track %s: %w", t.ID, err)
	}
	s.tasks[t.ID] = rec
	return nil
}

// Finish records the task's remaining files, its final ones included,
// for shipping: the task has ended and its logger has exited. Files of a
// log dir that goes away with the task (a link into its quota'd disk) are
// copied to the spool first. Idempotent.
func (s *Shipper) Finish(taskID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[taskID]
	if !ok || t.Ended {
		return nil
	}
	if err := s.scanLocked(t, true); err != nil {
		return err
	}
	if fi, err := os.Lstat(t.Dir); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		if err := s.spoolLocked(t); err != nil {
			return err
		}
	}
	t.Ended = true
	if err := s.db.update(func(bk *bolt.Bucket) error { return put(bk, taskKey(t.ID), t) }); err != nil {
		t.Ended = false
		return fmt.Errorf("logship: finish %s: %w", taskID, err)
	}
	s.poke()
	return nil
}

func (s *Shipper) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// streamOf reads a log file's name: its stream and whether it is a
// rotated file (<stream>-<time>.log) or the current one (<stream>.log).
func streamOf(name string) (stream string, rotated, ok bool) {
	for _, st := range []string{StreamStdout, StreamStderr} {
		if name == st+".log" {
			return st, false, true
		}
		if strings.HasPrefix(name, st+"-") && strings.HasSuffix(name, ".log") {
			return st, true, true
		}
	}
	return "", false, false
}

// scanLocked records t's rotated files not yet recorded, oldest first,
// and with final its current files too, in one transaction.
func (s *Shipper) scanLocked(t *taskRec, final bool) error {
	ents, err := os.ReadDir(t.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("logship: read %s: %w", t.Dir, err)
	}
	known := map[string]bool{}
	for _, f := range s.files[t.ID] {
		known[f.Name] = true
	}
	var names []string
	for _, e := range ents {
		_, rotated, ok := streamOf(e.Name())
		if ok && (rotated || final) && !known[e.Name()] {
			names = append(names, e.Name())
		}
	}
	// Rotated files sort by the time in their names; the current file
	// (stdout.log) sorts after them ('.' < '-' is false: '-' 0x2d, '.'
	// 0x2e), so it gets the last number.
	slices.Sort(names)
	if len(names) == 0 {
		return nil
	}
	next := *t
	next.NextSeq = map[string]int{}
	for k, v := range t.NextSeq {
		next.NextSeq[k] = v
	}
	var add []*fileRec
	for _, name := range names {
		stream, rotated, _ := streamOf(name)
		fi, err := os.Lstat(filepath.Join(t.Dir, name))
		if err != nil {
			continue
		}
		if !regularSingle(fi) {
			// Not a file the logger wrote: a link could point anywhere
			// on the host. Never read, never shipped.
			if s.refused[t.ID+"/"+name] {
				continue
			}
			s.refused[t.ID+"/"+name] = true
			s.log.Warn("not shipping a log entry that is not a plain file", "task", t.ID, "name", name, "mode", fi.Mode().String())
			s.m.Refused.Inc()
			continue
		}
		f := &fileRec{Task: t.ID, Name: name, Stream: stream, Size: fi.Size(), Rotated: fi.ModTime(), Final: !rotated}
		switch {
		case next.OptOut:
			f.State = StateSkipped
			s.m.Skipped.WithLabelValues("opt_out").Inc()
		case next.MaxBytes > 0 && next.Assigned+f.Size > next.MaxBytes:
			f.State = StateSkipped
			s.m.Skipped.WithLabelValues("cap").Inc()
			s.log.Info("log file over the task's shipping cap; not shipped", "task", t.ID, "file", name, "cap", next.MaxBytes)
		default:
			f.State = StatePending
			f.Seq = next.NextSeq[stream]
			next.NextSeq[stream]++
			next.Assigned += f.Size
			f.Gzip = s.cfg.Gzip
			f.Key = Key(KeyRef{Prefix: s.cfg.Prefix, App: t.App, Job: t.Job, Task: t.ID, Stream: stream, Seq: f.Seq, Gzip: f.Gzip})
		}
		add = append(add, f)
	}
	err = s.db.update(func(bk *bolt.Bucket) error {
		for _, f := range add {
			if err := put(bk, fileKey(f.Task, f.Name), f); err != nil {
				return err
			}
		}
		return put(bk, taskKey(t.ID), &next)
	})
	if err != nil {
		return fmt.Errorf("logship: record files of %s: %w", t.ID, err)
	}
	*t = next
	s.files[t.ID] = append(s.files[t.ID], add...)
	return nil
}

// regularSingle is a plain file with one link: what the logger writes.
// Symbolic links, devices, fifos and hard links to other files are not.
func regularSingle(fi os.FileInfo) bool {
	if !fi.Mode().IsRegular() {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return !ok || st.Nlink == 1
}

// fileDir is where f's bytes are.
func (s *Shipper) fileDir(t *taskRec, f *fileRec) string {
	if f.Spooled {
		return filepath.Join(s.cfg.SpoolDir, t.ID)
	}
	return t.Dir
}

// openLog opens one recorded file for reading, refusing anything but the
// plain file it was when recorded.
func openLog(dir, name string) (*os.File, os.FileInfo, error) {
	p := filepath.Join(dir, name)
	fi, err := os.Lstat(p)
	if err != nil {
		return nil, nil, err
	}
	if !regularSingle(fi) {
		return nil, nil, fmt.Errorf("%w: %s", errNotPlain, p)
	}
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, nil, err
	}
	got, err := f.Stat()
	if err != nil || !os.SameFile(fi, got) {
		f.Close()
		return nil, nil, fmt.Errorf("%w: %s changed while opened", errNotPlain, p)
	}
	return f, got, nil
}

// spoolLocked copies t's unshipped files out of its log dir.
func (s *Shipper) spoolLocked(t *taskRec) error {
	dst := filepath.Join(s.cfg.SpoolDir, t.ID)
	for _, f := range s.files[t.ID] {
		if f.State != StatePending || f.Spooled || f.Removed {
			continue
		}
		if err := os.MkdirAll(dst, 0o700); err != nil {
			return fmt.Errorf("logship: spool: %w", err)
		}
		if err := copyFile(t.Dir, f.Name, dst, f.Size); err != nil {
			return fmt.Errorf("logship: spool %s: %w", f.Name, err)
		}
		f.Spooled = true
		if err := s.db.putFile(f); err != nil {
			f.Spooled = false
			return fmt.Errorf("logship: spool %s: %w", f.Name, err)
		}
	}
	return nil
}

func copyFile(dir, name, dst string, size int64) error {
	in, _, err := openLog(dir, name)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(dst, ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, io.LimitReader(in, size)); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dst, name))
}
