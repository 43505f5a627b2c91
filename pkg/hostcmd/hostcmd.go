// Package hostcmd runs the agent's host commands (mount, losetup, mkfs,
// nft, runc, ...). Every command runs in its own process group: a SIGTERM
// or Ctrl-C sent to the agent's group (systemd's stop, a terminal) must not
// kill a umount, losetup, nft or runc delete of a teardown the stopping
// agent still waits for. That cut teardowns short twice, in two hand-made
// runners, before this package was the only one.
package hostcmd

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"syscall"
)

// Run runs name with args and returns its combined output. The error
// names the command and carries its output.
func Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return RunInput(ctx, nil, name, args...)
}

// RunInput is Run with stdin read from in (nil: no input).
func RunInput(ctx context.Context, in io.Reader, name string, args ...string) ([]byte, error) {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = in
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.Bytes(), nil
}
