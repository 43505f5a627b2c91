package schedlink

import (
	"context"
	"testing"
	"time"
)

// TestRegisterCarriesHealth: an agent that (re)connects unhealthy says so
// in its registration, so the scheduler places nothing on it before a
// heartbeat says it is healthy again; a healthy one (or one without a
// health check) registers healthy.
func TestRegisterCarriesHealth(t *testing.T) {
	for _, tc := range []struct {
		name          string
		health        func() bool
		wantUnhealthy bool
	}{
		{"unhealthy", func() bool { return false }, true},
		{"healthy", func() bool { return true }, false},
		{"no check", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leader := &replica{leader: true, registered: make(chan struct{})}
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() {
				done <- Run(ctx, Config{Address: serveReplica(t, leader), InstanceID: "i-1", Health: tc.health}, &launchRecorder{})
			}()
			select {
			case <-leader.registered:
			case <-time.After(10 * time.Second):
				t.Fatal("not registered")
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if got := leader.reg.Load().GetUnhealthy(); got != tc.wantUnhealthy {
				t.Errorf("register.unhealthy = %v, want %v", got, tc.wantUnhealthy)
			}
		})
	}
}
