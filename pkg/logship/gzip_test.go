package logship

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/klauspost/compress/gzip"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func gunzip(t *testing.T, b string) string {
	t.Helper()
	zr, err := gzip.NewReader(strings.NewReader(b))
	if err != nil {
		t.Fatalf("not gzip: %v", err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("gunzip: %v", err)
	}
	return string(out)
}

// noise is n bytes that gzip cannot shrink much, the same for a seed.
func noise(seed uint64, n int) string {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return string(b)
}

// With Gzip, files are shipped compressed under .gz keys, with their size
// before compression in the metadata, the final one marked final; the
// compressed copies are gone once shipped; the metrics count the bytes
// written and the (fewer) bytes sent.
func TestShipsGzip(t *testing.T) {
	b := newBed(t)
	b.cfg.Gzip = true
	s := b.shipper()
	ctx := context.Background()
	s.Track(info("t1"))
	one := strings.Repeat("a line of a log that repeats itself\n", 1000)
	b.rotate("t1", one)
	b.write("t1", "stdout.log", "last\n")
	if err := s.Finish("t1"); err != nil {
		t.Fatal(err)
	}
	s.Round(ctx)
	if diff := cmp.Diff([]string{"p/api/j1/t1/stdout.0.gz", "p/api/j1/t1/stdout.1.gz"}, b.s3.list()); diff != "" {
		t.Fatalf("keys (-want +got):\n%s", diff)
	}
	if got := gunzip(t, b.s3.get("p/api/j1/t1/stdout.0.gz")); got != one {
		t.Errorf("stdout.0 holds %d bytes, want %d", len(got), len(one))
	}
	if got := gunzip(t, b.s3.get("p/api/j1/t1/stdout.1.gz")); got != "last\n" {
		t.Errorf("stdout.1 = %q", got)
	}
	if diff := cmp.Diff(map[string]string{MetaBytes: "36000"}, b.s3.meta["p/api/j1/t1/stdout.0.gz"]); diff != "" {
		t.Errorf("metadata (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"p/api/j1/t1/stdout.1.gz"}, b.s3.finals()); diff != "" {
		t.Errorf("finals (-want +got):\n%s", diff)
	}
	shipped, sent := testutil.ToFloat64(b.m.ShippedBytes), testutil.ToFloat64(b.m.UploadedBytes)
	if shipped != float64(len(one)+5) || sent <= 0 || sent > shipped/10 {
		t.Errorf("shipped %v bytes, sent %v: want %d shipped, and sent a fraction of it", shipped, sent, len(one)+5)
	}
	if gz, _ := filepath.Glob(filepath.Join(b.logDir, ".logship", "t1", "*.gz")); len(gz) != 0 {
		t.Errorf("compressed copies left: %v", gz)
	}
}

// A multipart upload of a compressed file, cut off by an agent kill,
// resumes with the parts S3 has, from the same compressed copy; if the
// copy is gone meanwhile, the old upload is aborted and a new one sends
// a new copy whole. Either way the object is the file, once.
func TestGzipResumesMultipartAfterKill(t *testing.T) {
	for _, lose := range []bool{false, true} {
		t.Run(map[bool]string{false: "copy kept", true: "copy lost"}[lose], func(t *testing.T) {
			b := newBed(t)
			b.cfg.Gzip = true
			s := b.shipper()
			ctx := context.Background()
			s.Track(info("t1"))
			big := noise(7, 13<<20) // compresses to about as much: 3 parts
			b.rotate("t1", big)
			parts := 0
			b.s3.fail = func(op string) error {
				if op == "part" {
					if parts++; parts == 2 {
						return errors.New("connection reset") // the agent dies here
					}
				}
				return nil
			}
			s.Round(ctx)
			if len(b.s3.list()) != 0 {
				t.Fatalf("object complete after a failed part: %v", b.s3.list())
			}
			if lose {
				gz, _ := filepath.Glob(filepath.Join(b.logDir, ".logship", "t1", "*.gz"))
				if len(gz) != 1 {
					t.Fatalf("compressed copies: %v", gz)
				}
				os.Remove(gz[0])
			}
			b.s3.fail = nil
			s = b.restart()
			s.Round(ctx)
			if got := gunzip(t, b.s3.get("p/api/j1/t1/stdout.0.gz")); got != big {
				t.Fatalf("object holds %d bytes, want %d", len(got), len(big))
			}
			wantCreate, wantAbort := 1, 0
			if lose {
				wantCreate, wantAbort = 2, 1
			}
			if n := b.s3.count("create"); n != wantCreate {
				t.Errorf("multipart uploads started: %d, want %d", n, wantCreate)
			}
			if n := b.s3.count("abort"); n != wantAbort {
				t.Errorf("multipart uploads aborted: %d, want %d", n, wantAbort)
			}
			if !lose && b.s3.count("part") != 4 { // 1 ok + 1 failed, then the 2 missing
				t.Errorf("parts sent: %d, want 4", b.s3.count("part"))
			}
			if n := b.s3.count("complete"); n != 1 {
				t.Errorf("completed %d times", n)
			}
		})
	}
}

// An upload of a compressed file that reached S3 but whose success the
// killed agent never recorded is not sent again: the object's
// uncompressed size in its metadata is the recorded one.
func TestGzipNoSecondUploadAfterUnrecordedSuccess(t *testing.T) {
	b := newBed(t)
	b.cfg.Gzip = true
	s := b.shipper()
	ctx := context.Background()
	s.Track(info("t1"))
	b.rotate("t1", "hello\n")
	b.s3.fail = func(op string) error {
		if op == "put" && b.s3.objects["p/!jobs/j1/api"] != nil {
			var zb bytes.Buffer
			compress(&zb, strings.NewReader("hello\n"))
			b.s3.objects["p/api/j1/t1/stdout.0.gz"] = zb.Bytes()
			b.s3.meta["p/api/j1/t1/stdout.0.gz"] = map[string]string{MetaBytes: "6"}
			return errors.New("reply lost")
		}
		return nil
	}
	s.Round(ctx)
	b.s3.fail = nil
	s = b.restart()
	s.Round(ctx)
	if n := b.s3.count("put p/api/j1/t1/stdout.0.gz"); n != 1 {
		t.Errorf("puts = %d, want 1 (the head found the object)", n)
	}
	if n := testutil.ToFloat64(b.m.BacklogFiles); n != 0 {
		t.Errorf("backlog = %v, want 0", n)
	}
	// An object of the same key with another size (not this attempt's)
	// is replaced.
	b.rotate("t1", "second\n")
	b.s3.fail = func(op string) error {
		if op == "put" {
			b.s3.objects["p/api/j1/t1/stdout.1.gz"] = []byte("junk")
			b.s3.meta["p/api/j1/t1/stdout.1.gz"] = map[string]string{MetaBytes: "4"}
			return errors.New("reply lost")
		}
		return nil
	}
	s.Round(ctx)
	b.s3.fail = nil
	s = b.restart()
	s.Round(ctx)
	if got := gunzip(t, b.s3.get("p/api/j1/t1/stdout.1.gz")); got != "second\n" {
		t.Errorf("stdout.1 = %q", got)
	}
}

// Durability before compression: when the compressed copy cannot be
// written (the spool is not writable, the disk is full), a file never
// sent is shipped as it is, under the plain key, not held back.
func TestGzipNoRoomShipsPlain(t *testing.T) {
	b := newBed(t)
	b.cfg.Gzip = true
	notDir := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notDir, nil, 0o600)
	b.cfg.SpoolDir = filepath.Join(notDir, "spool") // ENOTDIR
	s := b.shipper()
	ctx := context.Background()
	s.Track(info("t1"))
	b.rotate("t1", "plain\n")
	s.Round(ctx)
	if diff := cmp.Diff([]string{"p/api/j1/t1/stdout.0"}, b.s3.list()); diff != "" {
		t.Fatalf("keys (-want +got):\n%s", diff)
	}
	if got := b.s3.get("p/api/j1/t1/stdout.0"); got != "plain\n" {
		t.Errorf("object = %q", got)
	}
	// The record says so: a restart does not ship it again, under either key.
	s = b.restart()
	s.Round(ctx)
	if n := b.s3.count("put p/api/j1/t1/stdout.0"); n != 1 {
		t.Errorf("puts = %d", n)
	}
}

