package logship

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"

	"github.com/titus-agent/titus-agent/pkg/backoff"
	"github.com/titus-agent/titus-agent/pkg/task"
)

type bed struct {
	t      *testing.T
	logDir string
	dbPath string
	db     *bolt.DB
	s3     *fakeS3
	cfg    Config
	now    time.Time
	m      *Metrics
}

func newBed(t *testing.T) *bed {
	b := &bed{t: t, logDir: t.TempDir(), s3: newFakeS3(), now: time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)}
	b.dbPath = filepath.Join(t.TempDir(), "tasks.db")
	b.cfg = Config{Bucket: "logs", Prefix: "p", LogDir: b.logDir, Interval: time.Hour,
		MultipartThreshold: 12 << 20, PartSize: 5 << 20, Disk: fakeDisk{func() float64 { return 0.5 }},
		Backoff: backoff.Policy{Base: time.Second, Max: time.Minute, Jitter: backoff.Full},
		Now:     func() time.Time { return b.now }}
	b.open()
	return b
}

func (b *bed) open() {
	db, err := bolt.Open(b.dbPath, 0o600, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	b.db = db
	b.t.Cleanup(func() { db.Close() })
}

// restart closes the store and makes a new shipper over it, as an agent
// killed and started again.
func (b *bed) restart() *Shipper {
	b.db.Close()
	b.open()
	return b.shipper()
}

func (b *bed) shipper() *Shipper {
	b.m = NewMetrics(prometheus.NewRegistry())
	s, err := New(b.cfg, b.s3, b.db, b.m)
	if err != nil {
		b.t.Fatal(err)
	}
	return s
}

var clock = time.Date(2026, 12, 3, 8, 0, 0, 0, time.UTC)

// rotate writes a rotated file of task id as lumberjack names it.
func (b *bed) rotate(id, content string) string {
	clock = clock.Add(time.Second)
	name := "stdout-" + clock.Format("2006-01-02T15-04-05.000") + ".log"
	b.write(id, name, content)
	return name
}

func (b *bed) write(id, name, content string) {
	dir := filepath.Join(b.logDir, id)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		b.t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o640); err != nil {
		b.t.Fatal(err)
	}
	os.Chtimes(p, clock, clock)
}

func info(id string) TaskInfo {
	return TaskInfo{ID: id, App: "api", Job: "j1", Labels: map[string]string{}}
}

func TestShipsRotatedThenFinal(t *testing.T) {
	b := newBed(t)
	s := b.shipper()
	ctx := context.Background()
	if err := s.Track(info("t1")); err != nil {
		t.Fatal(err)
	}
	b.rotate("t1", "one\n")
	b.rotate("t1", "two\n")
	b.write("t1", "stdout.log", "three\n")
	s.Round(ctx)
	if diff := cmp.Diff([]string{"p/api/j1/t1/stdout.0", "p/api/j1/t1/stdout.1"}, b.s3.list()); diff != "" {
		t.Errorf("after rotation (-want +got):\n%s", diff)
	}
	b.rotate("t1", "three and a half\n")
	if err := s.Finish("t1"); err != nil {
		t.Fatal(err)
	}
	s.Round(ctx)
	want := map[string]string{"p/api/j1/t1/stdout.0": "one\n", "p/api/j1/t1/stdout.1": "two\n", "p/api/j1/t1/stdout.2": "three and a half\n", "p/api/j1/t1/stdout.3": "three\n"}
	got := map[string]string{}
	for _, k := range b.s3.list() {
		got[k] = b.s3.get(k)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("bucket (-want +got):\n%s", diff)
	}
	// Only the task's last file is marked final (followers stop there).
	if diff := cmp.Diff([]string{"p/api/j1/t1/stdout.3"}, b.s3.finals()); diff != "" {
		t.Errorf("objects marked final (-want +got):\n%s", diff)
	}
	if n := testutil.ToFloat64(b.m.ShippedFiles); n != 4 {
		t.Errorf("shipped files = %v, want 4", n)
	}
	if n := testutil.ToFloat64(b.m.ShippedBytes); n != float64(len("one\ntwo\nthree and a half\nthree\n")) {
		t.Errorf("shipped bytes = %v", n)
	}
	// Everything shipped: a second Finish or round uploads nothing again.
	puts := b.s3.count("put")
	s.Finish("t1")
	s.Round(ctx)
	if b.s3.count("put") != puts {
		t.Errorf("uploads after the end: %d, want %d", b.s3.count("put"), puts)
	}
	// The task stays recorded while its files are on the host (disk
	// pressure needs the record to delete them), and is forgotten once
	// they are gone.
	if len(s.tasks) != 1 {
		t.Fatalf("tasks tracked: %v", s.tasks)
	}
	full := true
	s.cfg.Disk = fakeDisk{func() float64 {
		if full {
			return 0.9
		}
		return 0.5
	}}
	s.Round(ctx)
	if got := b.localFiles("t1"); len(got) != 0 {
		t.Errorf("shipped files left under pressure: %v", got)
	}
	full = false
	s.Round(ctx)
	if len(s.tasks) != 0 {
		t.Errorf("tasks still tracked: %v", s.tasks)
	}
	if b.s3.count("put") != puts {
		t.Errorf("uploads after the end: %d, want %d", b.s3.count("put"), puts)
	}
}

