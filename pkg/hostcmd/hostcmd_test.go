package hostcmd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"
)

// callerEnv makes the test binary act as an agent that runs a host command
// which signals the agent's whole process group, as systemd or a terminal
// does when the agent is stopped.
const callerEnv = "HOSTCMD_TEST_CALLER"

func TestMain(m *testing.M) {
	if os.Getenv(callerEnv) == "1" {
		os.Exit(caller())
	}
	os.Exit(m.Run())
}

// caller survives SIGTERM itself (an agent finishing its teardowns) and
// reports whether its command ran to the end.
func caller() int {
	signal.Notify(make(chan os.Signal, 1), syscall.SIGTERM)
	script := fmt.Sprintf("kill -s TERM -- -%d; sleep 0.3; echo survived", syscall.Getpgrp())
	out, err := Run(context.Background(), "sh", "-c", script)
	fmt.Print(string(out))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	return 0
}

func TestCommandSurvivesSIGTERMToCallersGroup(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), callerEnv+"=1")
	// The caller leads its own group, so the test binary is not signalled.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("caller did not finish")
	}
	if err != nil || strings.TrimSpace(string(out)) != "survived" {
		t.Fatalf("caller: %v, output %q; want the command to survive the group's SIGTERM", err, out)
	}
}

func TestRun(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		args    []string
		want    string
		wantErr string
	}{
		{name: "output", args: []string{"sh", "-c", "echo out; echo err >&2"}, want: "out\nerr\n"},
		{name: "stdin", in: "flush ruleset\n", args: []string{"cat"}, want: "flush ruleset\n"},
		{name: "failure names the command and its output", args: []string{"sh", "-c", "echo no such device; exit 3"},
			want: "no such device\n", wantErr: "sh -c echo no such device; exit 3: exit status 3: no such device"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out []byte
			var err error
			if tc.in != "" {
				out, err = RunInput(context.Background(), strings.NewReader(tc.in), tc.args[0], tc.args[1:]...)
			} else {
				out, err = Run(context.Background(), tc.args[0], tc.args[1:]...)
			}
			if string(out) != tc.want {
				t.Errorf("output %q, want %q", out, tc.want)
			}
			if (err == nil) != (tc.wantErr == "") || (err != nil && err.Error() != tc.wantErr) {
				t.Errorf("err %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestRunCancelled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Run(ctx, "sleep", "10")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || time.Since(start) > 5*time.Second {
		t.Fatalf("err %v after %v; want the command killed at the deadline", err, time.Since(start))
	}
}

// A command that dies of a stop signal before it could leave the agent's
// group (the fork race) is run again; one that always does, at most
// forkRaceTries times; other failures, once.
func TestRunAgainAfterStopSignal(t *testing.T) {
	dir := t.TempDir()
	count := func() int {
		b, _ := os.ReadFile(dir + "/runs")
		return strings.Count(string(b), "x")
	}
	for _, tc := range []struct {
		name     string
		script   string
		wantRuns int
		wantErr  bool
	}{
		{"killed once, then runs", `echo -n x >> runs; [ $(wc -c < runs) -gt 1 ] || kill -s TERM $$; echo ok`, 2, false},
		{"always killed", `echo -n x >> runs; kill -s INT $$`, forkRaceTries, true},
		{"a plain failure is not repeated", `echo -n x >> runs; exit 1`, 1, true},
		{"another signal is not repeated", `echo -n x >> runs; kill -s KILL $$`, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_ = os.Remove(dir + "/runs")
			_, err := RunInput(context.Background(), strings.NewReader(tc.script), "sh", "-c", "cd "+dir+" && exec sh -s")
			if (err != nil) != tc.wantErr || count() != tc.wantRuns {
				t.Errorf("err %v, runs %d; want error %v, runs %d", err, count(), tc.wantErr, tc.wantRuns)
			}
		})
	}
}
