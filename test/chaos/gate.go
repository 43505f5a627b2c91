package chaos

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/titus-agent/titus-agent/test/testenv"
)

// gate carries one host's agent's connections to one scheduler replica
// over the simulated host's own network. The agent runs in the test's
// network namespace (it reaches its containerd, moto and the IMDS mock on
// loopback), so its control plane cannot use the host's links by
// itself: it dials the gate's front on loopback, the gate dials out of
// the host's netns, over its primary link (eth0), to the gate's back in
// the VPC fabric at the host's subnet gateway, and the back dials the
// replica. A partition is then that link taken down in the host's netns
// (Hypervisor.SetPrimaryLink): bytes in flight stall, new dials fail as
// unreachable, and the heal lets the stalled connections through again:
// TCP's own behaviour over a dead link, not a relay's choice.
//
// The back takes connections from the host's primary address only: a
// task (whose traffic leaves through its own ENI and address) or another
// host in the VPC does not reach the scheduler through it.
type gate struct {
	host   *testenv.SimHost
	target string
	front  net.Listener // 127.0.0.1, in the test's netns: the agent dials it
	back   net.Listener // the subnet gateway, in the fabric's netns

	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
}

// newGate opens a gate from host to the replica at target.
func newGate(hv *testenv.Hypervisor, host *testenv.SimHost, target string) (*gate, error) {
	gw := hv.Subnet(host.AZ).Gateway
	back, err := hv.ListenFabric(netip.AddrPortFrom(gw, 0).String())
	if err != nil {
		return nil, fmt.Errorf("gate: listen in the fabric: %w", err)
	}
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		back.Close()
		return nil, err
	}
	g := &gate{host: host, target: target, front: front, back: back, conns: map[net.Conn]bool{}}
	go g.serve(front, g.out)
	go g.serve(back, g.in)
	return g, nil
}

func (g *gate) addr() string     { return g.front.Addr().String() }
func (g *gate) backAddr() string { return g.back.Addr().String() }

func (g *gate) serve(l net.Listener, handle func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		if !g.track(c) {
			return
		}
		go handle(c)
	}
}

// out carries an agent's connection into the host's netns and over its link.
func (g *gate) out(c net.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	up, err := g.host.DialContext(ctx, "tcp", g.backAddr())
	cancel()
	if err != nil {
		g.drop(c)
		return
	}
	g.pipe(c, up)
}

// in carries a connection that crossed the host's link to the replica.
func (g *gate) in(c net.Conn) {
	from, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	if from.Addr().Unmap().String() != g.host.PrimaryIP {
		g.drop(c)
		return
	}
	up, err := net.Dial("tcp", g.target)
	if err != nil {
		g.drop(c)
		return
	}
	g.pipe(c, up)
}

func (g *gate) pipe(a, b net.Conn) {
	if !g.track(b) {
		g.drop(a)
		return
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(b, a); done <- struct{}{} }()
	go func() { _, _ = io.Copy(a, b); done <- struct{}{} }()
	<-done
	g.drop(a)
	g.drop(b)
}

// track records an open connection (closing it at once if the gate is closed).
func (g *gate) track(c net.Conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		c.Close()
		return false
	}
	g.conns[c] = true
	return true
}

func (g *gate) drop(c net.Conn) {
	c.Close()
	g.mu.Lock()
	delete(g.conns, c)
	g.mu.Unlock()
}

// close shuts both ends and every connection through the gate.
func (g *gate) close() {
	g.mu.Lock()
	g.closed = true
	conns := g.conns
	g.conns = map[net.Conn]bool{}
	g.mu.Unlock()
	g.front.Close()
	g.back.Close()
	for c := range conns {
		c.Close()
	}
}
