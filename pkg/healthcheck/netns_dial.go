package healthcheck

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"sync"

	"github.com/vishvananda/netns"
)

// NetNSDialer opens connections from inside one network namespace: a
// goroutine locked to its OS thread enters the namespace, dials, and goes
// back. A socket stays in the namespace it was made in, so the connection
// is used from any goroutine afterwards. It holds the namespace open until
// Close.
type NetNSDialer struct {
	ns netns.NsHandle
}

var (
	hostNSOnce sync.Once
	hostNS     netns.NsHandle
	hostNSErr  error
)

// OpenNetNSDialer opens the namespace at path.
func OpenNetNSDialer(path string) (*NetNSDialer, error) {
	hostNSOnce.Do(func() { hostNS, hostNSErr = netns.GetFromPath("/proc/self/ns/net") })
	if hostNSErr != nil {
		return nil, fmt.Errorf("the agent's own netns: %w", hostNSErr)
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	return &NetNSDialer{ns: ns}, nil
}

// Close releases the namespace.
func (d *NetNSDialer) Close() error { return d.ns.Close() }

// DialContext dials addr from inside the namespace.
func (d *NetNSDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(d.ns); err != nil {
			// The thread may be half-switched: let it die with the goroutine.
			ch <- result{err: fmt.Errorf("enter the task's netns: %w", err)}
			return
		}
		var nd net.Dialer
		c, err := nd.DialContext(ctx, network, addr)
		if netns.Set(hostNS) == nil {
			runtime.UnlockOSThread()
		} // else the thread is never reused: it dies with the goroutine
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}
