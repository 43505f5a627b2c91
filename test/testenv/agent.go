package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
)

var (
	buildMu  sync.Mutex
	built    = map[string]string{}
	buildDir string
)

// RemoveBuilt removes the binaries this process built (about 150 MB a
// run: left behind, every run's copy stayed in the temporary directory).
// Call it once nothing runs them any more, at the end of TestMain.
func RemoveBuilt() {
	buildMu.Lock()
	defer buildMu.Unlock()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
		buildDir, built = "", map[string]string{}
	}
}

// AgentBinary builds cmd/titus-agent once per process into a directory
// everyone can read (tests run the CLI as an unprivileged user too), with
// the task log driver next to it, where the agent looks for it.
func AgentBinary(t TB) string {
	LoggerBinary(t)
	return Binary(t, "titus-agent")
}

// LoggerBinary builds cmd/titus-logger, the task log driver, once per process.
func LoggerBinary(t TB) string { return Binary(t, "titus-logger") }

// SchedulerBinary builds cmd/titus-scheduler once per process.
func SchedulerBinary(t TB) string { return Binary(t, "titus-scheduler") }

// BinDirEnv names a directory of prebuilt cmd/ binaries. Where the tests
// run without a Go toolchain (the VM lane's guest), Binary takes them from
// there instead of building them, and fails if one is missing.
const BinDirEnv = "TITUS_TEST_BIN_DIR"

// Binary builds ./cmd/<name> once per process, or returns the prebuilt one
// from $TITUS_TEST_BIN_DIR.
func Binary(t TB, name string) string {
	t.Helper()
	return build(t, name, "github.com/titus-agent/titus-agent/cmd/"+name, false)
}

// ToolBinary builds ./test/tools/<name> once per process as a small static
// binary (no cgo, no symbols) that runs in any container image, or returns
// the prebuilt one from $TITUS_TEST_BIN_DIR.
func ToolBinary(t TB, name string) string {
	t.Helper()
	return build(t, name, "github.com/titus-agent/titus-agent/test/tools/"+name, true)
}