// A file recorded before compression was turned on keeps its plain key;
// new ones are compressed.
func TestGzipTurnedOnKeepsRecordedKeys(t *testing.T) {
	b := newBed(t)
	s := b.shipper()
	ctx := context.Background()
	s.Track(info("t1"))
	b.rotate("t1", "before\n")
	b.s3.fail = func(string) error { return errors.New("down") }
	s.Round(ctx) // recorded, not shipped
	b.s3.fail = nil
	b.cfg.Gzip = true
	s = b.restart()
	b.rotate("t1", "after\n")
	s.Round(ctx)
	if diff := cmp.Diff([]string{"p/api/j1/t1/stdout.0", "p/api/j1/t1/stdout.1.gz"}, b.s3.list()); diff != "" {
		t.Fatalf("keys (-want +got):\n%s", diff)
	}
	if got := b.s3.get("p/api/j1/t1/stdout.0"); got != "before\n" {
		t.Errorf("stdout.0 = %q", got)
	}
}

// The job index: one entry per job and application, put before the first
// file of each of its tasks (so it is there whenever a file is), once in
// a process; none for a task not from the scheduler or one that ships
// nothing; an entry that cannot be put holds the task's files back, and
// is retried.
func TestJobIndex(t *testing.T) {
	b := newBed(t)
	s := b.shipper()
	ctx := context.Background()
	s.Track(info("t1"))
	s.Track(info("t2"))
	s.Track(TaskInfo{ID: "t3", App: "web", Job: "j/2", Labels: map[string]string{}})
	s.Track(TaskInfo{ID: "manual", Labels: map[string]string{}})
	for _, id := range []string{"t1", "t2", "t3", "manual"} {
		b.rotate(id, id+"\n")
	}
	b.s3.fail = func(op string) error { return errors.New("down") }
	s.Round(ctx)
	b.s3.fail = func(op string) error {
		if op == "put" && b.s3.objects["p/!jobs/j1/api"] == nil { // called under the fake's lock
			return errors.New("index put refused")
		}
		return nil
	}
	s.nextTry = b.now // past the backoff
	s.Round(ctx)
	if got := b.s3.list(); len(got) != 0 {
		t.Errorf("files shipped before their job's index entry: %v", got)
	}
	b.s3.fail = nil
	s.nextTry = b.now
	s.Round(ctx)
	if diff := cmp.Diff([]string{"p/!jobs/j%2F2/web", "p/!jobs/j1/api"}, b.s3.index()); diff != "" {
		t.Errorf("index (-want +got):\n%s", diff)
	}
	if n := b.s3.count("put p/!jobs/j1/api"); n != 3 { // down, refused, then once for t1 and t2
		t.Errorf("index puts of j1: %d, want 3", n)
	}
	if len(b.s3.list()) != 4 {
		t.Errorf("shipped: %v", b.s3.list())
	}
	// A restarted agent does not put it again for a task it recorded.
	s = b.restart()
	b.rotate("t1", "more\n")
	s.Round(ctx)
	if n := b.s3.count("put p/!jobs/j1/api"); n != 3 {
		t.Errorf("index puts of j1 after a restart: %d, want 3", n)
	}
	if got, want := JobIndexKey("p", "web", "j/2"), "p/!jobs/j%2F2/web"; got != want {
		t.Errorf("JobIndexKey = %q, want %q", got, want)
	}
}

