package schedlink

import (
	"testing"
	"time"
)

func TestBackoffGrowsWithJitterAndCap(t *testing.T) {
	lo, hi := 100*time.Millisecond, time.Second
	for n, want := range map[int]time.Duration{1: lo, 2: 2 * lo, 3: 4 * lo, 4: 8 * lo, 5: hi, 50: hi} {
		for range 100 {
			if d := backoff(lo, hi, n); d < want/2 || d > want {
				t.Fatalf("backoff(%d) = %s, want in [%s, %s]", n, d, want/2, want)
			}
		}
	}
}
