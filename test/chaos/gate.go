package chaos

import (
	"io"
	"net"
	"sync"
)

// gate is a TCP relay between one host's agent and one scheduler replica.
// Cut drops every connection and refuses new ones (the host is cut off
// from the schedulers: its agent dials through the gates and sees what
// a partition looks like, connections that die and dials that fail);
// Heal lets them through again. The agent's control plane runs in the
// test's network namespace, so the cut is made here rather than on a
// link of the simulated host.
type gate struct {
	l      net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]bool
}

func newGate(target string) (*gate, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	g := &gate{l: l, target: target, conns: map[net.Conn]bool{}}
	go g.serve()
	return g, nil
}

func (g *gate) addr() string { return g.l.Addr().String() }

func (g *gate) serve() {
	for {
		c, err := g.l.Accept()
		if err != nil {
			return
		}
		g.mu.Lock()
		cut := g.cut
		g.mu.Unlock()
		if cut {
			c.Close()
			continue
		}
		go g.relay(c)
	}
}

func (g *gate) relay(c net.Conn) {
	up, err := net.Dial("tcp", g.target)
	if err != nil {
		c.Close()
		return
	}
	g.mu.Lock()
	if g.cut {
		g.mu.Unlock()
		c.Close()
		up.Close()
		return
	}
	g.conns[c], g.conns[up] = true, true
	g.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	g.mu.Lock()
	delete(g.conns, c)
	delete(g.conns, up)
	g.mu.Unlock()
}

// setCut cuts (true) or heals (false) the gate.
func (g *gate) setCut(cut bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.cut = cut
	if cut {
		for c := range g.conns {
			c.Close()
		}
	}
}

func (g *gate) close() {
	g.setCut(true)
	g.l.Close()
}