// A multipart upload cut off by an agent kill resumes with the parts S3
// has, and the object is whole.
func TestResumesMultipartAfterKill(t *testing.T) {
	b := newBed(t)
	s := b.shipper()
	ctx := context.Background()
	s.Track(info("t1"))
	big := strings.Repeat("0123456789abcdef", (13<<20)/16) // 13 MiB: 3 parts of 5,5,3
	b.rotate("t1", big)
	parts := 0
	b.s3.fail = func(op string) error {
		if op == "part" {
			parts++
			if parts == 2 {
				return errors.New("connection reset") // the agent dies here
			}
		}
		return nil
	}
	s.Round(ctx)
	if len(b.s3.list()) != 0 {
		t.Fatalf("object complete after a failed part: %v", b.s3.list())
	}
	b.s3.fail = nil
	s = b.restart()
	s.Round(ctx)
	if got := b.s3.get("p/api/j1/t1/stdout.0"); got != big {
		t.Fatalf("object has %d bytes, want %d", len(got), len(big))
	}
	if n := b.s3.count("create"); n != 1 {
		t.Errorf("multipart uploads started: %d, want 1 (resumed)", n)
	}
	if n := b.s3.count("part"); n != 4 { // 1 ok + 1 failed, then the 2 missing
		t.Errorf("parts sent: %d, want 4", n)
	}
}

// An upload that reached S3 but whose success the killed agent never
// recorded is not sent again.
func TestNoSecondUploadAfterUnrecordedSuccess(t *testing.T) {
	b := newBed(t)
	s := b.shipper()
	ctx := context.Background()
	s.Track(info("t1"))
	b.rotate("t1", "hello\n")
	// The put lands, then the agent dies before recording it: simulate
	// by failing the next call (the state write comes after the put, so
	// fail the put's reply instead while keeping its effect).
	b.s3.fail = func(op string) error {
		if op == "put" && b.s3.objects["p/!jobs/j1/api"] != nil {
			b.s3.objects["p/api/j1/t1/stdout.0"] = []byte("hello\n")
			return errors.New("reply lost")
		}
		return nil
	}
	s.Round(ctx)
	b.s3.fail = nil
	s = b.restart()
	s.Round(ctx)
	if n := b.s3.count("put p/api/j1/t1/stdout.0"); n != 1 {
		t.Errorf("puts = %d, want 1 (the head found the object)", n)
	}
	if n := testutil.ToFloat64(b.m.BacklogFiles); n != 0 {
		t.Errorf("backlog = %v, want 0", n)
	}
}

