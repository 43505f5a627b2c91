package tasklog

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func writeLog(t *testing.T, dir, name, data string, mtime time.Time) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if !mtime.IsZero() {
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
}

func readAll(t *testing.T, dir string, o ReadOptions) (string, error) {
	t.Helper()
	var b strings.Builder
	err := Read(context.Background(), dir, o, func(p []byte) error {
		if len(p) > ChunkSize {
			t.Errorf("a chunk of %d bytes", len(p))
		}
		b.Write(p)
		return nil
	})
	return b.String(), err
}

// TestReadOrderAndSince: rotated files oldest first, then the current
// one; since skips whole files last written before it; each stream has
// its own files.
func TestReadOrderAndSince(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	writeLog(t, dir, "stdout-2026-01-01T00-00-02.000.log", "two\n", now.Add(-2*time.Hour))
	writeLog(t, dir, "stdout-2026-01-01T00-00-01.000.log", "one\n", now.Add(-3*time.Hour))
	writeLog(t, dir, "stdout.log", "three\n", now.Add(-time.Minute))
	writeLog(t, dir, "stderr.log", "oops\n", now)
	big := strings.Repeat("x", 3*ChunkSize+5)
	writeLog(t, dir, "stderr-2026-01-01T00-00-01.000.log", big, now.Add(-time.Hour))
	tests := []struct {
		name string
		o    ReadOptions
		want string
	}{
		{"all stdout", ReadOptions{}, "one\ntwo\nthree\n"},
		{"since 150m", ReadOptions{Since: now.Add(-150 * time.Minute)}, "two\nthree\n"},
		{"since 10m", ReadOptions{Since: now.Add(-10 * time.Minute)}, "three\n"},
		{"since 30s", ReadOptions{Since: now.Add(-30 * time.Second)}, ""},
		{"stderr", ReadOptions{Stream: "stderr"}, big + "oops\n"},
	}
	for _, tt := range tests {
		got, err := readAll(t, dir, tt.o)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if got != tt.want {
			t.Errorf("%s: %d bytes %q, want %d bytes", tt.name, len(got), got[:min(len(got), 40)], len(tt.want))
		}
	}
	if _, err := readAll(t, dir, ReadOptions{Stream: "../x"}); !errors.Is(err, ErrNoStream) {
		t.Errorf("stream ../x: %v", err)
	}
	if got, err := readAll(t, filepath.Join(dir, "none"), ReadOptions{}); err != nil || got != "" {
		t.Errorf("no directory: %q, %v", got, err)
	}
}

// TestReadFollowsAcrossRotation: a follower sees what is appended, then
// the file that replaces the current one, and stops once the task has
// ended and the file is drained.
func TestReadFollowsAcrossRotation(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, "stdout.log", "a\n", time.Time{})
	var ended atomic.Bool
	var mu sync.Mutex
	var got []string
	seen := make(chan struct{}, 16)
	done := make(chan error, 1)
	go func() {
		done <- Read(context.Background(), dir, ReadOptions{Follow: true, Ended: ended.Load, Poll: 5 * time.Millisecond}, func(p []byte) error {
			mu.Lock()
			got = append(got, string(p))
			mu.Unlock()
			seen <- struct{}{}
			return nil
		})
	}()
	<-seen
	f, err := os.OpenFile(filepath.Join(dir, "stdout.log"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("b\n")
	<-seen
	f.WriteString("c\n") // written just before the rotation: still read from the renamed file
	f.Close()
	if err := os.Rename(filepath.Join(dir, "stdout.log"), filepath.Join(dir, "stdout-2026-01-01T00-00-00.000.log")); err != nil {
		t.Fatal(err)
	}
	writeLog(t, dir, "stdout.log", "d\n", time.Time{})
	<-seen
	<-seen
	ended.Store(true)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the follower did not stop after the task ended")
	}
	if diff := cmp.Diff("a\nb\nc\nd\n", strings.Join(got, "")); diff != "" {
		t.Errorf("followed (-want +got):\n%s", diff)
	}
}

// TestReadClosesOnCancel: a follower whose reader goes away (ctx ends
// while it waits for growth, or send fails) returns and leaves no file
// open.
func TestReadClosesOnCancel(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, "stdout.log", strings.Repeat("y", 4*ChunkSize), time.Time{})
	before := openFiles(t, dir)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Read(ctx, dir, ReadOptions{Follow: true, Poll: 5 * time.Millisecond}, func([]byte) error { return nil })
	}()
	time.Sleep(50 * time.Millisecond)
	if openFiles(t, dir) != before+1 {
		t.Errorf("the follower holds %d files of the log dir, want 1", openFiles(t, dir)-before)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Read: %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the follower did not stop")
	}
	if n := openFiles(t, dir); n != before {
		t.Errorf("%d files of the log dir still open", n-before)
	}
	boom := errors.New("caller gone")
	if err := Read(context.Background(), dir, ReadOptions{Follow: true}, func([]byte) error { return boom }); !errors.Is(err, boom) {
		t.Errorf("send failing: %v", err)
	}
	if n := openFiles(t, dir); n != before {
		t.Errorf("%d files of the log dir still open after send failed", n-before)
	}
}

// openFiles counts this process's descriptors open on files in dir.
func openFiles(t *testing.T, dir string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if p, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && strings.HasPrefix(p, dir+"/") {
			n++
		}
	}
	return n
}
