package chaos

import (
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/titus-agent/titus-agent/test/testenv"
)

// TestPartitionIsALinkDown: the soak's partition is the host's primary
// link taken down in its netns. Through the gate (as the agent reaches a
// scheduler), an open connection stalls (what is sent is neither answered
// nor reset), a new one does not get through; after the heal the stalled
// byte arrives and new connections work, the host's default route back.
// Another host in the VPC (an attacker reaching the scheduler through the
// gate's back) is refused.
func TestPartitionIsALinkDown(t *testing.T) {
	moto := testenv.StartMoto(t)
	hv := testenv.StartHypervisor(t, moto.Endpoint, testenv.HypervisorOptions{AZs: []string{"us-east-1a"}})
	h := hv.AddHost(t, "us-east-1a", "t3.medium")
	other := hv.AddHost(t, "us-east-1a", "t3.medium")

	var accepted atomic.Int32
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	g, err := newGate(hv, h, l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.close)
	echo := func(c net.Conn, b byte, wait time.Duration) error {
		_ = c.SetDeadline(time.Now().Add(wait))
		if _, err := c.Write([]byte{b}); err != nil {
			return err
		}
		got := make([]byte, 1)
		if _, err := io.ReadFull(c, got); err != nil {
			return err
		}
		if got[0] != b {
			t.Errorf("echoed %q, want %q", got, b)
		}
		return nil
	}
	c, err := net.Dial("tcp", g.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := echo(c, 'a', 5*time.Second); err != nil {
		t.Fatalf("through the gate before the partition: %v", err)
	}

	if err := hv.SetPrimaryLink(h, false); err != nil {
		t.Fatal(err)
	}
	err = echo(c, 'b', 2*time.Second)
	if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Errorf("an open connection across the cut link: %v, want it to stall (a timeout)", err)
	}
	if c2, err := net.Dial("tcp", g.addr()); err == nil {
		if echo(c2, 'c', 2*time.Second) == nil {
			t.Error("a new connection got across the cut link")
		}
		c2.Close()
	}

	if err := hv.SetPrimaryLink(h, true); err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	got := make([]byte, 1)
	if _, err := io.ReadFull(c, got); err != nil || got[0] != 'b' {
		t.Errorf("the byte sent during the partition, after the heal: %q %v, want \"b\"", got, err)
	}
	c3, err := net.Dial("tcp", g.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if err := echo(c3, 'd', 5*time.Second); err != nil {
		t.Errorf("a new connection after the heal: %v", err)
	}
	hh, err := netlink.NewHandleAt(h.NS)
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	routes, _ := hh.RouteList(nil, netlink.FAMILY_V4)
	def := false
	for _, r := range routes {
		def = def || (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.String() == hv.Subnet("us-east-1a").Gateway.String()
	}
	if !def {
		t.Errorf("no default route via the gateway after the heal: %v", routes)
	}

	// Another host dials the gate's back directly: refused before the
	// replica is dialled.
	before := accepted.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if a, err := other.DialContext(ctx, "tcp", g.backAddr()); err == nil {
		if echo(a, 'e', 2*time.Second) == nil {
			t.Error("another host reached the replica through the gate's back")
		}
		a.Close()
	}
	if n := accepted.Load(); n != before {
		t.Errorf("the replica saw %d connections from another host", n-before)
	}
}
