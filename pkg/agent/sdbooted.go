package agent

import "os"

// systemdBooted reports whether systemd is the host's init, the test of
// sd_booted(3): /run/systemd/system is a directory.
//
// It is ours rather than go-systemd's util.IsRunningSystemd because that
// package's other functions dlopen libsystemd through cgo, and importing it
// makes the agent an externally linked (gcc/ld) binary. Such a binary's
// pages reach the page cache as large folios that a fault maps whole, and
// the daemon's resident set doubled (34 -> 66 MiB idle in `make bench`).
// TestAgentLinksWithoutCgo keeps cgo packages out of the agent.
func systemdBooted() bool {
	fi, err := os.Lstat("/run/systemd/system")
	return err == nil && fi.IsDir()
}
