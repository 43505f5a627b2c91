package runtime

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestReadCounter(t *testing.T) {
	p := filepath.Join(t.TempDir(), "memory.oom_control")
	if err := os.WriteFile(p, []byte("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if n, ok := readCounter(p, "oom_kill"); !ok || n != 2 {
		t.Errorf("oom_kill = %d, %v; want 2, true", n, ok)
	}
	if _, ok := readCounter(p, "missing"); ok {
		t.Error("missing key found")
	}
	if _, ok := readCounter(filepath.Join(t.TempDir(), "nope"), "oom_kill"); ok {
		t.Error("missing file read")
	}
}

func TestOOMWatcherLateEvent(t *testing.T) {
	w := newOOMWatcher()
	go func() {
		time.Sleep(20 * time.Millisecond)
		w.record("other")
		w.record("t1")
	}()
	if !w.waitFor(context.Background(), "t1", time.Minute) {
		t.Fatal("late OOM event not seen")
	}
	w.forget("t1")
	if ok, _ := w.seen("t1"); ok {
		t.Error("forgotten record still seen")
	}
	if w.waitFor(context.Background(), "t2", 10*time.Millisecond) {
		t.Error("OOM reported for a container without event")
	}
}
