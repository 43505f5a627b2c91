package integration

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/vpc"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// poolEnv is an agent with the local network provider, a namespace pool
// and a pool of 64 MiB disks, its metrics on a port of its own.
type poolEnv struct {
	*agentEnv
	metrics string
	cfg     string // the config without the pools
}

// poolConfig turns both pools on, n of each.
func poolConfig(n int) string {
	return fmt.Sprintf("  namespacePool: %d\n", n)
}

func startPoolAgent(t *testing.T, n int) *poolEnv {
	t.Helper()
	ln := newLocalNet(t)
	p := &poolEnv{agentEnv: &agentEnv{t: t}, metrics: testenv.Addr(testenv.FreePort(t))}
	p.cfg = ln.config + fmt.Sprintf("metricsListen: %q\n", p.metrics)
	e := p.agentEnv
	e.ctd = testenv.StartContainerd(t)
	e.reg = testenv.StartRegistry(t)
	e.image = testenv.PushBusybox(t, e.reg, "busybox", "latest")
	e.agent = testenv.StartAgent(t, testenv.AgentOptions{Containerd: e.ctd.Address, PlainHTTP: []string{e.reg.Host}, Config: p.config(n)})
	e.dir, e.socket, e.client = e.agent.Dir, e.agent.Socket, e.agent.Client
	return p
}

// config is the agent's config with n of each pooled object (0: off).
func (p *poolEnv) config(n int) string {
	// ln.config ends inside "network:"; its keys are indented by two.
	cfg := strings.Replace(p.cfg, "network:\n", "network:\n"+poolConfig(n), 1)
	cfg += "isolation:\n  diskDir: {{DIR}}/disks\n"
	if n > 0 {
		cfg += fmt.Sprintf("  diskPool: [{sizeMiB: 64, count: %d}]\n", n)
	}
	return cfg
}

// restart starts the agent again over the same state with n of each
// pooled object.
func (p *poolEnv) restart(n int) {
	p.t.Helper()
	cfg := strings.ReplaceAll(p.config(n), "{{DIR}}", p.dir)
	if err := os.WriteFile(filepath.Join(p.dir, "agent.yaml"), []byte(cfg), 0o644); err != nil {
		p.t.Fatal(err)
	}
	p.start()
}

