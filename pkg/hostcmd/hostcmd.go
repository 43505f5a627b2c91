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
	"errors"
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
//
// A command that died of SIGTERM or SIGINT while ctx is live is run again
// (up to forkRaceTries in all): a signal sent to the agent's group while
// the command was being forked, before it left the group, reaches the
// child, which then dies before it runs (the kernel delivers a group
// signal to both sides of a fork in flight, and the child restores the
// default action before it can change its group). Nothing ran, so running
// it again is safe.
func RunInput(ctx context.Context, in io.Reader, name string, args ...string) ([]byte, error) {
	var input []byte
	if in != nil {
		b, err := io.ReadAll(in)
		if err != nil {
			return nil, fmt.Errorf("%s %s: read input: %w", name, strings.Join(args, " "), err)
		}
		input = b
	}
	for try := 1; ; try++ {
		out, err := runOnce(ctx, input, in != nil, name, args...)
		if err == nil || try >= forkRaceTries || ctx.Err() != nil || !killedByStopSignal(err) {
			return out, err
		}
	}
}

// forkRaceTries bounds RunInput's runs of a command killed by a stop signal.
const forkRaceTries = 3

func runOnce(ctx context.Context, input []byte, stdin bool, name string, args ...string) ([]byte, error) {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin {
		cmd.Stdin = bytes.NewReader(input)
	}
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.Bytes(), nil
}

// killedByStopSignal says whether a command ended by SIGTERM or SIGINT.
func killedByStopSignal(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && (ws.Signal() == syscall.SIGTERM || ws.Signal() == syscall.SIGINT)
}
