package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"google.golang.org/protobuf/encoding/protojson"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// termSession is a CLI run on a pseudo-terminal the test holds, as an
// operator's terminal would.
type termSession struct {
	t    *testing.T
	cmd  *exec.Cmd
	ptmx *os.File
	mu   sync.Mutex
	out  bytes.Buffer
	mark int // expect searches from here
	done chan struct{}
	read chan struct{} // closed when the terminal's output is all read
	err  error
}

func startTerm(t *testing.T, args ...string) *termSession {
	t.Helper()
	return startTermBin(t, titusAgentBinary(t), args...)
}

func startTermBin(t *testing.T, bin string, args ...string) *termSession {
	t.Helper()
	cmd := exec.Command(bin, args...)
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 24, Cols: 80})
	if err != nil {
		t.Fatal(err)
	}
	s := &termSession{t: t, cmd: cmd, ptmx: ptmx, done: make(chan struct{}), read: make(chan struct{})}
	go func() {
		defer close(s.read)
		buf := make([]byte, 4096)
		for {
			n, err := ptmx.Read(buf)
			s.mu.Lock()
			s.out.Write(buf[:n])
			s.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	go func() { s.err = cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-s.done
		ptmx.Close()
	})
	return s
}

func (s *termSession) send(text string) {
	s.t.Helper()
	if _, err := s.ptmx.Write([]byte(text)); err != nil {
		s.t.Fatalf("type %q: %v", text, err)
	}
}