func TestOutageBacksOffThenRecovers(t *testing.T) {
	b := newBed(t)
	s := b.shipper()
	ctx := context.Background()
	s.Track(info("t1"))
	b.rotate("t1", "a\n")
	down := true
	b.s3.fail = func(string) error {
		if down {
			return errors.New("dial tcp: connection refused")
		}
		return nil
	}
	s.Round(ctx)
	if testutil.ToFloat64(b.m.UploadErrors) != 1 || !s.nextTry.After(b.now.Add(-time.Nanosecond)) {
		t.Fatalf("errors %v, next try %v", testutil.ToFloat64(b.m.UploadErrors), s.nextTry)
	}
	calls := len(b.s3.calls)
	// Within the backoff: no call at all.
	b.now = b.now.Add(-time.Millisecond + 0)
	s.nextTry = b.now.Add(time.Hour)
	s.Round(ctx)
	if len(b.s3.calls) != calls {
		t.Errorf("called S3 while backing off")
	}
	if testutil.ToFloat64(b.m.BacklogFiles) != 1 || testutil.ToFloat64(b.m.OldestAge) <= 0 {
		t.Errorf("backlog %v, oldest age %v", testutil.ToFloat64(b.m.BacklogFiles), testutil.ToFloat64(b.m.OldestAge))
	}
	down = false
	b.now = s.nextTry
	s.Round(ctx)
	if diff := cmp.Diff([]string{"p/api/j1/t1/stdout.0"}, b.s3.list()); diff != "" {
		t.Errorf("after recovery (-want +got):\n%s", diff)
	}
	if s.boff.Attempts() != 0 {
		t.Errorf("backoff not reset after success")
	}
}

// The backoff's delays are jittered and grow: a fleet does not retry in
// lockstep.
func TestBackoffJittered(t *testing.T) {
	b := newBed(t)
	s := b.shipper()
	seen := map[time.Duration]bool{}
	for range 20 {
		s.boff.Reset()
		seen[s.boff.Next()] = true
	}
	if len(seen) < 5 {
		t.Errorf("first delays not jittered: %v", seen)
	}
}

