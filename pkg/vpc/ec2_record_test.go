package vpc

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestRecordGroupCommit: changes staged while a write is under way share
// the next write; every sync returns only once its change is on disk.
func TestRecordGroupCommit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "alloc.json")
	r, err := openRecord(path)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var writes int
	first, release := make(chan struct{}), make(chan struct{})
	r.write = func(p string, b []byte) error {
		mu.Lock()
		writes++
		n := writes
		mu.Unlock()
		if n == 1 {
			close(first)
			<-release
		}
		return writeAtomic(p, b)
	}
	_, _, g0 := r.stagePut("t0", recordEntry{State: recordAssigned, IP: "198.18.1.10"})
	done0 := make(chan error, 1)
	go func() { done0 <- r.sync(g0) }()
	<-first // t0's write is under way
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		_, _, g := r.stagePut(fmt.Sprintf("t%d", i+1), recordEntry{State: recordAssigned, IP: fmt.Sprintf("198.18.1.%d", 20+i)})
		wg.Go(func() { errs[i] = r.sync(g) })
	}
	close(release)
	wg.Wait()
	if err := errors.Join(append(errs, <-done0)...); err != nil {
		t.Fatal(err)
	}
	if writes != 2 {
		t.Errorf("%d writes for %d changes, want 2 (one under way, one for the rest)", writes, n+1)
	}
	onDisk, err := openRecord(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(onDisk.entries()); got != n+1 {
		t.Errorf("%d entries on disk, want %d", got, n+1)
	}
}

// TestRecordFailedWriteIsRetried: a waiter whose write failed gets the
// error; the next sync writes again, and put leaves the entry as it was.
func TestRecordFailedWriteIsRetried(t *testing.T) {
	path := filepath.Join(t.TempDir(), "alloc.json")
	r, err := openRecord(path)
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("disk full")
	fail := true
	r.write = func(p string, b []byte) error {
		if fail {
			return boom
		}
		return writeAtomic(p, b)
	}
	if err := r.put("t1", recordEntry{State: recordAssigned, IP: "198.18.1.10"}); !errors.Is(err, boom) {
		t.Fatalf("put = %v, want %v", err, boom)
	}
	if _, ok := r.entries()["t1"]; ok {
		t.Error("a put that was not written left its entry in memory")
	}
	_, _, g := r.stagePut("t2", recordEntry{State: recordAssigned, IP: "198.18.1.11"})
	if err := r.sync(g); !errors.Is(err, boom) {
		t.Fatalf("sync = %v, want %v", err, boom)
	}
	fail = false
	if err := r.sync(g); err != nil {
		t.Fatal(err)
	}
	onDisk, _ := openRecord(path)
	if diff := cmp.Diff(map[string]recordEntry{"t2": {State: recordAssigned, IP: "198.18.1.11"}}, onDisk.entries()); diff != "" {
		t.Errorf("on disk (-want +got):\n%s", diff)
	}
}

// TestEC2ProviderDeferredRecordCrashPoints crashes the provider (a new one
// from what is on disk) at each point of a deferred allocation and its
// release, and checks that no address is ever held by two tasks, and that
// an allocation whose durable returned survives.
func TestEC2ProviderDeferredRecordCrashPoints(t *testing.T) {
	ctx := context.Background()
	f, c := newFakeEC2(), &clock{t: t0}
	rec := filepath.Join(t.TempDir(), "alloc.json")
	p := newTestProvider(t, f, c, rec)
	warm := mustAlloc(t, p, "warm-up", req("sg-1")) // grows the pool
	if err := p.Release(ctx, "warm-up"); err != nil {
		t.Fatal(err)
	}
	c.Add(p.cfg.Pool.ReuseCooldown * 2)
	p.Tick(ctx)

	// Crash point 1: allocated and (the caller's) wired, record not
	// written. The restarted provider does not know t1, so its address
	// is free; the resumed t1 and a new t2 get different addresses.
	a1, durable, err := p.AllocateDeferred(ctx, "t1", req("sg-1"))
	if err != nil {
		t.Fatal(err)
	}
	p2 := newTestProvider(t, f, c, rec)
	if as, _ := p2.Allocations(ctx); len(as) != 0 {
		t.Fatalf("after a crash before the write: allocations %v, want none", as)
	}
	b2 := mustAlloc(t, p2, "t2", req("sg-1"))
	b1 := mustAlloc(t, p2, "t1", req("sg-1"))
	if b1.IPv4 == b2.IPv4 {
		t.Fatalf("t1 and t2 both got %s", b1.IPv4)
	}
	_ = a1 // it may be either's now: the resumed Setup drops it from t1 (TestDataPlaneSetup)

	// Crash point 2: durable returned: the allocation survives.
	if err := durable(ctx); err != nil {
		t.Fatal(err)
	}
	p3 := newTestProvider(t, f, c, rec)
	a3, d3, err := p3.AllocateDeferred(ctx, "t3", req("sg-1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := d3(ctx); err != nil {
		t.Fatal(err)
	}
	p4 := newTestProvider(t, f, c, rec)
	held := map[string]string{}
	as, _ := p4.Allocations(ctx)
	for _, a := range as {
		if other, dup := held[a.IPv4.String()]; dup {
			t.Errorf("%s held by %s and %s", a.IPv4, other, a.TaskID)
		}
		held[a.IPv4.String()] = a.TaskID
	}
	if held[a3.IPv4.String()] != "t3" {
		t.Errorf("t3's durable allocation %s lost after a crash: %v", a3.IPv4, held)
	}

	// Crash point 3: released in memory, the removal not written: the
	// restarted provider still holds t3's address for t3 (its reconcile
	// releases it), never for another task.
	p4.record.write = func(string, []byte) error { return errors.New("crash") }
	if err := p4.Release(ctx, "t3"); err == nil {
		t.Fatal("Release with a failing write returned nil")
	}
	p5 := newTestProvider(t, f, c, rec)
	as, _ = p5.Allocations(ctx)
	var still bool
	for _, a := range as {
		still = still || (a.TaskID == "t3" && a.IPv4 == a3.IPv4)
	}
	if !still {
		t.Errorf("t3's allocation gone after a crash before its removal was written: %v", as)
	}
	_ = warm
}

// TestEC2ProviderAllocateWriteFails: Allocate (not deferred) that cannot
// write its record gives the address back and records nothing.
func TestEC2ProviderAllocateWriteFails(t *testing.T) {
	ctx := context.Background()
	f, c := newFakeEC2(), &clock{t: t0}
	rec := filepath.Join(t.TempDir(), "alloc.json")
	p := newTestProvider(t, f, c, rec)
	mustAlloc(t, p, "t0", req("sg-1"))
	p.record.write = func(string, []byte) error { return errors.New("disk full") }
	if _, err := p.Allocate(ctx, "t1", req("sg-1")); err == nil {
		t.Fatal("Allocate with a failing write returned nil")
	}
	as, _ := p.Allocations(ctx)
	if len(as) != 1 || as[0].TaskID != "t0" {
		t.Errorf("allocations %v, want t0 only", as)
	}
	if _, ok := p.record.entries()["t1"]; ok {
		t.Error("t1 left in the record")
	}
}
