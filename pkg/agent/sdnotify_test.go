package agent

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// notifySocket listens where systemd would and points NOTIFY_SOCKET at it.
func notifySocket(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return c
}

// next reads one datagram; the deadline only bounds a broken test.
func next(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("read notification: %v", err)
	}
	return string(buf[:n])
}

// queued returns the datagrams already in the socket buffer.
func queued(t *testing.T, c *net.UnixConn) []string {
	t.Helper()
	var out []string
	buf := make([]byte, 4096)
	for {
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := c.Read(buf)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return out
		}
		if err != nil {
			t.Fatalf("read notification: %v", err)
		}
		out = append(out, string(buf[:n]))
	}
}

func TestNotifyMessages(t *testing.T) {
	c := notifySocket(t)
	steps := []struct {
		send func() error
		want string
	}{
		{func() error { return NotifyReady("3 tasks running") }, "READY=1\nSTATUS=3 tasks running"},
		{func() error { return NotifyStatus("4 tasks running, 1 starting") }, "STATUS=4 tasks running, 1 starting"},
		{NotifyStopping, "STOPPING=1"},
	}
	for _, s := range steps {
		if err := s.send(); err != nil {
			t.Fatalf("notify %q: %v", s.want, err)
		}
		if diff := cmp.Diff(s.want, next(t, c)); diff != "" {
			t.Errorf("notification (-want +got):\n%s", diff)
		}
	}
}

func TestNotifyWithoutSystemdIsNoop(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	os.Unsetenv("NOTIFY_SOCKET")
	for _, f := range []func() error{func() error { return NotifyReady("x") }, func() error { return NotifyStatus("x") }, NotifyStopping} {
		if err := f(); err != nil {
			t.Errorf("without NOTIFY_SOCKET: %v", err)
		}
	}
}

func TestNotifyUnreachableSocketFails(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "nobody-listens"))
	if err := NotifyReady("x"); err == nil {
		t.Fatal("notify to a missing socket succeeded")
	}
}

func TestWatchdogPingsWhileHealthy(t *testing.T) {
	c := notifySocket(t)
	t.Setenv("WATCHDOG_USEC", "100000") // 100ms
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))

	// Healthy for three checks, then wedged: exactly three pings, none after.
	const healthyChecks = 3
	var checks atomic.Int32
	wedged := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	every, err := StartWatchdog(ctx, func() bool {
		n := checks.Add(1)
		if n == healthyChecks+1 {
			close(wedged)
		}
		return n <= healthyChecks
	})
	if err != nil {
		t.Fatalf("StartWatchdog: %v", err)
	}
	if every != 50*time.Millisecond {
		t.Errorf("ping interval = %v, want half of WATCHDOG_USEC (50ms)", every)
	}
	select {
	case <-wedged:
	case <-time.After(30 * time.Second):
		t.Fatal("watchdog never checked health")
	}
	cancel()
	want := []string{"WATCHDOG=1", "WATCHDOG=1", "WATCHDOG=1"}
	if diff := cmp.Diff(want, queued(t, c)); diff != "" {
		t.Errorf("pings (-want +got):\n%s", diff)
	}
}

func TestWatchdogOff(t *testing.T) {
	notifySocket(t)
	for name, env := range map[string][2]string{
		"no WATCHDOG_USEC": {"", strconv.Itoa(os.Getpid())},
		"another pid's":    {"100000", strconv.Itoa(os.Getpid() + 1)},
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv("WATCHDOG_USEC", env[0])
			t.Setenv("WATCHDOG_PID", env[1])
			if env[0] == "" {
				os.Unsetenv("WATCHDOG_USEC")
			}
			every, err := StartWatchdog(context.Background(), func() bool {
				t.Error("health checked with the watchdog off")
				return true
			})
			if err != nil || every != 0 {
				t.Errorf("StartWatchdog = %v, %v; want 0, nil", every, err)
			}
		})
	}
}

func TestWatchdogBadEnvironment(t *testing.T) {
	t.Setenv("WATCHDOG_USEC", "soon")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	if _, err := StartWatchdog(context.Background(), func() bool { return true }); err == nil {
		t.Fatal("StartWatchdog accepted WATCHDOG_USEC=soon")
	}
}