func build(t TB, name, pkg string, static bool) string {
	t.Helper()
	if dir := os.Getenv(BinDirEnv); dir != "" {
		p := filepath.Join(dir, name)
		if !isExec(p) {
			t.Fatalf("%s=%s has no executable %s", BinDirEnv, dir, name)
		}
		return p
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[name]; ok {
		return p
	}
	if buildDir == "" {
		dir, err := os.MkdirTemp("", "titus-bin")
		if err == nil {
			err = os.Chmod(dir, 0o755)
		}
		if err != nil {
			t.Fatalf("build dir: %v", err)
		}
		buildDir = dir
	}
	p := filepath.Join(buildDir, name)
	cmd := exec.Command("go", "build", "-o", p, pkg)
	if static {
		cmd = exec.Command("go", "build", "-ldflags=-s -w", "-o", p, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, out)
	}
	built[name] = p
	return p
}

// Agent is a titus-agent daemon process with its own socket, state and
// log directories. It can be killed (-9), stopped and started again over
// the same directories.
type Agent struct {
	Dir    string
	Socket string
	Args   []string
	Proc   *Process
	Conn   *grpc.ClientConn
	Client agentv1.AgentClient

	t          TB
	generation int
}

// AgentOptions says what the agent talks to.
type AgentOptions struct {
	Containerd string
	PlainHTTP  []string
	// Config is the YAML config file's content (flags below override it).
	Config string
	Extra  []string
}

// StartAgent starts a daemon and waits until it answers.
func StartAgent(t TB, o AgentOptions) *Agent {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "ta")
	if err != nil {
		t.Fatalf("agent dir: %v", err)
	}
	t.Cleanup(func() { RemoveDir(dir) }) // also what tasks left running still hold
	// {{DIR}} in the config stands for the agent's private directory.
	cfg := strings.ReplaceAll(o.Config, "{{DIR}}", dir)
	if !strings.Contains(cfg, "logLevel:") {
		cfg += "\nlogLevel: debug\n"
	}
	if !strings.Contains(cfg, "isolation:") {
		cfg += "\nisolation:\n  diskDir: " + filepath.Join(dir, "disks") + "\n"
	}
	if !strings.Contains(cfg, "\nsecrets:") && !strings.HasPrefix(cfg, "secrets:") {
		// Not the host-wide /run/titus-agent/secrets another agent reaps.
		cfg += "\nsecrets:\n  dir: " + filepath.Join(dir, "secrets") + "\n"
	}
	if !strings.Contains(cfg, "metricsListen:") {
		cfg += "\nmetricsListen: \"\"\n"
	}
	if err := os.WriteFile(filepath.Join(dir, "agent.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatalf("agent config: %v", err)
	}
	a := &Agent{Dir: dir, Socket: filepath.Join(dir, "agent.sock"), t: t}
	a.Args = []string{"daemon", "--config", filepath.Join(dir, "agent.yaml"),
		"--socket", a.Socket,
		"--state-dir", filepath.Join(dir, "state"),
		"--log-dir", filepath.Join(dir, "logs"),
		"--containerd", o.Containerd,
	}
	for _, h := range o.PlainHTTP {
		a.Args = append(a.Args, "--plain-http-registry", h)
	}
	a.Args = append(a.Args, o.Extra...)
	if strings.Contains(cfg, "scheduler:") {
		// Registered after the directory's removal: runs before it.
		t.Cleanup(func() {
			if f, ok := t.(interface{ Failed() bool }); ok && f.Failed() {
				t.Logf("agent %s scheduler link lines (last %d):\n%s", filepath.Base(dir), linkLines, a.LinkLines(linkLines))
			}
		})
	}
	a.Start()
	return a
}

// linkLines is how many of the agent's scheduler link lines a failed test prints.
const linkLines = 80

// LinkLines is the last n lines of the agent's scheduler link
// (component=schedlink), of every generation of the daemon, each prefixed
// with its log's name: on a failure they tell whether, when and why the
// agent (re)registered.
func (a *Agent) LinkLines(n int) string {
	var lines []string
	for g := 1; g <= a.generation; g++ {
		name := fmt.Sprintf("agent-%d", g)
		b, _ := os.ReadFile(filepath.Join(a.Dir, name+".log"))
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "component=schedlink") {
				lines = append(lines, name+": "+l)
			}
		}
	}
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// Start (re)starts the daemon over the same directories.
func (a *Agent) Start() {
	t := a.t
	t.Helper()
	a.generation++
	cmd := exec.Command(AgentBinary(t), a.Args...)
	// The agent runs runc itself (reaping a killed shim's container): the
	// one containerd runs, from the deps cache, as on the containerd PATH.
	cmd.Env = append(os.Environ(), "PATH="+CacheBin()+":"+os.Getenv("PATH"))
	a.Proc = StartProcess(t, a.Dir, fmt.Sprintf("agent-%d", a.generation), cmd)
	conn, err := grpc.NewClient("unix://"+a.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial agent: %v", err)
	}
	a.Conn, a.Client = conn, agentv1.NewAgentClient(conn)
	t.Cleanup(func() { conn.Close() })
	deadline := time.Now().Add(Scaled(60 * time.Second))
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := a.Client.Version(ctx, &agentv1.VersionRequest{})
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) || a.Proc.Cmd.ProcessState != nil {
			t.Fatalf("agent not answering: %v\n%s", err, tail(a.Proc.Log(), 60))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill9 kills the daemon with no chance to clean up.
func (a *Agent) Kill9() {
	_ = a.Proc.Cmd.Process.Signal(syscall.SIGKILL)
	_, _ = a.Proc.Cmd.Process.Wait()
	a.Conn.Close()
	_ = os.Remove(a.Socket)
}

// Stop stops the daemon gracefully (SIGTERM); tasks keep running.
func (a *Agent) Stop() {
	a.Proc.Stop()
	a.Conn.Close()
}

// Pid is the daemon's process id.
func (a *Agent) Pid() int { return a.Proc.Cmd.Process.Pid }

// Log is the daemon's output so far.
func (a *Agent) Log() string { return tail(a.Proc.Log(), 80) }
