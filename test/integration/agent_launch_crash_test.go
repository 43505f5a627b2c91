package integration

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/vpc"
)

// TestAgentKill9WhilePreparingLeaksNothing: what a launch's preparing
// hooks make (the network: netns, veth, address, bandwidth) is in memory
// until the Starting record, written with the container's create. An
// agent killed -9 while the image pull hangs leaves the network made and
// unrecorded. The restarted agent resumes the launch over the same
// address (no second one taken); killed again, the task is Lost and its
// network torn down by its id; a launch resumed once and let through
// runs on the address it had, and its teardown frees it.
func TestAgentKill9WhilePreparingLeaksNothing(t *testing.T) {
	begin(t)
	e, _ := newNetAgentEnv(t)
	var open atomic.Bool
	target, err := url.Parse("http://" + e.reg.Host)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	gate := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for !open.Load() {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(func() { open.Store(true); gate.Close() })
	gateHost := strings.TrimPrefix(gate.URL, "http://")
	e.agent.Args = append(e.agent.Args, "--plain-http-registry", gateHost)
	e.stop()
	e.start()

	held := func(id string) *agentv1.TaskSpec {
		s := e.spec(id, "sleep", "1000")
		s.Image = gateHost + "/busybox:latest"
		s.Resources.NetworkMbps = 20
		s.Resources.DiskMib = 64
		return s
	}
	// waitNetwork waits until the held launch has its network (made while
	// the pull hangs) and returns its address.
	waitNetwork := func(id string) string {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			tk := e.get(id)
			_, linkErr := netlink.LinkByName(vpc.HostVeth(id))
			if ip := tk.GetNetwork().GetIpv4(); ip != "" && linkErr == nil {
				if tk.GetState() != agentv1.TaskState_TASK_STATE_PREPARING {
					t.Fatalf("%s is %s, want it held in Preparing", id, tk.GetState())
				}
				return ip
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never got its network while held (state %s, link %v)\n%s", id, tk.GetState(), linkErr, e.agent.Log())
			}
			time.Sleep(25 * time.Millisecond)
		}
	}
	used := func(want string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, err := e.cli("vpc", "status")
			if err == nil && strings.Contains(out, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("vpc status: %v, want %q:\n%s", err, want, out)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	gone := func(id string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, linkErr := netlink.LinkByName(vpc.HostVeth(id))
			_, nsErr := os.Lstat(filepath.Join(e.dir, "netns", id))
			if linkErr != nil && os.IsNotExist(nsErr) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s's network left after its teardown: link %v netns %v", id, linkErr, nsErr)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	// Cut short twice: Lost, and nothing of its network is left.
	e.launch(held("lost"))
	ip := waitNetwork("lost")
	used("used: 1")
	e.kill9()
	e.start()
	if again := waitNetwork("lost"); again != ip {
		t.Errorf("resumed launch took %s, want the address it had, %s", again, ip)
	}
	used("used: 1")
	e.kill9()
	e.start()
	if tk := e.waitFinal("lost"); tk.GetState() != agentv1.TaskState_TASK_STATE_LOST {
		t.Fatalf("lost = %s (%s), want Lost", tk.GetState(), tk.GetMessage())
	}
	gone("lost")
	used("used: 0")

	// Cut short once, then let through: it runs on the address it had.
	e.launch(held("resumed"))
	ip = waitNetwork("resumed")
	e.kill9()
	open.Store(true)
	e.start()
	tk := e.waitState("resumed", stRunning, 60*time.Second)
	if got := tk.GetNetwork().GetIpv4(); got != ip {
		t.Errorf("resumed task runs on %s, want the address it had, %s", got, ip)
	}
	if out, code := e.exec("resumed", "ip", "-4", "addr", "show", "eth0"); code != 0 || !strings.Contains(out, ip+"/") {
		t.Errorf("resumed task's eth0: %d %s", code, out)
	}
	used("used: 1")
	if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: "resumed", GracePeriodSeconds: 1}); err != nil {
		t.Fatal(err)
	}
	e.waitFinal("resumed")
	gone("resumed")
	used("used: 0")
	e.assertNoLeftovers()
}
