package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// The sd_notify(3) protocol, over go-systemd. Every function is a no-op
// (nil error) when the agent does not run under systemd, i.e. NOTIFY_SOCKET
// is unset. The environment is kept so later notifications still work.

// NotifyReady tells systemd the agent serves (READY=1), with a status line.
// Call it once the socket serves and re-adoption is done.
func NotifyReady(status string) error {
	return notify(daemon.SdNotifyReady + "\nSTATUS=" + status)
}

// NotifyStatus sets the one-line status `systemctl status` shows.
func NotifyStatus(s string) error {
	return notify("STATUS=" + s)
}

// NotifyStopping tells systemd the agent is shutting down (STOPPING=1).
func NotifyStopping() error {
	return notify(daemon.SdNotifyStopping)
}

func notify(state string) error {
	if _, err := daemon.SdNotify(false, state); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}

// StartWatchdog pings systemd's watchdog (WATCHDOG=1) at half the interval
// systemd asked for (WatchdogSec=, passed as WATCHDOG_USEC for this pid),
// but only while healthy reports true: a wedged main loop stops the pings
// and systemd restarts the agent. It returns the ping interval, or 0 when
// the watchdog is off; the pings stop when ctx is done.
func StartWatchdog(ctx context.Context, healthy func() bool) (time.Duration, error) {
	timeout, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		return 0, fmt.Errorf("watchdog: %w", err)
	}
	if timeout == 0 {
		return 0, nil
	}
	every := timeout / 2
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if healthy() {
					_, _ = daemon.SdNotify(false, daemon.SdNotifyWatchdog)
				}
			}
		}
	}()
	return every, nil
}
