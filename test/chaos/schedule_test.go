package chaos

import (
	"io"
	"math/rand/v2"
	"net"
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

// TestGateCutsAndHeals: a cut drops the open connection and refuses new
// ones; a heal lets them through again.
func TestGateCutsAndHeals(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	g, err := newGate(l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer g.close()
	echo := func(c net.Conn) error {
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte("x")); err != nil {
			return err
		}
		_, err := io.ReadFull(c, make([]byte, 1))
		return err
	}
	c, err := net.Dial("tcp", g.addr())
	if err != nil || echo(c) != nil {
		t.Fatalf("through the gate: %v", err)
	}
	g.setCut(true)
	if echo(c) == nil {
		t.Error("an open connection survived the cut")
	}
	if c2, err := net.Dial("tcp", g.addr()); err == nil && echo(c2) == nil {
		t.Error("a new connection got through the cut")
	}
	g.setCut(false)
	c3, err := net.Dial("tcp", g.addr())
	if err != nil || echo(c3) != nil {
		t.Errorf("after the heal: %v", err)
	}
}
