package healthcheck

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// mainThread runs functions on the process's main thread, the one whose
// namespace /proc/self/ns/net shows (TestMain serves them).
var mainThread = make(chan func())

// The main goroutine stays on the main thread (LockOSThread in init).
func init() { runtime.LockOSThread() }

func TestMain(m *testing.M) {
	done := make(chan int)
	go func() { done <- m.Run() }()
	for {
		select {
		case f := <-mainThread:
			f()
		case code := <-done:
			os.Exit(code)
		}
	}
}

// newNetNS makes a network namespace, held by the returned handle until
// the test ends; no thread is left in it.
func newNetNS(t *testing.T) netns.NsHandle {
	t.Helper()
	type res struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- res{err: err}
			return
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			ch <- res{err: err}
			return
		}
		if err := netns.Set(orig); err != nil {
			ch <- res{err: err} // this thread dies with its goroutine
			return
		}
		runtime.UnlockOSThread()
		ch <- res{ns: ns}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("new netns: %v", r.err)
	}
	t.Cleanup(func() { r.ns.Close() })
	return r.ns
}

// nsID names the namespace of a handle or an ns file ("net:[inode]").
func nsID(t *testing.T, path string) string {
	t.Helper()
	s, err := os.Readlink(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func handlePath(ns netns.NsHandle) string { return fmt.Sprintf("/proc/self/fd/%d", int(ns)) }

// threadsIn lists the process's threads whose network namespace is id.
func threadsIn(t *testing.T, id string) []string {
	t.Helper()
	dirs, err := filepath.Glob("/proc/self/task/*")
	if err != nil {
		t.Fatal(err)
	}
	var in []string
	for _, d := range dirs {
		if s, err := os.Readlink(d + "/ns/net"); err == nil && s == id {
			in = append(in, filepath.Base(d))
		}
	}
	return in
}

// TestDialReturnsEachThreadToItsOwnNetNS: a health check's dial enters the
// task's namespace on a locked thread and must put that thread back where
// it was before unlocking it. The agent's main thread runs such locked
// goroutines too (the metadata listeners, netlink in a task's namespace),
// so /proc/self/ns/net is, for moments, a task's namespace: the dialer
// used to take its way back from there, once, and every later dial left
// its thread in that task's namespace, unlocked. The agent's next
// connections (a reconnect to the scheduler after its restart) were then
// made from inside the task: refused, for over a minute in CI, or
// answered by whatever the task listens on.
func TestDialReturnsEachThreadToItsOwnNetNS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	taskNS, otherNS := newNetNS(t), newNetNS(t)
	other := nsID(t, handlePath(otherNS))

	// The main thread stands in another task's namespace while the first
	// dialer of the process is opened.
	in, release, back := make(chan error), make(chan struct{}), make(chan error)
	mainThread <- func() {
		host, err := netns.Get()
		if err != nil {
			in <- err
			return
		}
		defer host.Close()
		in <- netns.Set(otherNS)
		<-release
		back <- netns.Set(host)
	}
	if err := <-in; err != nil {
		t.Fatalf("main thread into the other netns: %v", err)
	}
	d, err := OpenNetNSDialer(handlePath(taskNS))
	close(release)
	if err := <-back; err != nil {
		t.Fatalf("main thread back: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	// Many dials at once, on many threads (the port is closed: each fails
	// at once; the way back is the same).
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			if c, err := d.DialContext(ctx, "tcp", "127.0.0.1:1"); err == nil {
				c.Close()
			}
		})
	}
	wg.Wait()
	if left := threadsIn(t, other); len(left) > 0 {
		t.Fatalf("threads %v left in another task's netns after the dials", left)
	}
	if left := threadsIn(t, nsID(t, handlePath(taskNS))); len(left) > 0 {
		t.Fatalf("threads %v left in the task's netns after the dials", left)
	}
}
