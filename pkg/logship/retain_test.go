package logship

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// localFiles lists a task's log dir.
func (b *bed) localFiles(id string) []string {
	ents, _ := os.ReadDir(filepath.Join(b.logDir, id))
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

// Once shipped, at most KeepFiles rotated files stay; unshipped ones
// stay however many there are.
func TestRetentionKeepsUnshipped(t *testing.T) {
	b := newBed(t)
	b.cfg.KeepFiles = 2
	s := b.shipper()
	ctx := context.Background()
	s.Track(info("t1"))
	var names []string
	for range 4 {
		names = append(names, b.rotate("t1", "x\n"))
	}
	b.write("t1", "stdout.log", "current\n")
	b.s3.fail = func(string) error { return errors.New("down") }
	s.Round(ctx)
	if got := len(b.localFiles("t1")); got != 5 {
		t.Fatalf("unshipped files deleted: %v", b.localFiles("t1"))
	}
	b.s3.fail = nil
	s.nextTry = b.now
	s.Round(ctx)
	if diff := cmp.Diff([]string{names[2], names[3], "stdout.log"}, b.localFiles("t1")); diff != "" {
		t.Errorf("kept (-want +got):\n%s", diff)
	}
	if n := testutil.ToFloat64(b.m.Removed.WithLabelValues("retention")); n != 2 {
		t.Errorf("removed for retention = %v", n)
	}
}

// Under disk pressure, shipped files go first and unshipped ones stay
// until the emergency threshold, past which they go too, counted.
func TestDiskPressure(t *testing.T) {
	b := newBed(t)
	b.cfg.KeepFiles = 100
	b.cfg.DiskHigh, b.cfg.DiskEmergency = 0.8, 0.95
	// Usage: 0.70 + 0.05 per local rotated file.
	b.cfg.Disk = fakeDisk{func() float64 {
		n := 0
		for _, id := range []string{"t1", "t2"} {
			for _, name := range b.localFiles(id) {
				if strings.HasPrefix(name, "stdout-") {
					n++
				}
			}
		}
		return 0.70 + 0.05*float64(n)
	}}
	s := b.shipper()
	ctx := context.Background()
	s.Track(info("t1"))
	s.Track(info("t2"))
	shipped1 := b.rotate("t1", "a\n")
	shipped2 := b.rotate("t1", "b\n")
	s.Round(ctx) // both shipped; usage 0.80: at the high mark
	b.s3.fail = func(string) error { return errors.New("down") }
	p1 := b.rotate("t2", "c\n")
	p2 := b.rotate("t2", "d\n") // usage 0.90
	s.Round(ctx)
	if _, err := os.Stat(filepath.Join(b.logDir, "t1", shipped1)); err == nil {
		t.Errorf("shipped %s kept under pressure", shipped1)
	}
	if diff := cmp.Diff([]string{p1, p2}, b.localFiles("t2")); diff != "" {
		t.Errorf("unshipped deleted below the emergency mark (-want +got):\n%s", diff)
	}
	if testutil.ToFloat64(b.m.EmergencyDeleted) != 0 {
		t.Errorf("emergency deletions below the mark")
	}
	_ = shipped2
	// Two more unshipped: 0.70 + 0.05*5 (t1's last shipped one and t2's
	// four) = 0.95 → shipped2 goes first (0.90 < 0.95): no emergency yet.
	b.rotate("t2", "e\n")
	b.rotate("t2", "f\n")
	s.Round(ctx)
	if testutil.ToFloat64(b.m.EmergencyDeleted) != 0 || len(b.localFiles("t1")) != 0 {
		t.Errorf("t1 %v, emergency %v", b.localFiles("t1"), testutil.ToFloat64(b.m.EmergencyDeleted))
	}
	// One more: 0.95 with nothing shipped left: the oldest unshipped goes.
	b.rotate("t2", "g\n")
	s.Round(ctx)
	if n := testutil.ToFloat64(b.m.EmergencyDeleted); n != 1 {
		t.Errorf("emergency deletions = %v, want 1", n)
	}
	if _, err := os.Stat(filepath.Join(b.logDir, "t2", p1)); err == nil {
		t.Errorf("the oldest unshipped file %s was not the one deleted", p1)
	}
	// It is never uploaded later, and the rest are.
	b.s3.fail = nil
	s.nextTry = b.now
	s.Round(ctx)
	got := b.s3.list()
	want := []string{"p/api/j1/t1/stdout.0", "p/api/j1/t1/stdout.1", "p/api/j1/t2/stdout.1", "p/api/j1/t2/stdout.2", "p/api/j1/t2/stdout.3", "p/api/j1/t2/stdout.4"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("bucket (-want +got):\n%s", diff)
	}
}
