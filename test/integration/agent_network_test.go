package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/vpc"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// localNet is a run-unique bridge and /24 out of 198.19.0.0/16 (the range
// reserved for test beds).
type localNet struct {
	bridge, cidr, config string
}

func newLocalNet(t *testing.T) localNet {
	b := make([]byte, 3)
	rand.Read(b)
	n, _ := rand.Int(rand.Reader, big.NewInt(250))
	ln := localNet{bridge: "tb" + hex.EncodeToString(b), cidr: fmt.Sprintf("198.19.%d.0/24", n.Int64()+1)}
	ln.config = fmt.Sprintf("network:\n  provider: local\n  netnsDir: {{DIR}}/netns\n  dns: [198.18.0.2]\n  local:\n    cidr: %s\n    bridge: %s\n", ln.cidr, ln.bridge)
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(ln.bridge); err == nil {
			netlink.LinkDel(l)
		}
		table := "titus_" + ln.bridge
		exec.Command("nft", "delete", "table", "ip", table).Run()
	})
	return ln
}

func newNetAgentEnv(t *testing.T) (*agentEnv, localNet) {
	ln := newLocalNet(t)
	e := &agentEnv{t: t}
	e.ctd = testenv.StartContainerd(t)
	e.reg = testenv.StartRegistry(t)
	e.image = testenv.PushBusybox(t, e.reg, "busybox", "latest")
	e.agent = testenv.StartAgent(t, testenv.AgentOptions{Containerd: e.ctd.Address, PlainHTTP: []string{e.reg.Host}, Config: ln.config})
	e.dir, e.socket, e.client = e.agent.Dir, e.agent.Socket, e.agent.Client
	return e, ln
}

func (e *agentEnv) exec(id string, args ...string) (string, int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := e.client.Exec(ctx, &agentv1.ExecRequest{Id: id, Args: args})
	if err != nil {
		e.t.Fatalf("exec in %s: %v", id, err)
	}
	var out strings.Builder
	for {
		o, err := s.Recv()
		if err != nil {
			e.t.Fatalf("exec in %s: %v (output %q)", id, err, out.String())
		}
		out.Write(o.GetStdout())
		out.Write(o.GetStderr())
		if o.GetExited() {
			return out.String(), int(o.GetExitCode())
		}
	}
}

func TestAgentLocalNetworkGivesEachTaskItsOwnIP(t *testing.T) {
	begin(t)
	e, ln := newNetAgentEnv(t)
	web0 := e.spec("web", "sh", "-c", "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www")
	web0.Resources.NetworkMbps = 40
	e.launch(web0)
	e.launch(e.spec("client", "sleep", "1000"))
	web := e.waitState("web", stRunning, 30*time.Second)
	client := e.waitState("client", stRunning, 30*time.Second)
	webIP, clientIP := web.GetNetwork().GetIpv4(), client.GetNetwork().GetIpv4()
	if webIP == "" || clientIP == "" || webIP == clientIP || !strings.HasPrefix(webIP, strings.TrimSuffix(ln.cidr, "0/24")) {
		t.Fatalf("addresses: web %q client %q, want two distinct addresses in %s", webIP, clientIP, ln.cidr)
	}
	out, code := e.exec("client", "ip", "-4", "addr", "show", "eth0")
	if code != 0 || !strings.Contains(out, clientIP+"/24") {
		t.Fatalf("client's eth0: %d %s", code, out)
	}
	var body string
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, code = httpGet(e, "client", webIP)
		if code == 0 {
			body = out
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("client cannot reach web at %s: %d %s", webIP, code, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(body, "hello-from-web") {
		t.Fatalf("web answered %q", body)
	}
	if out, _ := e.exec("client", "cat", "/etc/resolv.conf"); !strings.Contains(out, "nameserver 198.18.0.2") {
		t.Fatalf("resolv.conf = %q", out)
	}
	if out, _ := e.exec("client", "hostname"); strings.TrimSpace(out) != "client" {
		t.Fatalf("hostname = %q", out)
	}
	// The bandwidth limit is a TBF qdisc on both veth ends; the unlimited task has none.
	if out, err := exec.Command("tc", "qdisc", "show", "dev", vpc.HostVeth("web")).CombinedOutput(); err != nil || !strings.Contains(string(out), "tbf") || !strings.Contains(string(out), "40Mbit") {
		t.Fatalf("web's host veth qdisc: %v %s", err, out)
	}
	if out, _ := exec.Command("tc", "qdisc", "show", "dev", vpc.HostVeth("client")).CombinedOutput(); strings.Contains(string(out), "tbf") {
		t.Fatalf("client asked for no limit but has one: %s", out)
	}
	status, err := e.cli("vpc", "status")
	if err != nil || !strings.Contains(status, "used: 2") {
		t.Fatalf("vpc status: %v\n%s", err, status)
	}

	// kill -9 and restart: the tasks keep their addresses and stay reachable.
	e.kill9()
	e.start()
	if got := e.get("web").GetNetwork().GetIpv4(); got != webIP {
		t.Fatalf("web's address after restart = %q, want %q", got, webIP)
	}
	if out, code := httpGet(e, "client", webIP); code != 0 || !strings.Contains(out, "hello-from-web") {
		t.Fatalf("after agent restart: %d %s", code, out)
	}
	for _, id := range []string{"web", "client"} {
		if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: id, GracePeriodSeconds: 1}); err != nil {
			t.Fatal(err)
		}
	}
	e.waitFinal("web")
	e.waitFinal("client")
	e.assertNoLeftovers()
	e.assertNoNetworkLeftovers()
	gc, err := e.cli("vpc", "gc")
	if err != nil || !strings.Contains(gc, "nothing to free") {
		t.Fatalf("vpc gc after all tasks ended: %v\n%s", err, gc)
	}
}

// assertNoNetworkLeftovers checks that no task netns or veth is left.
func (e *agentEnv) assertNoNetworkLeftovers() {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var left []string
		entries, _ := os.ReadDir(e.dir + "/netns")
		for _, en := range entries {
			left = append(left, "netns "+en.Name())
		}
		links, _ := netlink.LinkList()
		for _, l := range links {
			n := l.Attrs().Name
			if l.Type() == "veth" && len(n) == 12 && (strings.HasPrefix(n, "tt") || strings.HasPrefix(n, "tp")) {
				left = append(left, "veth "+n)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("network leftovers: %v", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// httpGet fetches the web task's page from inside another task with
// busybox nc (Debian's static busybox wget crashes in its resolver).
func httpGet(e *agentEnv, from, ip string) (string, int) {
	return e.exec(from, "sh", "-c", "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 "+ip+" 8080")
}
