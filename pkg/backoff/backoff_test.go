package backoff

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestCeil(t *testing.T) {
	ms := time.Millisecond
	for _, tt := range []struct {
		name string
		p    Policy
		want []time.Duration // attempts 0, 1, 2, ...
	}{
		{"doubles to the cap", Policy{Base: 100 * ms, Max: time.Second}, []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, time.Second, time.Second}},
		{"cap below base", Policy{Base: time.Second, Max: 300 * ms}, []time.Duration{300 * ms, 300 * ms}},
		{"no cap", Policy{Base: ms}, []time.Duration{ms, 2 * ms, 4 * ms, 8 * ms}},
		{"cap not a power of two", Policy{Base: 50 * ms, Max: 2 * time.Second}, []time.Duration{50 * ms, 100 * ms, 200 * ms, 400 * ms, 800 * ms, 1600 * ms, 2 * time.Second}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var got []time.Duration
			for i := range tt.want {
				got = append(got, tt.p.Ceil(i))
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Ceil (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCeilNeverOverflows(t *testing.T) {
	for _, p := range []Policy{{Base: time.Hour}, {Base: time.Hour, Max: math.MaxInt64}} {
		for _, n := range []int{62, 63, 64, 1000, math.MaxInt32} {
			if d := p.Ceil(n); d <= 0 {
				t.Fatalf("%+v.Ceil(%d) = %v, want positive", p, n, d)
			}
		}
	}
}

// TestDelayJitterBounds pins the random source at both ends of its range.
func TestDelayJitterBounds(t *testing.T) {
	ms := time.Millisecond
	base := Policy{Base: 100 * ms, Max: time.Second}
	for _, tt := range []struct {
		name     string
		jitter   Jitter
		attempt  int
		low, top time.Duration // with the random source at 0 and at its maximum
	}{
		{"none", None, 1, 200 * ms, 200 * ms},
		{"full", Full, 1, 0, 200 * ms},
		{"full at cap", Full, 9, 0, time.Second},
		{"equal", Equal, 0, 50 * ms, 100 * ms},
		{"equal at cap", Equal, 9, 500 * ms, time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := base
			p.Jitter = tt.jitter
			var got []time.Duration
			for _, pick := range []func(n time.Duration) time.Duration{
				func(time.Duration) time.Duration { return 0 },
				func(n time.Duration) time.Duration { return n - 1 },
			} {
				randN = pick
				got = append(got, p.Delay(tt.attempt))
			}
			randN = defaultRandN
			if diff := cmp.Diff([]time.Duration{tt.low, tt.top}, got); diff != "" {
				t.Errorf("Delay (-want +got):\n%s", diff)
			}
		})
	}
}

var defaultRandN = randN

// TestDelayRandomInRange uses the real random source.
func TestDelayRandomInRange(t *testing.T) {
	p := Policy{Base: 10 * time.Millisecond, Max: 80 * time.Millisecond}
	for _, j := range []Jitter{None, Full, Equal} {
		p.Jitter = j
		seen := map[time.Duration]bool{}
		for n := range 6 {
			c := p.Ceil(n)
			lo := map[Jitter]time.Duration{None: c, Full: 0, Equal: c / 2}[j]
			for range 200 {
				d := p.Delay(n)
				if d < lo || d > c {
					t.Fatalf("jitter %d attempt %d: %v outside [%v, %v]", j, n, d, lo, c)
				}
				seen[d] = true
			}
		}
		if j != None && len(seen) < 100 {
			t.Errorf("jitter %d: only %d distinct delays in 1200 draws", j, len(seen))
		}
	}
}

func TestBackoffNextAndReset(t *testing.T) {
	b := New(Policy{Base: time.Millisecond, Max: 4 * time.Millisecond})
	var got []time.Duration
	for range 4 {
		got = append(got, b.Next())
	}
	b.Reset()
	got = append(got, b.Next())
	want := []time.Duration{time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond, 4 * time.Millisecond, time.Millisecond}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Next (-want +got):\n%s", diff)
	}
	if b.Attempts() != 1 {
		t.Errorf("Attempts = %d, want 1", b.Attempts())
	}
}

func TestWaitStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b := New(Policy{Base: time.Hour})
	start := time.Now()
	if b.Wait(ctx) {
		t.Fatal("Wait on a cancelled context reported a full delay")
	}
	if el := time.Since(start); el > time.Second {
		t.Fatalf("Wait took %v on a cancelled context", el)
	}
	if !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("Sleep of 1ms reported cancellation")
	}
}