// A small compressed copy (sent by one PUT, never synced) left by a
// killed agent is not trusted after the restart, even with the recorded
// size: it is made again, so what is sent is the file.
func TestGzipSmallCopyNotTrustedAfterRestart(t *testing.T) {
	b := newBed(t)
	b.cfg.Gzip = true
	s := b.shipper()
	ctx := context.Background()
	s.Track(info("t1"))
	b.rotate("t1", "the real line\n")
	b.s3.fail = func(op string) error {
		if op == "put" && b.s3.objects["p/!jobs/j1/api"] != nil {
			return errors.New("killed")
		}
		return nil
	}
	s.Round(ctx)
	gz, _ := filepath.Glob(filepath.Join(b.logDir, ".logship", "t1", "*.gz"))
	if len(gz) != 1 {
		t.Fatalf("compressed copies: %v", gz)
	}
	// What a crash without fsync can leave: the size, not the bytes.
	fi, _ := os.Stat(gz[0])
	os.WriteFile(gz[0], make([]byte, fi.Size()), 0o600)
	b.s3.fail = nil
	s = b.restart()
	s.Round(ctx)
	if got := gunzip(t, b.s3.get("p/api/j1/t1/stdout.0.gz")); got != "the real line\n" {
		t.Errorf("object = %q", got)
	}
}
