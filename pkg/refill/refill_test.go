package refill

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// A full pool is filled again only when kicked.
func TestFillsOnStartAndOnKick(t *testing.T) {
	var calls atomic.Int32
	l := New(time.Hour)
	l.Start(context.Background(), func(context.Context) bool { calls.Add(1); return true })
	defer l.Stop()
	waitFor(t, "the first fill", func() bool { return calls.Load() == 1 })
	time.Sleep(20 * time.Millisecond)
	if n := calls.Load(); n != 1 {
		t.Fatalf("fill called %d times without a kick, want 1", n)
	}
	l.Kick()
	waitFor(t, "the kicked fill", func() bool { return calls.Load() == 2 })
}

// A failed fill is tried again after the retry delay, with no kick.
func TestRetriesAFailedFill(t *testing.T) {
	var calls atomic.Int32
	l := New(time.Millisecond)
	l.Start(context.Background(), func(context.Context) bool { return calls.Add(1) >= 3 })
	defer l.Stop()
	waitFor(t, "two retries", func() bool { return calls.Load() == 3 })
}

// Stop cancels the fill's context, waits for it, and may be repeated; Stop
// and Kick without Start do nothing.
func TestStop(t *testing.T) {
	New(time.Second).Stop()
	New(time.Second).Kick()
	ended := make(chan struct{})
	l := New(time.Hour)
	l.Start(context.Background(), func(ctx context.Context) bool {
		<-ctx.Done()
		close(ended)
		return false
	})
	l.Stop()
	select {
	case <-ended:
	default:
		t.Fatal("Stop returned before the fill under way ended")
	}
	l.Stop()
}

// Yield waits while a launch is in flight and goes on once it leaves;
// without a launch, or without a gate, it does not wait.
func TestYieldWaitsForLaunches(t *testing.T) {
	ctx := context.Background()
	New(time.Hour).Yield(ctx) // no gate
	g := &Gate{maxYield: time.Hour}
	l := New(time.Hour)
	l.YieldTo(g)
	l.Yield(ctx) // nothing in flight

	leave1, leave2 := g.Enter(), g.Enter()
	var made atomic.Int32
	l.Start(ctx, func(ctx context.Context) bool {
		l.Yield(ctx)
		made.Add(1)
		return true
	})
	defer l.Stop()
	time.Sleep(30 * time.Millisecond)
	if n := made.Load(); n != 0 {
		t.Fatalf("made %d objects while launches were in flight", n)
	}
	leave1()
	leave1() // a second leave counts once
	time.Sleep(30 * time.Millisecond)
	if n := made.Load(); n != 0 {
		t.Fatalf("made %d objects while one launch was still in flight", n)
	}
	leave2()
	waitFor(t, "the fill once launches ended", func() bool { return made.Load() == 1 })

	// A new launch blocks the next fill again.
	leave := g.Enter()
	l.Kick()
	time.Sleep(30 * time.Millisecond)
	if n := made.Load(); n != 1 {
		t.Fatalf("made %d objects, want 1: the kicked fill ran during a launch", n)
	}
	leave()
	waitFor(t, "the kicked fill", func() bool { return made.Load() == 2 })
}

// A steady stream of launches delays refill by MaxYield at most, and Stop
// ends a wait.
func TestYieldIsBounded(t *testing.T) {
	g := &Gate{maxYield: 20 * time.Millisecond}
	defer g.Enter()()
	start := time.Now()
	g.Wait(context.Background())
	if d := time.Since(start); d < 20*time.Millisecond || d > 2*time.Second {
		t.Errorf("waited %v, want about 20ms", d)
	}
	g.maxYield = time.Hour
	l := New(time.Hour)
	l.YieldTo(g)
	entered := make(chan struct{})
	l.Start(context.Background(), func(ctx context.Context) bool {
		close(entered)
		l.Yield(ctx)
		return true
	})
	<-entered
	l.Stop() // returns: the wait ends with the loop's context
}
