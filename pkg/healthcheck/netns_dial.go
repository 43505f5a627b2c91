package healthcheck

import (
	"context"
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netns"
)

// NetNSDialer opens connections from inside one network namespace: a
// goroutine locked to its OS thread enters the namespace, dials, and goes
// back to the namespace that thread was in. A socket stays in the
// namespace it was made in, so the connection is used from any goroutine
// afterwards. It holds the namespace open until Close.
//
// The way back is the dialing thread's own namespace, read on that thread
// before entering: never a snapshot of the process's (/proc/self/ns/net is
// the main thread's, and the main thread is itself, for a moment, in a
// task's namespace whenever it runs such a locked goroutine). A thread sent
// "back" into a task's namespace and unlocked was reused for anything: the
// agent's next connections, to the scheduler among them, were made inside
// that task's namespace (refused, or answered by the task).
type NetNSDialer struct {
	ns netns.NsHandle
}

// OpenNetNSDialer opens the namespace at path.
func OpenNetNSDialer(path string) (*NetNSDialer, error) {
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
		// A thread whose namespace is not known for sure is never unlocked:
		// it dies with this goroutine.
		own, err := netns.Get()
		if err != nil {
			ch <- result{err: fmt.Errorf("this thread's netns: %w", err)}
			return
		}
		defer own.Close()
		if err := netns.Set(d.ns); err != nil {
			ch <- result{err: fmt.Errorf("enter the task's netns: %w", err)}
			return
		}
		var nd net.Dialer
		c, err := nd.DialContext(ctx, network, addr)
		if netns.Set(own) == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}
