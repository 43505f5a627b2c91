package integration

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// relinkSched is a titus-scheduler process that is killed -9 and started
// again on the same address and data dir: the new process finds the dead
// leader's lease in the embedded etcd and stays a standby until it
// expires (--election-ttl), then leads.
type relinkSched struct {
	*schedProc
	proc *testenv.Process
	n    int
}

func (s *relinkSched) start() {
	s.t.Helper()
	s.n++
	cmd := exec.Command(testenv.SchedulerBinary(s.t), "serve", "--data-dir", filepath.Join(s.dir, "data"), "--listen", s.addr,
		"--metrics-listen", "", "--election-ttl", "3s", "--agent-ttl", "10s")
	s.proc = testenv.StartProcess(s.t, s.dir, fmt.Sprintf("scheduler-%d", s.n), cmd)
	name := fmt.Sprintf("scheduler-%d", s.n)
	logPath := s.proc.LogPath
	s.t.Cleanup(func() {
		if s.t.Failed() {
			s.t.Logf("%s log (last 60 lines):\n%s", name, tailLog(readFile(logPath)))
		}
	})
}

func (s *relinkSched) kill9() {
	_ = syscall.Kill(s.proc.Cmd.Process.Pid, syscall.SIGKILL)
	_ = s.proc.Cmd.Wait()
}

// leads waits until the API answers (only the leader does) and returns when.
func (s *relinkSched) leads(within time.Duration) time.Time {
	s.t.Helper()
	waitUntil(s.t, fmt.Sprintf("scheduler-%d leads", s.n), within, func() (bool, string) {
		out, err := s.cli("--timeout", "2s", "job", "ls")
		return err == nil, out
	})
	return time.Now()
}

// TestSchedulerRestartAgentRelinks: the only scheduler is killed -9 and
// started again on its address and data dir, three times: at once (a
// standby for the election TTL, then leader), after a pause, and once
// killed again while still a standby. Each time the real agent, with two
// tasks running, must be registered with the new leader within a few
// seconds of it leading (the agent TTL is 10s): its tasks are never
// declared lost and keep running, unreplaced. The tasks have HTTP health
// checks, dialled from inside their network namespaces: the CI failure
// this guards against was a health check dial that left an agent thread in
// a task's namespace, from where the agent's reconnect was refused for
// over a minute, and its running tasks were lost.
func TestSchedulerRestartAgentRelinks(t *testing.T) {
	begin(t)
	s := &relinkSched{schedProc: &schedProc{t: t, addr: testenv.Addr(testenv.FreePort(t)), dir: t.TempDir()}}
	s.start()
	testenv.WaitTCP(t, s.addr, s.proc, 60*time.Second)
	s.leads(60 * time.Second)
	reg := testenv.StartRegistry(t)
	image := testenv.PushBusybox(t, reg, "busybox", "latest")
	a := startLinkedAgent(t, testenv.StartContainerd(t), reg, s.schedProc, "host-relink", "us-east-1a")
	connected := func() (bool, string) {
		out, _ := s.cli("--timeout", "2s", "agent", "ls")
		return strings.Count(out, "connected") == 1, out
	}
	waitUntil(t, "agent registered", 30*time.Second, connected)
	s.submit(fmt.Sprintf(`name: relink
ownerEmail: tests@example.com
application: it
service: {min: 2, desired: 2, max: 2}
task:
  image: %s
  command: [sh, -c, "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"]
  killGracePeriodSeconds: 1
  resources: {cpuMillicores: 100, memoryMib: 32}
  healthCheck: {kind: http, port: 8080, path: /index.html, interval: 1s, timeout: 1s, healthyThreshold: 1, unhealthyThreshold: 2}
`, image))
	waitUntil(t, "both tasks running", 60*time.Second, func() (bool, string) {
		r := running(a)
		return len(r) == 2, fmt.Sprint(r)
	})
	tasks := running(a)
	slices.Sort(tasks)

	for _, round := range []struct {
		name string
		gap  time.Duration
		// killStandby kills the new process once more while it is still
		// a standby (before the dead leader's lease expires).
		killStandby bool
	}{
		{name: "at once"},
		{name: "after 2s", gap: 2 * time.Second},
		{name: "killed again as a standby", killStandby: true},
	} {
		s.kill9()
		time.Sleep(round.gap)
		s.start()
		if round.killStandby {
			testenv.WaitTCP(t, s.addr, s.proc, 30*time.Second)
			time.Sleep(time.Second) // serving, not leading: the lease has 3s to run
			s.kill9()
			s.start()
		}
		led := s.leads(60 * time.Second)
		// Well within the agent TTL (10s): the agent's backoff tops at 3s.
		waitUntil(t, round.name+": agent registered with the new leader", 6*time.Second, connected)
		t.Logf("%s: agent back %.1fs after the new leader answered", round.name, time.Since(led).Seconds())
		if r := running(a); !slices.Equal(sorted(r), tasks) {
			t.Fatalf("%s: running on the agent %v, want %v unchanged", round.name, r, tasks)
		}
	}
	// Past the agent TTL of the last leader: nothing was lost or replaced.
	time.Sleep(11 * time.Second)
	if ok, out := connected(); !ok {
		t.Fatalf("agent not connected after the TTL:\n%s", out)
	}
	if r := running(a); !slices.Equal(sorted(r), tasks) {
		t.Fatalf("after the TTL: running %v, want %v unchanged", r, tasks)
	}
	for i := 1; i <= s.n; i++ {
		if log := readFile(filepath.Join(s.dir, fmt.Sprintf("scheduler-%d.log", i))); strings.Contains(log, "agent lost") {
			t.Errorf("scheduler-%d declared the agent lost:\n%s", i, tailLog(log))
		}
	}
}

