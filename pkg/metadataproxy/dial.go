package metadataproxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"time"

	"github.com/vishvananda/netns"
)

// DialInNetNS returns a dialer whose connections start inside the network
// namespace at nsPath, as a task's would; an empty nsPath dials from the
// caller's namespace. A socket stays in the namespace it was made in, so
// the connection works from any goroutine afterwards.
func DialInNetNS(nsPath string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if nsPath == "" {
		return d.DialContext
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := InNetNS(nsPath, func() error {
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// HTTPClientInNetNS is an HTTP client whose connections start inside the
// network namespace at nsPath (see DialInNetNS).
func HTTPClientInNetNS(nsPath string, maxConns int) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: DialInNetNS(nsPath), MaxIdleConnsPerHost: maxConns, MaxConnsPerHost: maxConns, Proxy: nil,
	}}
}

// InNetNS runs fn on a locked OS thread inside the namespace at nsPath.
// Sockets fn makes stay in that namespace afterwards. A thread that cannot
// be put back into its own namespace is never reused.
func InNetNS(nsPath string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("current netns: %w", err)
			return // the thread dies with its goroutine
		}
		defer orig.Close()
		target, err := netns.GetFromPath(nsPath)
		if err != nil {
			errc <- fmt.Errorf("netns %s: %w", nsPath, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", nsPath, err)
			return
		}
		ferr := fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}