func (p *poolEnv) scrape() string {
	p.t.Helper()
	resp, err := http.Get("http://" + p.metrics + "/metrics")
	if err != nil {
		p.t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// waitPools waits until both pools hold n.
func (p *poolEnv) waitPools(n int) {
	p.t.Helper()
	deadline := time.Now().Add(testenv.Scaled(20 * time.Second))
	for {
		page := p.scrape()
		ns, disk := metricValue(page, `titus_agent_pool_ready{pool="netns"}`), metricValue(page, `titus_agent_pool_ready{pool="disk-64MiB"}`)
		if ns == float64(n) && disk == float64(n) {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("pools hold %v namespaces and %v disks, want %d each\n%s", ns, disk, n, p.agent.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *poolEnv) hits() (netns, disk float64) {
	page := p.scrape()
	return metricValue(page, `titus_agent_pool_takes_total{pool="netns",result="hit"}`),
		metricValue(page, `titus_agent_pool_takes_total{pool="disk",result="hit"}`)
}

// poolObjects lists what the pools hold on the host: namespaces in the
// pool's directory and their mounts, pooled veths, pooled disk images and
// any loop device backed by one.
func poolObjects(dir string) []string {
	var out []string
	nsDir, diskDir := filepath.Join(dir, "netns-pool"), filepath.Join(dir, "disks", "pool")
	for _, d := range []string{nsDir, diskDir} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			out = append(out, "file "+filepath.Join(d, e.Name()))
		}
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 4 && (strings.HasPrefix(f[4], nsDir+"/") || strings.HasPrefix(f[4], diskDir+"/")) {
			out = append(out, "mount "+f[4])
		}
	}
	links, _ := netlink.LinkList()
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, vpc.PoolVethPrefix(nsDir)) {
			out = append(out, "link "+l.Attrs().Name)
		}
	}
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range loops {
		if b, err := os.ReadFile(f); err == nil && strings.HasPrefix(string(b), diskDir+"/") {
			out = append(out, "loop "+f+" "+strings.TrimSpace(string(b)))
		}
	}
	return out
}

// waitNoPoolObjects waits until the pools hold nothing on the host.
func (p *poolEnv) waitNoPoolObjects(when string) {
	p.t.Helper()
	deadline := time.Now().Add(testenv.Scaled(10 * time.Second))
	for {
		left := poolObjects(p.dir)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s: pooled objects left: %v\n%s", when, left, p.agent.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// nsenter runs a command in a task's network namespace as root, as a task
// that got CAP_NET_ADMIN in it could.
func (p *poolEnv) nsenter(id string, args ...string) string {
	p.t.Helper()
	out, err := exec.Command("nsenter", append([]string{"--net=" + filepath.Join(p.dir, "netns", id)}, args...)...).CombinedOutput()
	if err != nil {
		p.t.Fatalf("nsenter %s %v: %v\n%s", id, args, err, out)
	}
	return string(out)
}

// TestAgentPoolsHandOutFreshNamespacesAndDisks: a launch takes its netns
// (with veth) and its disk from the pools, and the pools refill. The
// attack: a task writes a file to its disk and changes a sysctl, a route
// and an address in its netns, then ends; the next task, also served from
// the pools, sees none of it: pooled objects are only ever fresh.
func TestAgentPoolsHandOutFreshNamespacesAndDisks(t *testing.T) {
	begin(t)
	p := startPoolAgent(t, 1)
	p.waitPools(1)
	spec := func(id string) *agentv1.TaskSpec {
		s := p.spec(id, "sleep", "1000")
		s.Resources.DiskMib = 64
		return s
	}
	p.launch(spec("first"))
	first := p.waitState("first", stRunning, 30*time.Second)
	if ns, disk := p.hits(); ns != 1 || disk != 1 {
		t.Fatalf("pool hits after the first launch: netns %v disk %v, want 1 each", ns, disk)
	}
	if first.GetNetwork().GetIpv4() == "" {
		t.Fatalf("first task has no address: %v", first.GetNetwork())
	}
	// Its veth is the task's, its disk is where a task's goes.
	if _, err := netlink.LinkByName(vpc.HostVeth("first")); err != nil {
		t.Fatalf("first task's veth: %v", err)
	}
	out, code := p.exec("first", "sh", "-c", "echo left-by-first > /marker && df -m / | tail -1")
	if code != 0 || !strings.Contains(out, "/") {
		t.Fatalf("write marker: %d %s", code, out)
	}
	// The pooled disk handed over is the task's quota: its own size, and
	// a write past it fails.
	if f := strings.Fields(out); len(f) < 2 || !func() bool { n, err := strconv.Atoi(f[1]); return err == nil && n > 32 && n <= 64 }() {
		t.Errorf("first's root is not its 64 MiB disk: %q", out)
	}
	if out, code := p.exec("first", "sh", "-c", "dd if=/dev/zero of=/fill bs=1M count=80 2>&1; rm -f /fill"); code == 0 && !strings.Contains(out, "No space") {
		t.Errorf("80 MiB written to a 64 MiB disk: %d %s", code, out)
	}
	p.nsenter("first", "ip", "route", "add", "blackhole", "198.18.250.0/24")
	p.nsenter("first", "ip", "addr", "add", "198.18.251.1/32", "dev", "lo")
	p.nsenter("first", "sh", "-c", "echo 1234 > /proc/sys/net/ipv4/tcp_keepalive_time")
	if got := strings.TrimSpace(p.nsenter("first", "cat", "/proc/sys/net/ipv4/tcp_keepalive_time")); got != "1234" {
		t.Fatalf("sysctl in first's netns = %q", got)
	}
	p.waitPools(1) // refilled while first runs

	if _, err := p.client.KillTask(p.ctx(), &agentv1.KillTaskRequest{Id: "first", GracePeriodSeconds: 1}); err != nil {
		t.Fatal(err)
	}
	p.waitFinal("first")
	p.waitNoContainer("first")
	p.waitPools(1)

	p.launch(spec("second"))
	second := p.waitState("second", stRunning, 30*time.Second)
	if ns, disk := p.hits(); ns != 2 || disk != 2 {
		t.Fatalf("pool hits after the second launch: netns %v disk %v, want 2 each", ns, disk)
	}
	if out, code := p.exec("second", "cat", "/marker"); code == 0 || strings.Contains(out, "left-by-first") {
		t.Fatalf("second task reads first's file: %d %q", code, out)
	}
	if out := p.nsenter("second", "ip", "route", "show", "table", "all"); strings.Contains(out, "198.18.250.0/24") {
		t.Fatalf("second task's netns has first's route:\n%s", out)
	}
	if out := p.nsenter("second", "ip", "addr", "show", "dev", "lo"); strings.Contains(out, "198.18.251.1") {
		t.Fatalf("second task's netns has first's address:\n%s", out)
	}
	if got := strings.TrimSpace(p.nsenter("second", "cat", "/proc/sys/net/ipv4/tcp_keepalive_time")); got == "1234" {
		t.Fatal("second task's netns has first's sysctl")
	}
	// And it works: its own address on eth0, reachable from the host's bridge side.
	if out, code := p.exec("second", "ip", "-4", "addr", "show", "eth0"); code != 0 || !strings.Contains(out, second.GetNetwork().GetIpv4()+"/") {
		t.Fatalf("second's eth0: %d %s", code, out)
	}

	if _, err := p.client.KillTask(p.ctx(), &agentv1.KillTaskRequest{Id: "second", GracePeriodSeconds: 1}); err != nil {
		t.Fatal(err)
	}
	p.waitFinal("second")
	p.assertNoLeftovers()
	p.assertNoNetworkLeftovers()
	p.stop()
	p.waitNoPoolObjects("after a graceful stop")
}

// TestAgentPoolsSurviveKill9WithoutLeaking: an agent killed with full
// pools leaves them on the host; the next start removes them (and fills
// new ones), a graceful stop empties the pools, and a start with the pools
// now off still removes what a killed agent's pools left.
func TestAgentPoolsSurviveKill9WithoutLeaking(t *testing.T) {
	begin(t)
	p := startPoolAgent(t, 2)
	p.waitPools(2)
	before := poolObjects(p.dir)
	p.kill9()
	// 2 namespaces (file, mount, veth each) and 2 disks (image, mount
	// point, mount, loop device each).
	if left := poolObjects(p.dir); len(left) != 14 {
		t.Fatalf("after kill -9 the pools hold %d objects, want 14: %v", len(left), left)
	}

	p.restart(2)
	p.waitPools(2)
	now := strings.Join(poolObjects(p.dir), "\n")
	for _, o := range before {
		if strings.Contains(now, o) {
			t.Errorf("the killed agent's %s is still there after a restart", o)
		}
	}
	p.stop()
	p.waitNoPoolObjects("after a graceful stop")

	p.restart(2)
	p.waitPools(2)
	p.kill9()
	p.restart(0)
	p.waitNoPoolObjects("after a restart with the pools off")
	// Launches still work without the pools.
	p.launch(p.spec("plain", "true"))
	p.waitFinal("plain")
	p.assertNoLeftovers()
	p.assertNoNetworkLeftovers()
	p.stop()
}