func sorted(l []string) []string { slices.Sort(l); return l }

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

// muteScheduler is a hostile (or wedged) peer on a scheduler address: it
// takes the agent's stream and registration and never answers.
type muteScheduler struct {
	schedv1.UnimplementedSchedulerServer
	streams atomic.Int32
}

func (m *muteScheduler) Connect(stream schedv1.Scheduler_ConnectServer) error {
	m.streams.Add(1)
	_, _ = stream.Recv()
	<-stream.Context().Done()
	return nil
}

// TestSchedulerMuteReplicaDoesNotHoldTheAgent: the agent's scheduler
// address lists a peer that takes the stream and the registration and
// never answers, before the real scheduler. The agent gives up on it
// after the registration timeout and registers with the real one, and
// does so again after the real one is killed -9 and restarted: the mute
// peer costs it seconds, never its tasks.
func TestSchedulerMuteReplicaDoesNotHoldTheAgent(t *testing.T) {
	begin(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mute := &muteScheduler{}
	srv := grpc.NewServer()
	schedv1.RegisterSchedulerServer(srv, mute)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)

	s := &relinkSched{schedProc: &schedProc{t: t, addr: testenv.Addr(testenv.FreePort(t)), dir: t.TempDir()}}
	s.start()
	testenv.WaitTCP(t, s.addr, s.proc, 60*time.Second)
	s.leads(60 * time.Second)
	reg := testenv.StartRegistry(t)
	listed := &schedProc{t: t, addr: lis.Addr().String() + "," + s.addr, dir: s.dir}
	startLinkedAgent(t, testenv.StartContainerd(t), reg, listed, "host-mute", "us-east-1a")
	connected := func() (bool, string) {
		out, _ := s.cli("--timeout", "2s", "agent", "ls")
		return strings.Count(out, "connected") == 1, out
	}
	// One registration timeout (5s) on the mute peer, then the scheduler.
	waitUntil(t, "agent registered past the mute peer", 15*time.Second, connected)
	if mute.streams.Load() == 0 {
		t.Fatalf("the agent never tried the mute peer listed first: the test proves nothing")
	}
	s.kill9()
	s.start()
	led := s.leads(60 * time.Second)
	// A round is now the mute peer's timeout, the scheduler and a backoff.
	waitUntil(t, "agent back past the mute peer", 15*time.Second, connected)
	t.Logf("agent back %.1fs after the new leader answered; the mute peer held %d streams", time.Since(led).Seconds(), mute.streams.Load())
}
