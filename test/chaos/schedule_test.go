package chaos

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestScheduleIsReproducible: the same seed draws the same faults, the
// short form's schedule holds each kind once, and bad flags are refused.
func TestScheduleIsReproducible(t *testing.T) {
	draw := func(seed uint64) []fault {
		return schedule(rand.New(rand.NewPCG(seed, 1)), faultKinds, 110*time.Second, 10*time.Second, 2)
	}
	a, b := draw(42), draw(42)
	if diff := cmp.Diff(a, b, cmp.AllowUnexported(fault{})); diff != "" {
		t.Fatalf("same seed, different schedules:\n%s", diff)
	}
	seen := map[string]int{}
	for _, f := range a {
		seen[f.kind]++
		if f.at+25*time.Second > 110*time.Second || f.hold <= 0 {
			t.Errorf("fault %v outside the run or without a hold", f)
		}
	}
	for _, k := range faultKinds {
		if seen[k] != 1 {
			t.Errorf("%s scheduled %d times, want once", k, seen[k])
		}
	}
	if _, err := parseFaults("agent-kill,nope"); err == nil {
		t.Error("an unknown fault was accepted")
	}
	if _, err := parseMix("short=1,huge=2"); err == nil {
		t.Error("an unknown job kind was accepted")
	}
}