// Attack: a log dir entry that is a link (to a host file) or a hard link
// is never read; a task id with a path in it is refused; app and job
// labels cannot reach another task's keys.
func TestAttackLinksAndNames(t *testing.T) {
	b := newBed(t)
	s := b.shipper()
	ctx := context.Background()
	secret := filepath.Join(t.TempDir(), "shadow")
	os.WriteFile(secret, []byte("root:secret\n"), 0o600)
	for _, id := range []string{"../victim", "a/b", "..", ".", "", ".logship"} {
		if err := s.Track(TaskInfo{ID: id}); !errors.Is(err, ErrBadTaskID) {
			t.Errorf("Track(%q) = %v, want ErrBadTaskID", id, err)
		}
	}
	if err := s.Track(TaskInfo{ID: "evil", App: "api/j1/victim", Job: "..", Labels: map[string]string{}}); err != nil {
		t.Fatal(err)
	}
	b.rotate("evil", "mine\n")
	dir := filepath.Join(b.logDir, "evil")
	if err := os.Symlink(secret, filepath.Join(dir, "stdout-2000-01-01T00-00-00.000.log")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(secret, filepath.Join(dir, "stdout-2000-01-01T00-00-01.000.log")); err != nil {
		t.Fatal(err)
	}
	os.Symlink(secret, filepath.Join(dir, "stdout.log"))
	s.Round(ctx)
	s.Finish("evil")
	s.Round(ctx)
	for _, k := range b.s3.list() {
		if strings.Contains(b.s3.get(k), "secret") {
			t.Errorf("%s holds the host file", k)
		}
	}
	if diff := cmp.Diff([]string{"p/api%2Fj1%2Fvictim/%2E%2E/evil/stdout.0"}, b.s3.list()); diff != "" {
		t.Errorf("keys (-want +got):\n%s", diff)
	}
	if n := testutil.ToFloat64(b.m.Refused); n != 3 {
		t.Errorf("refused entries = %v, want 3", n)
	}
}

// A file swapped for a link after it was recorded is not read either.
func TestAttackSwapAfterRecord(t *testing.T) {
	b := newBed(t)
	s := b.shipper()
	secret := filepath.Join(t.TempDir(), "shadow")
	os.WriteFile(secret, []byte("root:secret\n"), 0o600)
	s.Track(info("t1"))
	name := b.rotate("t1", "mine\n")
	b.s3.fail = func(string) error { return errors.New("down") }
	s.Round(context.Background())
	p := filepath.Join(b.logDir, "t1", name)
	os.Remove(p)
	os.Symlink(secret, p)
	b.s3.fail = nil
	s.nextTry = time.Time{}
	s.Round(context.Background())
	for _, k := range b.s3.list() {
		if strings.Contains(b.s3.get(k), "secret") {
			t.Errorf("%s holds the host file", k)
		}
	}
	if n := testutil.ToFloat64(b.m.Refused); n != 1 {
		t.Errorf("refused = %v, want 1", n)
	}
	// It does not block the others.
	b.rotate("t1", "next\n")
	s.nextTry = time.Time{}
	s.Round(context.Background())
	if got := b.s3.get("p/api/j1/t1/stdout.1"); got != "next\n" {
		t.Errorf("next file = %q", got)
	}
}

func TestOptOutAndCap(t *testing.T) {
	b := newBed(t)
	s := b.shipper()
	ctx := context.Background()
	s.Track(TaskInfo{ID: "quiet", Labels: map[string]string{task.LabelLogShip: "false"}})
	s.Track(TaskInfo{ID: "capped", Labels: map[string]string{task.LabelLogShipMaxMiB: "1"}})
	if err := s.Track(TaskInfo{ID: "bad", Labels: map[string]string{task.LabelLogShipMaxMiB: "lots"}}); err == nil || !strings.Contains(err.Error(), "titus.logs/max-mib") {
		t.Errorf("Track with a bad cap = %v", err)
	}
	b.rotate("quiet", "x\n")
	half := strings.Repeat("y", 600<<10)
	b.rotate("capped", half)
	b.rotate("capped", half) // crosses 1 MiB: not shipped
	b.rotate("capped", "small\n")
	s.Round(ctx)
	if diff := cmp.Diff([]string{"p/_/_/capped/stdout.0", "p/_/_/capped/stdout.1"}, b.s3.list()); diff != "" {
		b.t.Errorf("keys (-want +got):\n%s", diff)
	}
	if got := b.s3.get("p/_/_/capped/stdout.1"); got != "small\n" {
		t.Errorf("second shipped file = %.20q", got)
	}
	if n := testutil.ToFloat64(b.m.Skipped.WithLabelValues("opt_out")); n != 1 {
		t.Errorf("skipped opt-out = %v", n)
	}
	if n := testutil.ToFloat64(b.m.Skipped.WithLabelValues("cap")); n != 1 {
		t.Errorf("skipped cap = %v", n)
	}
}

func init() { _ = fmt.Sprint }

// A task's final file goes up marked final however it is uploaded (here
// in parts); its rotated files are not.
func TestFinalMarkedInMultipart(t *testing.T) {
	b := newBed(t)
	s := b.shipper()
	ctx := context.Background()
	s.Track(info("t1"))
	b.rotate("t1", "early\n")
	b.write("t1", "stdout.log", strings.Repeat("0123456789abcdef", (13<<20)/16))
	if err := s.Finish("t1"); err != nil {
		t.Fatal(err)
	}
	s.Round(ctx)
	if n := b.s3.count("create"); n != 1 {
		t.Fatalf("multipart uploads: %d, want 1", n)
	}
	if diff := cmp.Diff([]string{"p/api/j1/t1/stdout.1"}, b.s3.finals()); diff != "" {
		t.Errorf("objects marked final (-want +got):\n%s", diff)
	}
}
