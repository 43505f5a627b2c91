package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TB is the subset of testing.TB the helpers use, so benchmarks driven from
// a main package can use them too.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

var _ TB = (testing.TB)(nil)

// CacheBin is where scripts/deps.sh installs built tools.
func CacheBin() string {
	if d := os.Getenv("TITUS_CACHE"); d != "" {
		return filepath.Join(d, "bin")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "titus-agent", "bin")
}

// LookPath finds a required binary in the deps cache or PATH, or fails the
// test saying how to install it.
func LookPath(t TB, name string) string {
	t.Helper()
	if p := filepath.Join(CacheBin(), name); isExec(p) {
		return p
	}
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("prerequisite %q not found (run `make deps`): %v", name, err)
	}
	return p
}

func isExec(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Process is a started child process, logged to a file.
type Process struct {
	Cmd     *exec.Cmd
	LogPath string
}

// StartProcess runs a command with output to a log file in dir and kills its
// process group at cleanup.
func StartProcess(t TB, dir, name string, cmd *exec.Cmd) *Process {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("%s log: %v", name, err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := startOnLockedThread(cmd); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &Process{Cmd: cmd, LogPath: logPath}
	t.Cleanup(func() {
		p.Stop()
		f.Close()
	})
	return p
}

// The kernel sends Pdeathsig when the *thread* that forked the child exits,
// not the process. Go ends threads whose goroutine exits while locked to
// them (as the netns helpers' goroutines do), so a child forked from such
// a thread would be killed in the middle of a test. Children are forked
// from one goroutine locked to its thread for the life of the test binary:
// they die with the binary, never before.
var starts = make(chan startReq)

type startReq struct {
	cmd *exec.Cmd
	err chan error
}

func init() {
	go func() {
		runtime.LockOSThread() // never unlocked: the thread lives as long as the process
		for r := range starts {
			r.err <- r.cmd.Start()
		}
	}()
}

func startOnLockedThread(cmd *exec.Cmd) error {
	r := startReq{cmd: cmd, err: make(chan error, 1)}
	starts <- r
	return <-r.err
}

// Stop terminates the process (SIGTERM, then SIGKILL after 5s) and waits.
func (p *Process) Stop() {
	if p.Cmd.Process == nil || p.Cmd.ProcessState != nil {
		return
	}
	pid := p.Cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.Cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-done
	}
}

// Log returns the process's output so far, for failure messages.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// WaitTCP waits until addr accepts connections or fails the test.
func WaitTCP(t TB, addr string, p *Process, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(Scaled(timeout))
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if p != nil && p.Cmd.ProcessState != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	log := ""
	if p != nil {
		log = p.Log()
	}
	t.Fatalf("%s did not come up within %s:\n%s", addr, timeout, tail(log, 40))
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Addr formats a loopback address.
func Addr(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }

// TimeScaleEnv names a whole factor by which Scaled stretches the helpers'
// waits, for machines far slower than the one the timeouts were set on (the
// VM lane's emulated guest sets it); 1 when unset.
const TimeScaleEnv = "TITUS_TEST_TIME_SCALE"

// Scaled is d times $TITUS_TEST_TIME_SCALE.
func Scaled(d time.Duration) time.Duration {
	if n, err := strconv.Atoi(os.Getenv(TimeScaleEnv)); err == nil && n > 1 {
		return d * time.Duration(n)
	}
	return d
}
