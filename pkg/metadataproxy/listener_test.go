package metadataproxy

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestIPv6Disabled(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name    string
		content *string // nil: no file (kernel without IPv6)
		want    bool
	}{
		{"enabled", ptr("0\n"), false},
		{"disabled", ptr("1\n"), true},
		{"no ipv6 in the kernel", nil, true},
	} {
		f := filepath.Join(dir, c.name)
		if c.content != nil {
			if err := os.WriteFile(f, []byte(*c.content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := ipv6Disabled(f)
		if err != nil || got != c.want {
			t.Errorf("%s: ipv6Disabled = %v, %v; want %v", c.name, got, err, c.want)
		}
	}
	// Unreadable for another reason (here: a directory) is an error, not
	// "disabled": Start must not silently drop IPv6.
	if _, err := ipv6Disabled(dir); err == nil {
		t.Error("a file that cannot be read counted as an answer")
	}
}

func ptr(s string) *string { return &s }

// A dropped SYN costs a short wait, not a fixed 100 ms: the attempts'
// timeouts start small and double, capped.
func TestProbeRetriesQuicklyThenBacksOff(t *testing.T) {
	var waits []time.Duration
	fails := 7
	err := probeUntil(time.Minute, func(timeout time.Duration) error {
		waits = append(waits, timeout)
		if len(waits) <= fails {
			return errors.New("i/o timeout")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []time.Duration{5, 10, 20, 40, 80, 100, 100, 100}
	for i := range want {
		want[i] *= time.Millisecond
	}
	if !slices.Equal(waits, want) {
		t.Errorf("attempt timeouts %v, want %v", waits, want)
	}
	start := time.Now()
	err = probeUntil(30*time.Millisecond, func(timeout time.Duration) error { return errors.New("connection refused") })
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("err = %v, want the last attempt's error", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("gave up after %s, limit 30ms", took)
	}
}

// On a listener that answers, the probe returns after one connection.
func TestAwaitReachableOnAnAnsweringListener(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := awaitReachable(l.Addr().String(), time.Second); err != nil {
		t.Fatal(err)
	}
}