// expect waits for re past the last match and returns its submatches.
func (s *termSession) expect(re string) []string {
	s.t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(testenv.Scaled(30 * time.Second))
	for {
		s.mu.Lock()
		b := s.out.String()[s.mark:]
		if loc := rx.FindStringSubmatchIndex(b); loc != nil {
			m := rx.FindStringSubmatch(b)
			s.mark += loc[1]
			s.mu.Unlock()
			return m
		}
		s.mu.Unlock()
		select {
		case <-s.done:
			s.mu.Lock()
			b = s.out.String()[s.mark:]
			s.mu.Unlock()
			if rx.MatchString(b) {
				return rx.FindStringSubmatch(b)
			}
			s.t.Fatalf("client exited (%v) before %q; output since last match: %q", s.err, re, b)
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("never saw %q; output since last match: %q", re, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wait returns the client's exit code.
func (s *termSession) wait() int {
	s.t.Helper()
	select {
	case <-s.done:
	case <-time.After(testenv.Scaled(30 * time.Second)):
		s.t.Fatalf("client did not exit; output: %q", s.out.String())
	}
	// What the client wrote just before it exited may still be in the
	// terminal's buffer: read it all (a process it left behind holding the
	// terminal ends the wait after a while, not the test).
	select {
	case <-s.read:
	case <-time.After(testenv.Scaled(5 * time.Second)):
	}
	var ee *exec.ExitError
	if errors.As(s.err, &ee) {
		return ee.ExitCode()
	}
	if s.err != nil {
		s.t.Fatalf("client: %v", s.err)
	}
	return 0
}

// procsLike lists the task's processes whose command line matches re,
// read by a separate exec (ps inside the task).
func (e *agentEnv) procsLike(id, re string) []string {
	e.t.Helper()
	out, err := e.ctrExec(id, "ps", "-o", "pid,args")
	if err != nil {
		e.t.Fatalf("ps in %s: %v: %s", id, err, out)
	}
	rx := regexp.MustCompile(re)
	var got []string
	for _, l := range strings.Split(out, "\n") {
		if rx.MatchString(l) {
			got = append(got, strings.TrimSpace(l))
		}
	}
	return got
}

func (e *agentEnv) waitProcs(id, re string, present bool) {
	e.t.Helper()
	deadline := time.Now().Add(testenv.Scaled(30 * time.Second))
	for {
		got := e.procsLike(id, re)
		if (len(got) > 0) == present {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("processes like %q in %s: %v, want present=%v\nagent log:\n%s", re, id, got, present, tailLog(e.agent.Log()))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// hostProcsLike lists host processes whose command line matches re.
func hostProcsLike(re string) []string {
	rx := regexp.MustCompile(re)
	var got []string
	ents, _ := os.ReadDir("/proc")
	for _, d := range ents {
		if _, err := strconv.Atoi(d.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if c := strings.ReplaceAll(string(bytes.TrimRight(b, "\x00")), "\x00", " "); rx.MatchString(c) {
			got = append(got, d.Name()+" "+c)
		}
	}
	return got
}

// TestExecInteractiveTerminal drives `task exec -it ID -- sh` through a
// pseudo-terminal: prompt, commands, window size, Ctrl-C and Ctrl-\ to the
// process inside, and the exit code back.
func TestExecInteractiveTerminal(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	e.launch(e.spec("box", "sleep", "100000"))
	e.waitState("box", stRunning, 60*time.Second)

	s := startTerm(t, "--socket", e.socket, "task", "exec", "-it", "box", "--", "sh")
	s.expect(`[#$] `)
	s.send("echo hello-$((6*7))\r")
	s.expect(`hello-42`)
	s.send("stty size\r")
	s.expect(`24 80`)
	s.send("tty\r")
	s.expect(`/dev/pts/\d+`)

	// A resize reaches the terminal inside (SIGWINCH → resize message);
	// asked until it shows, as the signal and the typing race.
	if err := pty.Setsize(s.ptmx, &pty.Winsize{Rows: 50, Cols: 132}); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		s.send("stty size\r")
		m := s.expect(`\r\n(\d+ \d+)\r\n`)
		if m[1] == "50 132" {
			break
		}
		if i > 100 {
			t.Fatalf("stty size inside stays %q after the resize", m[1])
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Ctrl-C goes to the foreground process inside, not to the client.
	// The shell abandons the rest of an interrupted command line (as any
	// shell does), so the status is asked for on the next one.
	s.send("sleep 1001\r")
	e.waitProcs("box", `sleep 1001`, true)
	s.send("\x03")
	e.waitProcs("box", `sleep 1001`, false)
	s.send("echo after-int-$?\r")
	s.expect(`after-int-130`)
	s.send("sleep 1002\r")
	e.waitProcs("box", `sleep 1002`, true)
	s.send("\x1c")
	e.waitProcs("box", `sleep 1002`, false)
	s.send("echo after-quit-$?\r")
	s.expect(`after-quit-131`)

	s.send("exit 7\r")
	if code := s.wait(); code != 7 {
		t.Fatalf("client exit code %d, want 7; output %q", code, s.out.String())
	}
	// The non-interactive form is unchanged.
	if out, err := e.cli("task", "exec", "box", "--", "sh", "-c", "echo piped; exit 3"); !strings.Contains(out, "piped") || exitOf(err) != 3 {
		t.Fatalf("plain exec: %q %v", out, err)
	}
}

func exitOf(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// TestExecEndsWithTheTask: killing the task ends its exec sessions; no
// process of theirs survives it.
func TestExecEndsWithTheTask(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	e.launch(e.spec("box", "sleep", "100000"))
	e.waitState("box", stRunning, 60*time.Second)
	s := startTerm(t, "--socket", e.socket, "task", "exec", "-it", "box", "--", "sh")
	s.expect(`[#$] `)
	s.send("sleep 1006 & sleep 1007\r")
	e.waitProcs("box", `sleep 1007`, true)
	if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: "box", GracePeriodSeconds: 1}); err != nil {
		t.Fatal(err)
	}
	if code := s.wait(); code == 0 {
		t.Fatalf("client exited 0 though its task was killed; output %q", s.out.String())
	}
	e.waitFinal("box")
	e.waitNoContainer("box")
	if left := hostProcsLike(`^sleep 100[67]$`); len(left) > 0 {
		t.Fatalf("exec processes outlived their task: %v", left)
	}
}

// TestExecClientKilledLeavesNothing (attack): the client dies mid-session
// (SIGKILL) after the shell started children that try to outlive it: a
// background job, a setsid'd one (its own session, re-parented to the
// task's init) and a double-forked setsid'd one (out of the shell's tree
// and session at once). All go within a bound; the task runs on.
func TestExecClientKilledLeavesNothing(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	e.launch(e.spec("box", "sleep", "100000"))
	e.waitState("box", stRunning, 60*time.Second)
	taskPid := e.containerPid("box")

	s := startTerm(t, "--socket", e.socket, "task", "exec", "-it", "box", "--", "sh")
	s.expect(`[#$] `)
	s.send("sleep 1003 & setsid sleep 1004 & (setsid sleep 1009 &); sleep 1005\r")
	for _, re := range []string{`sleep 1003`, `sleep 1004`, `sleep 1005`, `sleep 1009`} {
		e.waitProcs("box", re, true)
	}
	if sub := execCgroups(t, taskPid); len(sub) != 1 {
		t.Fatalf("exec session cgroups below the task's: %v, want one", sub)
	}
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	s.wait()
	deadline := time.Now().Add(testenv.Scaled(10 * time.Second))
	for len(hostProcsLike(`^sleep 100[3459]$`)) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if left := hostProcsLike(`^sleep 100[3459]$`); len(left) > 0 {
		t.Fatalf("10s after the client's SIGKILL, left running: %v\nagent log:\n%s", left, tailLog(e.agent.Log()))
	}
	if left := e.procsLike("box", `sleep 100[3459]|\bsh$`); len(left) > 0 {
		t.Fatalf("left in the task: %v", left)
	}
	if sub := execCgroups(t, taskPid); len(sub) != 0 {
		t.Fatalf("exec session cgroups left: %v", sub)
	}
	// The session's slot is free again and the task is untouched.
	if st := e.get("box").GetState(); st != stRunning || e.containerPid("box") != taskPid {
		t.Fatalf("task is %s (pid %s, was %s) after its exec client died", st, e.containerPid("box"), taskPid)
	}
	if out, err := e.cli("task", "exec", "-i", "box", "--", "echo", "again"); err != nil || !strings.Contains(out, "again") {
		t.Fatalf("exec after the kill: %q %v", out, err)
	}
	// A command that exits by itself takes what it left running with it,
	// and does not wait for it (its output stays open in a daemon).
	if out, err := e.cli("task", "exec", "box", "--", "sh", "-c", "sleep 0.3; (setsid sleep 1008 &); echo started"); err != nil || !strings.Contains(out, "started") {
		t.Fatalf("exec leaving a daemon: %q %v", out, err)
	}
	if left := hostProcsLike(`^sleep 1008$`); len(left) > 0 {
		t.Fatalf("a finished exec left running: %v", left)
	}
	// The same at once, racing the agent's move of the exec into its
	// cgroup (docs/exec.md, Limit): whichever wins, the session ends.
	done := make(chan error, 1)
	go func() {
		_, err := e.cli("task", "exec", "box", "--", "sh", "-c", "(setsid sleep 1010 &); echo started")
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exec racing a daemon: %v", err)
		}
	case <-time.After(testenv.Scaled(15 * time.Second)):
		t.Fatalf("an exec whose daemon holds its output open never ended")
	}
}

// execCgroups lists the exec session cgroups below the cgroup of the
// task whose init is pid (freezer on cgroup v1, the unified one on v2).
func execCgroups(t *testing.T, pid string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + pid + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(l, ":", 3)
		var dir string
		switch {
		case len(parts) != 3:
			continue
		case parts[1] == "freezer":
			dir = filepath.Join("/sys/fs/cgroup/freezer", parts[2])
		case parts[0] == "0" && parts[1] == "":
			if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
				continue
			}
			dir = filepath.Join("/sys/fs/cgroup", parts[2])
		default:
			continue
		}
		got, _ := filepath.Glob(filepath.Join(dir, "titus-exec-*"))
		return got
	}
	t.Fatalf("no freezer or unified cgroup in %s", b)
	return nil
}

// TestExecHoldsNoMoreThanTheTask (attack): whatever is exec'd has exactly
// the task's capabilities, namespaces and cgroup, with and without a
// terminal.
func TestExecHoldsNoMoreThanTheTask(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	probe := `grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; cat /proc/self/cgroup; id; for n in pid mnt net ipc uts user cgroup; do echo $n $(readlink /proc/self/ns/$n); done`
	e.launch(e.spec("box", "sh", "-c", probe+"; echo PROBE-END; exec sleep 100000"))
	e.waitState("box", stRunning, 60*time.Second)
	e.waitLog("box", "PROBE-END")
	logOut, _ := e.cli("task", "logs", "box")
	want := strings.TrimSpace(strings.Split(logOut, "PROBE-END")[0])
	if !strings.Contains(want, "CapEff") || !strings.Contains(want, "net net:") {
		t.Fatalf("task's own probe: %q", want)
	}
	// The terminal forms (-t, -it) want a terminal on the caller's side:
	// TestExecInteractiveTerminal drives them through a pseudo-terminal,
	// TestExecTTYFromAPipe checks they are refused without one.
	for _, flags := range [][]string{nil, {"-i"}} {
		args := append([]string{"task", "exec"}, flags...)
		out, err := e.cli(append(args, "box", "--", "sh", "-c", probe)...)
		if err != nil {
			t.Fatalf("exec %v: %v: %s", flags, err, out)
		}
		got := strings.TrimSpace(strings.ReplaceAll(out, "\r\n", "\n"))
		// The exec runs in its session's cgroup, a child of the task's in
		// the freezer (v1) or unified (v2) hierarchy: the same limits, and
		// nothing it starts outlives the session. Seen from inside, that is
		// the task's path plus /titus-exec-ID on that one line (or the
		// task's own, when the probe read it before the agent moved it).
		sub := regexp.MustCompile(`(?m)^(\d+:(freezer)?:[^\n]*)/titus-exec-exec-[0-9a-f]{8}$`)
		if n := len(sub.FindAllString(got, -1)); n > 1 {
			t.Errorf("exec %v: %d lines of its session's cgroup, want at most 1:\n%s", flags, n, got)
		}
		got = sub.ReplaceAllString(got, "$1")
		if got != want {
			t.Errorf("exec %v sees more or other than its task:\n got: %s\nwant: %s", flags, got, want)
		}
	}
}

// TestExecTTYFromAPipe: -t with stdin from a pipe (or /dev/null) is
// refused before anything runs, saying to leave out -t; without a terminal
// to hold, the end of the piped input used to hang up the command's
// terminal while it still ran (exit 129). -i from the same pipe works.
func TestExecTTYFromAPipe(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	e.launch(e.spec("box", "sleep", "100000"))
	e.waitState("box", stRunning, 60*time.Second)
	for _, flags := range [][]string{{"-t"}, {"-it"}, {"-i", "-t"}} {
		cmd := exec.Command(titusAgentBinary(t), append(append([]string{"--socket", e.socket, "task", "exec"}, flags...), "box", "--", "sh", "-c", "echo ran > /tmp/tty-ran; cat")...)
		cmd.Stdin = strings.NewReader("piped\n")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "-t needs a terminal on stdin") || !strings.Contains(string(out), "leave out -t") {
			t.Fatalf("exec %v from a pipe: %v %q, want refused", flags, err, out)
		}
	}
	if out, err := e.ctrExec("box", "ls", "/tmp"); err != nil || strings.Contains(out, "tty-ran") {
		t.Fatalf("a refused -t exec ran its command (ls /tmp: %q %v)", out, err)
	}
	cmd := exec.Command(titusAgentBinary(t), "--socket", e.socket, "task", "exec", "-i", "box", "--", "cat")
	cmd.Stdin = strings.NewReader("piped\n")
	if out, err := cmd.CombinedOutput(); err != nil || string(out) != "piped\n" {
		t.Fatalf("exec -i from a pipe: %v %q", err, out)
	}
}

// TestExecSessionBound (attack): flooding a task with sessions hits
// exec.maxSessionsPerTask with a clear error; ending one frees its slot.
func TestExecSessionBound(t *testing.T) {
	begin(t)
	e := newAgentEnvConfig(t, "exec:\n  maxSessionsPerTask: 2\n  maxSessionsPerHost: 3\n")
	e.launch(e.spec("box", "sleep", "100000"))
	e.waitState("box", stRunning, 60*time.Second)
	type held struct {
		cmd   *exec.Cmd
		stdin io.WriteCloser
	}
	var sessions []held
	for i := range 2 {
		cmd := exec.Command(titusAgentBinary(t), "--socket", e.socket, "task", "exec", "-i", "box", "--", "sh", "-c", "read x; echo got-$x")
		in, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		sessions = append(sessions, held{cmd, in})
		_ = out
		e.waitProcs("box", `read x|sh -c read`, true)
		_ = i
	}
	// Both sessions are up once two shells wait in read.
	deadline := time.Now().Add(testenv.Scaled(30 * time.Second))
	for len(e.procsLike("box", `sh -c read x`)) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("sessions not up: %v", e.procsLike("box", `.`))
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, err := e.cli("task", "exec", "-i", "box", "--", "true")
	if err == nil || !strings.Contains(out, "exec.maxSessionsPerTask") || !strings.Contains(out, "too many exec sessions") {
		t.Fatalf("third session: %q %v, want refused naming exec.maxSessionsPerTask", out, err)
	}
	fmt.Fprintln(sessions[0].stdin, "one")
	if err := sessions[0].cmd.Wait(); err != nil {
		t.Fatalf("first session: %v", err)
	}
	if out, err := e.cli("task", "exec", "-i", "box", "--", "echo", "freed"); err != nil || !strings.Contains(out, "freed") {
		t.Fatalf("a freed slot is not usable: %q %v", out, err)
	}
}

// TestTaskInspectAndTop: inspect shows the applied spec with secret
// values redacted and the limits read back from the cgroup; top lists the
// task's processes with their pids inside and on the host.
func TestTaskInspectAndTop(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	s := e.spec("box", "sh", "-c", "sleep 100000 & exec sleep 200000")
	s.Env = map[string]string{"DB_PASSWORD": "hunter2", "MODE": "prod", "CUSTOM": "marked-secret"}
	s.Labels = map[string]string{"titus.task/secret-env": "CUSTOM"}
	e.launch(s)
	e.waitState("box", stRunning, 60*time.Second)
	out, err := e.cli("task", "inspect", "box")
	if err != nil {
		t.Fatalf("inspect: %v\n%s", err, out)
	}
	for _, want := range []string{"DB_PASSWORD=<redacted>", "CUSTOM=<redacted>", "MODE=prod", "Cgroup:", "\"mounts\"", "pids.max"} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect lacks %q:\n%s", want, out)
		}
	}
	for _, leak := range []string{"hunter2", "marked-secret"} {
		if strings.Contains(out, leak) {
			t.Errorf("inspect shows the secret value %q", leak)
		}
	}
	if !strings.Contains(out, "memory.limit_in_bytes    67108864") && !strings.Contains(out, "memory.max                67108864") {
		t.Errorf("inspect does not read back the 64 MiB memory limit:\n%s", out)
	}
	var top struct {
		Processes []struct {
			HostPid int    `json:"hostPid"`
			Pid     int    `json:"pid"`
			Command string `json:"command"`
		} `json:"processes"`
	}
	waitUntil(t, "top shows both sleeps", testenv.Scaled(30*time.Second), func() (bool, string) {
		out, err := e.cli("task", "top", "box", "-o", "json")
		if err != nil {
			return false, out
		}
		if err := json.Unmarshal([]byte(out), &top); err != nil {
			return false, out
		}
		var cmds []string
		for _, p := range top.Processes {
			cmds = append(cmds, p.Command)
		}
		return slices.Contains(cmds, "sleep 100000") && slices.Contains(cmds, "sleep 200000"), fmt.Sprint(cmds)
	})
	for _, p := range top.Processes {
		if p.Command == "sleep 200000" && (p.Pid < 1 || p.HostPid <= p.Pid) {
			t.Errorf("top: main process pid %d in task, %d on host", p.Pid, p.HostPid)
		}
	}
}

// TestTaskInspectReadsBack: inspect reads, inside a running task with a
// VPC address, a disk quota and the metadata service, its interfaces,
// addresses and routes, the metadata listener found listening, its root
// filesystem's use against the quota, and prints the launch's steps.
func TestTaskInspectReadsBack(t *testing.T) {
	begin(t)
	m := startMetadataAgent(t, "15m", "isolation:\n  diskDir: {{DIR}}/disks\n")
	e := m.agentEnv
	s := e.spec("box", "sh", "-c", "dd if=/dev/zero of=/fill bs=1M count=4 && echo FILLED && exec sleep 100000")
	s.Resources.DiskMib = 32
	e.launch(s)
	tk := e.waitState("box", stRunning, 60*time.Second)
	e.waitLog("box", "FILLED")
	ip := tk.GetNetwork().GetIpv4()

	out, err := e.cli("task", "inspect", "box", "-o", "json")
	if err != nil {
		t.Fatalf("inspect: %v\n%s", err, out)
	}
	var r agentv1.InspectTaskResponse
	if err := protojson.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("inspect -o json: %v\n%s", err, out)
	}
	var addrs []string
	for _, i := range r.GetInterfaces() {
		addrs = append(addrs, i.GetAddresses()...)
	}
	if !slices.ContainsFunc(addrs, func(a string) bool { return strings.HasPrefix(a, ip+"/") }) || !slices.Contains(addrs, "127.0.0.1/8") {
		t.Errorf("interfaces: addresses %v, want the task's %s and loopback", addrs, ip)
	}
	if !slices.ContainsFunc(r.GetRoutes(), func(rt string) bool { return strings.HasPrefix(rt, "default via ") }) {
		t.Errorf("routes %v: no default route", r.GetRoutes())
	}
	if !slices.Contains(r.GetMetadataListeners(), "169.254.169.254:80") {
		t.Errorf("metadata listeners %v, want 169.254.169.254:80", r.GetMetadataListeners())
	}
	d := r.GetDisk()
	if d.GetQuotaMib() != 32 || d.GetSizeBytes() > 33<<20 || d.GetSizeBytes() < 16<<20 || d.GetUsedBytes() < 4<<20 || d.GetAvailableBytes() > d.GetSizeBytes() {
		t.Errorf("disk %v: want a 32 MiB quota read back with the 4 MiB written", d)
	}
	human, err := e.cli("task", "inspect", "box")
	if err != nil {
		t.Fatalf("inspect: %v\n%s", err, human)
	}
	for _, want := range []string{"Interfaces (in the task's netns):", ip + "/", "Routes:", "Metadata: 169.254.169.254:80", "Disk:", "quota 32MiB", "Launch steps (from accepted):", "  network", "  metadata", "  disk"} {
		if !strings.Contains(human, want) {
			t.Errorf("inspect lacks %q:\n%s", want, human)
		}
	}
}

// TestExecUserNamespaceTask: an exec into a task in its own user namespace
// whose network namespace the agent made (so the host's user namespace owns
// it) runs inside the task. A shell there is root in the task's user
// namespace and, seen from the host, the task's unprivileged mapped uid, in
// the task's network namespace with the task's address; its exit code comes
// back and it leaves the task running and nothing behind. runc before the
// two-stage namespace join (1.1, Debian 12's) refused this exec; the lanes
// run the runc scripts/deps.sh builds. Attack: the exec never lands in the
// host's user namespace, nor as a uid the host knows as root.
func TestExecUserNamespaceTask(t *testing.T) {
	begin(t)
	e, _ := newUserNSNetAgent(t)
	s := e.spec("uns", "sleep", "100000")
	s.Labels, s.Resources.DiskMib = map[string]string{isolation.LabelUserNS: "true"}, 32
	e.launch(s)
	ip := e.waitState("uns", stRunning, 60*time.Second).GetNetwork().GetIpv4()
	taskPid := e.containerPid("uns")
	task := procNS(t, taskPid)
	if host := procNS(t, "self"); task["user"] == host["user"] || task["net"] == host["net"] {
		t.Fatalf("the task is not in a user and network namespace of its own: %v (host: %v)", task, host)
	}
	m, err := os.ReadFile("/proc/" + taskPid + "/uid_map")
	if err != nil {
		t.Fatal(err)
	}
	uidMap := strings.Fields(string(m))
	if len(uidMap) < 3 || uidMap[0] != "0" || uidMap[1] == "0" {
		t.Fatalf("task uid_map %q, want root mapped onto an unprivileged range", m)
	}
	mapped := uidMap[1]

	// Piped: the command's view of its namespaces and address.
	out, err := e.cli("task", "exec", "uns", "--", "sh", "-c", "echo uid=$(id -u); echo user=$(readlink /proc/self/ns/user) net=$(readlink /proc/self/ns/net); ip -4 addr")
	if err != nil {
		t.Fatalf("exec into a user-namespace task: %v\n%s", err, out)
	}
	for _, want := range []string{"uid=0\n", "user=" + task["user"] + " net=" + task["net"] + "\n", "inet " + ip + "/"} {
		if !strings.Contains(out, want) {
			t.Errorf("exec output lacks %q:\n%s", want, out)
		}
	}

	// A terminal: the shell, seen from inside and from the host.
	ts := startTerm(t, "--socket", e.socket, "task", "exec", "-it", "uns", "--", "sh")
	ts.expect(`[#$] `)
	ts.send("echo id=$(id -u) net=$(readlink /proc/self/ns/net) me=$$\r")
	got := ts.expect(`id=(\d+) net=(\S+) me=(\d+)`)
	if got[1] != "0" || got[2] != task["net"] {
		t.Fatalf("exec -it shell: uid %s in netns %s, want 0 in the task's %s", got[1], got[2], task["net"])
	}
	shell := hostPidOf(t, task["pid"], got[3])
	if sh := procNS(t, shell); sh["user"] != task["user"] || sh["net"] != task["net"] || sh["pid"] != task["pid"] {
		t.Errorf("the shell (host pid %s) is in %v, want the task's %v", shell, sh, task)
	}
	if uids := procStatus(t, shell, "Uid"); strings.Join(uids, " ") != strings.Repeat(mapped+" ", 3)+mapped {
		t.Errorf("the shell runs on the host as uids %v, want the task's mapped root %s", uids, mapped)
	}
	ts.send("exit 5\r")
	if code := ts.wait(); code != 5 {
		t.Fatalf("exit code %d, want 5", code)
	}
	if st := e.get("uns").GetState(); st != stRunning || e.containerPid("uns") != taskPid {
		t.Fatalf("task is %s after the exec", st)
	}
	if sub := execCgroups(t, taskPid); len(sub) != 0 {
		t.Fatalf("exec session cgroups left: %v", sub)
	}
}

// procNS reads the user, net and pid namespaces of a process ("self" or a
// pid) as readlink shows them ("net:[4026532]").
func procNS(t *testing.T, pid string) map[string]string {
	t.Helper()
	ns := map[string]string{}
	for _, n := range []string{"user", "net", "pid"} {
		l, err := os.Readlink("/proc/" + pid + "/ns/" + n)
		if err != nil {
			t.Fatal(err)
		}
		ns[n] = l
	}
	return ns
}

// procStatus is the fields of one line of /proc/PID/status.
func procStatus(t *testing.T, pid, key string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == key {
			return strings.Fields(v)
		}
	}
	t.Fatalf("no %s in /proc/%s/status", key, pid)
	return nil
}

// hostPidOf finds the host pid of the process that is inner in the pid
// namespace pidNS.
func hostPidOf(t *testing.T, pidNS, inner string) string {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	for _, d := range ents {
		if _, err := strconv.Atoi(d.Name()); err != nil {
			continue
		}
		if l, err := os.Readlink("/proc/" + d.Name() + "/ns/pid"); err != nil || l != pidNS {
			continue
		}
		b, err := os.ReadFile("/proc/" + d.Name() + "/status")
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) > 1 && f[0] == "NSpid:" && f[len(f)-1] == inner {
				return d.Name()
			}
		}
	}
	t.Fatalf("no process %s in %s", inner, pidNS)
	return ""
}
