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
