package agent

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// activationChildEnv makes the test binary act as a socket-activated agent.
const activationChildEnv = "TITUS_TEST_ACTIVATION_CHILD"

// TestActivatedListenerChild is the child side of TestSocketActivation: it
// takes the listener systemd would pass and answers one connection.
func TestActivatedListenerChild(t *testing.T) {
	if os.Getenv(activationChildEnv) == "" {
		return // only meaningful when started by TestSocketActivation
	}
	l, err := activatedListener()
	if err != nil || l == nil {
		t.Fatalf("activatedListener = %v, %v", l, err)
	}
	c, err := l.Accept()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("served by pid " + strconv.Itoa(os.Getpid()) + "\n")); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// TestSocketActivation passes a bound unix listener as fd 3 with LISTEN_FDS
// and LISTEN_PID, as systemd does, to a child that must serve it.
func TestSocketActivation(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer l.Close()
	f, err := l.File()
	if err != nil {
		t.Fatalf("listener fd: %v", err)
	}
	defer f.Close()

	// LISTEN_PID must be the child's own pid: let a shell set it and exec.
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" -test.run='^TestActivatedListenerChild$' -test.count=1`, os.Args[0])
	cmd.Env = append(os.Environ(), activationChildEnv+"=1", "LISTEN_FDS=1", "LISTEN_FDNAMES=agent.sock")
	cmd.ExtraFiles = []*os.File{f} // becomes fd 3
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}
	var waitErr error
	done := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})

	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read from activated child: %v (child output: %s)", err, out.String())
	}
	if want := "served by pid " + strconv.Itoa(cmd.Process.Pid) + "\n"; line != want {
		t.Errorf("got %q, want %q", line, want)
	}
	<-done
	if waitErr != nil {
		t.Errorf("child: %v\n%s", waitErr, out.String())
	}
}

func TestNoActivation(t *testing.T) {
	for name, env := range map[string][2]string{
		"not activated":     {"", ""},
		"another process's": {"1", "1"}, // fds meant for pid 1 are not ours
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv("LISTEN_FDS", env[0])
			t.Setenv("LISTEN_PID", env[1])
			l, err := activatedListener()
			if err != nil || l != nil {
				t.Errorf("activatedListener = %v, %v; want nil, nil", l, err)
			}
		})
	}
}
