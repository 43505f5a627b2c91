package integration

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// foreignSockets counts the sockets process pid holds in network
// namespaces other than this process's: each descriptor is copied here
// (pidfd_getfd) and asked for its namespace's cookie.
func foreignSockets(t *testing.T, pid int) int {
	t.Helper()
	own, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	host, err := unix.GetsockoptUint64(own, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	unix.Close(own)
	if err != nil {
		t.Fatalf("netns cookie: %v", err)
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("pidfd: %v", err)
	}
	defer unix.Close(pidfd)
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("fds of %d: %v", pid, err)
	}
	n := 0
	for _, ent := range ents {
		if target, _ := os.Readlink(dir + "/" + ent.Name()); !strings.HasPrefix(target, "socket:") {
			continue
		}
		fd, _ := strconv.Atoi(ent.Name())
		dup, err := unix.PidfdGetfd(pidfd, fd, 0)
		if err != nil {
			continue // closed meanwhile
		}
		if c, err := unix.GetsockoptUint64(dup, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE); err == nil && c != host {
			n++
		}
		unix.Close(dup)
	}
	return n
}

// TestAgentPoolsReadyMetadataListeners: with a namespace pool and the
// metadata service, pooled namespaces carry ready metadata listeners. A
// task from the pool reaches metadata as its very first act and gets its
// own identity, never the pool's or another task's (the listener was
// opened before any task owned the namespace). The leak check: after
// launches served from the pool and torn down, one of them before its
// metadata hook ran, the agent holds sockets in other network namespaces
// only for the pool's listeners, 2 per pooled namespace, as before (a
// prepared listener left open would also keep its namespace alive); a
// kill -9 with a full pool leaves nothing the next start does not remove.
func TestAgentPoolsReadyMetadataListeners(t *testing.T) {
	begin(t)
	m := startMetadataAgent(t, "15m", "  namespacePool: 2\n")
	e := m.agentEnv
	waitNetNSPool := func(n int) {
		t.Helper()
		deadline := time.Now().Add(testenv.Scaled(20 * time.Second))
		for metricValue(m.scrape(), `titus_agent_pool_ready{pool="netns"}`) != float64(n) {
			if time.Now().After(deadline) {
				t.Fatalf("namespace pool never held %d\n%s", n, e.agent.Log())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	fds := func() int { return foreignSockets(t, e.agent.Proc.Cmd.Process.Pid) }
	waitNetNSPool(2)
	before := fds()
	if before != 4 {
		t.Fatalf("the agent holds %d sockets in other network namespaces with 2 pooled namespaces, want their 4 listeners", before)
	}

	first := func(id string) *agentv1.TaskSpec {
		return e.spec(id, "sh", "-c", "wget -q -O - http://169.254.169.254/latest/meta-data/instance-id; echo ' first-answer'; "+
			"wget -q -O - http://169.254.169.254/latest/meta-data/local-ipv4; echo ' ip'; exec sleep 1000")
	}
	for _, id := range []string{"pooled-a", "pooled-b"} {
		e.launch(first(id))
		tk := e.waitState(id, stRunning, 30*time.Second)
		e.waitLog(id, id+" first-answer")
		e.waitLog(id, tk.GetNetwork().GetIpv4()+" ip")
	}
	if hits := metricValue(m.scrape(), `titus_agent_pool_takes_total{pool="netns",result="hit"}`); hits != 2 {
		t.Fatalf("pool hits %v, want 2: the tasks did not get pooled namespaces", hits)
	}
	// A task killed as it is accepted, before its metadata hook takes the
	// listeners prepared in its namespace.
	e.launch(first("cut-short"))
	if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: "cut-short"}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"pooled-a", "pooled-b"} {
		if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: id, GracePeriodSeconds: 1}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"pooled-a", "pooled-b", "cut-short"} {
		e.waitFinal(id)
		e.waitNoContainer(id)
	}
	waitNetNSPool(2)
	deadline := time.Now().Add(testenv.Scaled(10 * time.Second))
	for fds() > before {
		if time.Now().After(deadline) {
			t.Fatalf("the agent holds %d sockets in other network namespaces, %d before the launches: prepared listeners leaked (each keeps its namespace alive)\n%s", fds(), before, e.agent.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.assertNoLeftovers()
	e.assertNoNetworkLeftovers()

	e.kill9()
	e.start()
	waitNetNSPool(2)
	e.launch(first("after-restart"))
	e.waitState("after-restart", stRunning, 30*time.Second)
	e.waitLog("after-restart", "after-restart first-answer")
	if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: "after-restart", GracePeriodSeconds: 1}); err != nil {
		t.Fatal(err)
	}
	e.waitFinal("after-restart")
	e.stop()
	if left := poolObjects(e.dir); len(left) != 0 {
		t.Fatalf("pooled objects after a graceful stop: %v", strings.Join(left, "\n"))
	}
}
