package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"

	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/pkg/vpc"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// TestAgentHostPathSymlinkAttack: task A, given a shared allowed directory
// read-write, plants a symlink to the host's root there; task B asks to
// mount it. B is refused before it runs, with an error that says why, and
// leaves nothing behind (no address, disk, veth or container).
func TestAgentHostPathSymlinkAttack(t *testing.T) {
	begin(t)
	dir, err := os.MkdirTemp("", "titus-shared-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	shared := filepath.Join(dir, "shared")
	if err := os.MkdirAll(shared, 0o777); err != nil {
		t.Fatal(err)
	}
	ln := newLocalNet(t)
	e := newAgentEnvConfig(t, ln.config+"isolation:\n  diskDir: {{DIR}}/disks\n  allowedHostPaths: [\""+shared+":rw\"]\n")

	planter := e.spec("planter", "sh", "-c", "ln -s / /shared/x && ln -s /etc /shared/etc && mkdir /shared/real && echo ok")
	planter.Labels = map[string]string{isolation.LabelHostMounts: shared + ":/shared:rw"}
	e.launch(planter)
	wantState(t, e.waitFinal("planter"), stFinished, task.ReasonCompleted, 0)
	if target, err := os.Readlink(filepath.Join(shared, "x")); err != nil || target != "/" {
		t.Fatalf("the planted link: %q %v", target, err)
	}

	for id, src := range map[string]string{"thief": shared + "/x", "thief-etc": shared + "/etc", "thief-deep": shared + "/x/etc"} {
		s := e.spec(id, "sh", "-c", "cat /host/etc/shadow /host/shadow; sleep 100")
		s.Labels = map[string]string{isolation.LabelHostMounts: src + ":/host"}
		s.Resources.DiskMib = 16
		e.launch(s)
	}
	honest := e.spec("honest", "sh", "-c", "test -d /real && echo mounted")
	honest.Labels = map[string]string{isolation.LabelHostMounts: shared + "/real:/real"}
	e.launch(honest)
	wantState(t, e.waitFinal("honest"), stFinished, task.ReasonCompleted, 0)
	for _, id := range []string{"thief", "thief-etc", "thief-deep"} {
		tk := e.waitFinal(id)
		if tk.GetState() != stFailed || tk.GetReason() != string(task.ReasonInvalidSpec) || !strings.Contains(tk.GetMessage(), "not allowed") {
			t.Errorf("%s = %s/%s (%s), want Failed/InvalidSpec, not allowed", id, tk.GetState(), tk.GetReason(), tk.GetMessage())
		}
		if out, _ := e.cli("task", "logs", id); strings.Contains(out, "root:") {
			t.Errorf("%s read the host's shadow file: %q", id, out)
		}
		if _, err := netlink.LinkByName(vpc.HostVeth(id)); err == nil {
			t.Errorf("%s left its veth", id)
		}
		if _, err := os.Stat(filepath.Join(e.dir, "disks", "rootfs", id)); err == nil {
			t.Errorf("%s left its disk", id)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		status, err := e.cli("vpc", "status")
		if err == nil && strings.Contains(status, "used: 0") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("addresses still held after the refused tasks: %v\n%s", err, status)
		}
		time.Sleep(200 * time.Millisecond)
	}
	e.assertNoLeftovers()
}

// TestAgentHostPathSwapAfterCheck is the race between the agent's check
// of a host path and runc's mount of it. A task that can write to a shared
// allowed directory swaps the checked directory for a symlink to a host
// directory outside the allowlist after the agent checked it: here a runc
// wrapper does the swap just before the real runc creates the container,
// the widest the window can be. The task still sees the directory that was
// checked (the agent mounted it by descriptor), the staging mount is gone
// after the task, and a task asking for the now-symlinked path is refused.
func TestAgentHostPathSwapAfterCheck(t *testing.T) {
	begin(t)
	dir, err := os.MkdirTemp("", "titus-swap-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	shared, secret := filepath.Join(dir, "shared"), filepath.Join(dir, "secret")
	for _, d := range []string{filepath.Join(shared, "data"), secret} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for p, content := range map[string]string{filepath.Join(shared, "data", "file"): "the-checked-dir\n", filepath.Join(secret, "file"): "host-secret\n"} {
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The race, made certain: the first "runc create" swaps first.
	wrapDir := filepath.Join(dir, "bin")
	trigger, fired := filepath.Join(dir, "armed"), filepath.Join(dir, "fired")
	if err := os.MkdirAll(wrapDir, 0o755); err != nil {
		t.Fatal(err)
	}
	wrapper := fmt.Sprintf(`#!/bin/sh
case " $* " in *" create "*)
	if mv %[1]s %[2]s 2>/dev/null; then mv %[3]s/data %[3]s/data.moved && ln -s %[4]s %[3]s/data; fi ;;
esac
exec %[5]s "$@"
`, trigger, fired, shared, secret, testenv.LookPath(t, "runc"))
	if err := os.WriteFile(filepath.Join(wrapDir, "runc"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(trigger, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	e := newAgentEnvContainerd(t, testenv.StartContainerdWith(t, testenv.ContainerdOptions{PathPrefix: wrapDir}),
		"isolation:\n  diskDir: {{DIR}}/disks\n  allowedHostPaths: [\""+shared+"\"]\n")

	victim := e.spec("victim", "cat", "/data/file")
	victim.Labels = map[string]string{isolation.LabelHostMounts: shared + "/data:/data"}
	e.launch(victim)
	wantState(t, e.waitFinal("victim"), stFinished, task.ReasonCompleted, 0)
	if _, err := os.Stat(fired); err != nil {
		t.Fatalf("the swap did not happen before runc create: %v", err)
	}
	if target, err := os.Readlink(filepath.Join(shared, "data")); err != nil || target != secret {
		t.Fatalf("after the swap %s/data is %q (%v), want a symlink to %s", shared, target, err, secret)
	}
	out, err := e.cli("task", "logs", "victim")
	if err != nil {
		t.Fatalf("logs: %v %s", err, out)
	}
	if strings.Contains(out, "host-secret") || !strings.Contains(out, "the-checked-dir") {
		t.Errorf("the task read %q through the swapped path, want the checked directory's file", out)
	}

	// Asked for now, the symlink is refused.
	late := e.spec("late", "cat", "/data/file")
	late.Labels = map[string]string{isolation.LabelHostMounts: shared + "/data:/data"}
	e.launch(late)
	if tk := e.waitFinal("late"); tk.GetState() != stFailed || tk.GetReason() != string(task.ReasonInvalidSpec) || !strings.Contains(tk.GetMessage(), "not allowed") {
		t.Errorf("late = %s/%s (%s), want Failed/InvalidSpec, not allowed", tk.GetState(), tk.GetReason(), tk.GetMessage())
	}
	e.assertNoLeftovers() // staging points included
}

// outside is a network namespace beyond the host, reached through a veth
// from the host's netns: where a task's ordinary egress goes. It answers
// "hello-outside" on addr:8080.
type outside struct{ addr string }

func newOutside(t *testing.T) outside {
	t.Helper()
	b := make([]byte, 3)
	rand.Read(b)
	k := int(b[0]) % 60
	hostIP, nsIP := fmt.Sprintf("198.19.253.%d", 4*k+1), fmt.Sprintf("198.19.253.%d", 4*k+2)
	hostSide, nsSide := "tfh"+hex.EncodeToString(b), "tfp"+hex.EncodeToString(b)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.New()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	var ln net.Listener
	setup := func() error {
		lo, _ := netlink.LinkByName("lo")
		netlink.LinkSetUp(lo)
		if err := netns.Set(orig); err != nil {
			return err
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostSide}, PeerName: nsSide, PeerNamespace: netlink.NsFd(int(ns))}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("veth: %w", err)
		}
		host, _ := netlink.LinkByName(hostSide)
		if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(hostIP), Mask: net.CIDRMask(30, 32)}}); err != nil {
			return err
		}
		netlink.LinkSetUp(host)
		if err := netns.Set(ns); err != nil {
			return err
		}
		peer, err := netlink.LinkByName(nsSide)
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(peer, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(nsIP), Mask: net.CIDRMask(30, 32)}}); err != nil {
			return err
		}
		netlink.LinkSetUp(peer)
		ln, err = net.Listen("tcp", nsIP+":8080")
		return err
	}
	err = setup()
	netns.Set(orig)
	runtime.UnlockOSThread()
	t.Cleanup(func() {
		if ln != nil {
			ln.Close()
		}
		if l, err := netlink.LinkByName(hostSide); err == nil {
			netlink.LinkDel(l)
		}
		ns.Close()
		orig.Close()
	})
	if err != nil {
		t.Fatalf("outside netns: %v", err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hello-outside\n"))
			c.Close()
		}
	}()
	return outside{addr: nsIP}
}

// hostListener is a service on the host's own addresses that no task
// should reach; it counts who got through.
type hostListener struct {
	port     int
	accepted atomic.Int32
}

func newHostListener(t *testing.T) *hostListener {
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	h := &hostListener{port: ln.Addr().(*net.TCPAddr).Port}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.accepted.Add(1)
			c.Write([]byte("host-secret\n"))
			c.Close()
		}
	}()
	return h
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

var counterRE = regexp.MustCompile(`packets (\d+)`)

// nftCounter reads one of the firewall's named counters.
func nftCounter(t *testing.T, family, table, name string) int {
	t.Helper()
	out, err := exec.Command("nft", "list", "counter", family, table, name).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list counter %s %s %s: %v %s", family, table, name, err, out)
	}
	m := counterRE.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("counter %s: %s", name, out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// TestAgentFirewallFromInsideTasks attacks the host from inside tasks on
// the local bridge: the agent's metrics port, a service on the host's own
// addresses, a neighbour task and link-local addresses (the cloud's IMDS
// with metadata off) are all refused, while the task's ordinary egress and
// its own metadata service work. The filter survives the agent's death
// and is re-applied, not re-opened, by the next agent.
func TestAgentFirewallFromInsideTasks(t *testing.T) {
	begin(t)
	ln := newLocalNet(t)
	out := newOutside(t)
	svc := newHostListener(t)
	metricsPort := freePort(t)
	table := "titus_fw_" + ln.bridge
	// A net under the test, not the thing tested: even with no firewall a
	// task's link-local packet goes nowhere from this bridge (it is never
	// sent from the host's netns).
	rule := []string{"iif", ln.bridge, "to", "169.254.0.0/16", "blackhole", "pref", "4242"}
	if o, err := exec.Command("ip", append([]string{"rule", "add"}, rule...)...).CombinedOutput(); err != nil {
		t.Fatalf("safety rule: %v %s", err, o)
	}
	t.Cleanup(func() { exec.Command("ip", append([]string{"rule", "del"}, rule...)...).Run() })

	cfg := ln.config + fmt.Sprintf("metricsListen: 0.0.0.0:%d\n", metricsPort)
	e := newAgentEnvConfig(t, cfg)
	web := e.spec("web", "sh", "-c", "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www")
	e.launch(web)
	e.launch(e.spec("probe", "sleep", "1000"))
	webIP := e.waitState("web", stRunning, 30*time.Second).GetNetwork().GetIpv4()
	probe := e.waitState("probe", stRunning, 30*time.Second)
	probeIP, gw := probe.GetNetwork().GetIpv4(), strings.TrimSuffix(ln.cidr, "0/24")+"1"
	hostIPs := []string{gw}
	if addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4); err == nil {
		for _, a := range addrs {
			if ip := a.IP.String(); a.IP.IsGlobalUnicast() && ip != gw && !strings.HasPrefix(ip, "198.19.253.") {
				hostIPs = append(hostIPs, ip)
				break
			}
		}
	}
	// The host itself can reach its metrics, so a refusal below is the filter's.
	if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)); err != nil {
		t.Fatalf("metrics from the host: %v", err)
	} else {
		resp.Body.Close()
	}

	attacks := func(from string) {
		t.Helper()
		// Ordinary egress, through the host, works.
		waitFor(t, from+" reaches the outside", 15*time.Second, func() (bool, string) {
			o, code := e.exec(from, "sh", "-c", "nc -w 3 "+out.addr+" 8080 </dev/null")
			return code == 0 && strings.Contains(o, "hello-outside"), fmt.Sprintf("exit %d: %s", code, o)
		})
		for _, ip := range hostIPs {
			if o, _ := e.exec(from, "sh", "-c", fmt.Sprintf("printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' | nc -w 2 %s %d", ip, metricsPort)); strings.Contains(o, "HTTP/") {
				t.Errorf("%s reached the agent's metrics at %s:%d: %q", from, ip, metricsPort, o)
			}
			if o, _ := e.exec(from, "sh", "-c", fmt.Sprintf("nc -w 2 %s %d </dev/null", ip, svc.port)); strings.Contains(o, "host-secret") {
				t.Errorf("%s reached a host service at %s:%d: %q", from, ip, svc.port, o)
			}
		}
		if n := svc.accepted.Load(); n != 0 {
			t.Errorf("the host service accepted %d connections from tasks", n)
		}
		if o, code := httpGet(e, from, webIP); code == 0 || strings.Contains(o, "hello-from-web") {
			t.Errorf("%s reached its neighbour at %s: %d %q", from, webIP, code, o)
		}
	}
	attacks("probe")
	if o, code := e.exec("probe", "sh", "-c", "printf 'GET /latest/meta-data/local-ipv4 HTTP/1.0\\r\\n\\r\\n' | nc -w 3 169.254.169.254 80"); code != 0 || !strings.HasSuffix(strings.TrimSpace(o), "\n"+probeIP) {
		t.Errorf("probe's own metadata: %d %q, want %s", code, o, probeIP)
	}
	before := nftCounter(t, "inet", table, "task_to_linklocal")
	if o, _ := e.exec("probe", "sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 169.254.170.2 80"); strings.Contains(o, "HTTP/") {
		t.Errorf("probe reached 169.254.170.2: %q", o)
	}
	if after := nftCounter(t, "inet", table, "task_to_linklocal"); after <= before {
		t.Errorf("link-local counter %d -> %d: the firewall did not drop the packet", before, after)
	}
	if n := nftCounter(t, "inet", table, "task_to_host"); n == 0 {
		t.Errorf("task_to_host counter is 0")
	}
	// Bridged, the neighbour was kept off by port isolation, not by name.
	for _, id := range []string{"web", "probe"} {
		if l, err := netlink.LinkByName(vpc.HostVeth(id)); err != nil {
			t.Errorf("%s's veth: %v", id, err)
		} else if pi, err := netlink.LinkGetProtinfo(l); err != nil || !pi.Isolated {
			t.Errorf("%s's bridge port: isolated %t (%v), want isolated", id, pi.Isolated, err)
		}
	}

	// The agent dies: its tasks and its filter stay. The next one runs
	// without metadata; a task launched then has nothing on
	// 169.254.169.254 in its netns, and its packets there are dropped.
	e.kill9()
	if o, err := exec.Command("nft", "list", "table", "inet", table).CombinedOutput(); err != nil {
		t.Fatalf("firewall gone with the agent: %v %s", err, o)
	}
	conf := filepath.Join(e.dir, "agent.yaml")
	b, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, append(b, "\nmetadata:\n  enabled: false\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	e.start()
	attacks("probe")
	e.launch(e.spec("nometa", "sleep", "1000"))
	e.waitState("nometa", stRunning, 30*time.Second)
	attacks("nometa")
	before = nftCounter(t, "inet", table, "task_to_linklocal")
	if o, _ := e.exec("nometa", "sh", "-c", "printf 'GET /latest/meta-data/ HTTP/1.0\\r\\n\\r\\n' | nc -w 2 169.254.169.254 80"); strings.Contains(o, "HTTP/") {
		t.Errorf("with metadata off, a task reached 169.254.169.254: %q", o)
	}
	if after := nftCounter(t, "inet", table, "task_to_linklocal"); after <= before {
		t.Errorf("link-local counter %d -> %d: 169.254.169.254 was not dropped by the firewall", before, after)
	}
	for _, id := range []string{"web", "probe", "nometa"} {
		e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: id})
	}
	for _, id := range []string{"web", "probe", "nometa"} {
		e.waitFinal(id)
	}
	e.assertNoLeftovers()
}

// TestAgentHostLimitsAreNotOptIn: a task asking for no disk and no
// bandwidth limit gets the host's defaults; one asking above the host's
// ceiling is refused at the door, naming the field, and nothing is made
// for it.
func TestAgentHostLimitsAreNotOptIn(t *testing.T) {
	begin(t)
	ln := newLocalNet(t)
	e := newAgentEnvConfig(t, ln.config+"isolation:\n  diskDir: {{DIR}}/disks\n  diskMiB: {default: 32, max: 64}\n  networkMbps: {default: 10, max: 50}\n")
	e.launch(e.spec("asks-nothing", "sh", "-c", "df -m / | tail -1; sleep 1000"))
	tk := e.waitState("asks-nothing", stRunning, 30*time.Second)
	if r := tk.GetSpec().GetResources(); r.GetDiskMib() != 32 || r.GetNetworkMbps() != 10 {
		t.Errorf("recorded resources %v, want the host's defaults (disk 32, network 10)", r)
	}
	if o, err := exec.Command("tc", "qdisc", "show", "dev", vpc.HostVeth("asks-nothing")).CombinedOutput(); err != nil || !strings.Contains(string(o), "10Mbit") {
		t.Errorf("host veth qdisc: %v %s, want the default 10Mbit", err, o)
	}
	if o, code := e.exec("asks-nothing", "sh", "-c", "dd if=/dev/zero of=/big bs=1M count=64 2>&1"); code == 0 {
		t.Errorf("wrote 64 MiB into a 32 MiB default quota: %s", o)
	}
	for _, c := range []struct{ field string }{{"resources.disk_mib"}, {"resources.network_mbps"}} {
		s := e.spec("greedy", "true")
		if c.field == "resources.disk_mib" {
			s.Resources.DiskMib = 65
		} else {
			s.Resources.NetworkMbps = 51
		}
		_, err := e.client.LaunchTask(e.ctx(), &agentv1.LaunchTaskRequest{Spec: s})
		if err == nil || !strings.Contains(err.Error(), c.field) || !strings.Contains(err.Error(), "InvalidArgument") {
			t.Errorf("above the ceiling (%s): %v, want InvalidArgument naming the field", c.field, err)
		}
		if _, err := e.client.GetTask(e.ctx(), &agentv1.GetTaskRequest{Id: "greedy"}); err == nil {
			t.Errorf("the refused task was recorded")
		}
	}
	e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: "asks-nothing"})
	e.waitFinal("asks-nothing")
	e.assertNoLeftovers()
}

// TestAgentTaskCannotChangeProjectID: a task's root tries to give its own
// file another project ID (FS_IOC_FSSETXATTR), which on an XFS
// project-quota host moves the file out of the task's quota, also with
// high bits set in the ioctl's command register. Both calls get EPERM from
// the seccomp filter, with and without a quota'd disk, whatever the
// filesystem would have said; reading the attributes still works.
func TestAgentTaskCannotChangeProjectID(t *testing.T) {
	begin(t)
	e := newAgentEnvConfig(t, "isolation:\n  diskDir: {{DIR}}/disks\n")
	probe := testenv.ToolBinary(t, "fsxattr-probe")
	img := testenv.PushBusyboxWith(t, e.reg, "busybox-probe", "latest", map[string]string{"bin/fsxattr-probe": probe})
	for _, disk := range []int64{0, 32} {
		id := fmt.Sprintf("projid-disk%d", disk)
		s := e.spec(id, "fsxattr-probe", "/tmp/f")
		s.Image, s.Resources.DiskMib = img, disk
		e.launch(s)
		wantState(t, e.waitFinal(id), stFinished, task.ReasonCompleted, 0)
		out, err := e.cli("task", "logs", id)
		if err != nil {
			t.Fatalf("logs %s: %v %s", id, err, out)
		}
		for _, want := range []string{"FSGETXATTR: ok", "FSSETXATTR: EPERM", "FSSETXATTR-HIGHBITS: EPERM"} {
			if !strings.Contains(out, want+"\n") {
				t.Errorf("%s printed %q, want %q", id, out, want)
			}
		}
	}
	e.assertNoLeftovers()
}

// TestAgentRemovesStaleFirewallTables: a dead agent's firewall tables for
// a bridge that is gone match every task veth on the machine ("tt*") and
// would keep refusing task-to-task traffic that this agent's policy
// allows; its NAT table masquerades its CIDR out of every other
// interface. The agent removes them at start, and leaves alone the tables
// of another agent whose bridge still exists.
func TestAgentRemovesStaleFirewallTables(t *testing.T) {
	begin(t)
	b := make([]byte, 3)
	rand.Read(b)
	staleBridge, liveBridge := "tbst"+hex.EncodeToString(b), "tbli"+hex.EncodeToString(b)
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: liveBridge}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(liveBridge); err == nil {
			netlink.LinkDel(l)
		}
	})
	// Both keep their tasks apart; the live one on its own bridge only.
	for _, br := range []string{staleBridge, liveBridge} {
		fw, err := vpc.NewFirewall(vpc.FirewallConfig{Table: vpc.FirewallTable(br), Bridge: br})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fw.Remove(context.Background()) })
		if err := fw.Ensure(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	// The dead agent was an earlier version, which kept tasks apart with a
	// bridge table matching every task port on the machine by name.
	old := fmt.Sprintf("table bridge %s {\n chain forward {\n  type filter hook forward priority filter - 10; policy accept;\n"+
		"  iifname \"tt*\" oifname \"tt*\" drop\n }\n}\n", vpc.FirewallTable(staleBridge))
	// Both also had the local provider's NAT table: the dead one's still
	// masquerades its CIDR out of every interface but its gone bridge.
	for _, br := range []string{staleBridge, liveBridge} {
		nat := vpc.NATTable(br)
		old += fmt.Sprintf("table ip %s {\n chain postrouting {\n  type nat hook postrouting priority srcnat; policy accept;\n"+
			"  ip saddr 198.18.254.0/24 oifname != \"%s\" masquerade\n }\n}\n", nat, br)
		t.Cleanup(func() { exec.Command("nft", "delete", "table", "ip", nat).Run() })
	}
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(old)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("old bridge and NAT tables: %v %s", err, out)
	}
	e, _ := newNetAgentEnv(t) // task to task allowed
	if out, err := exec.Command("nft", "list", "table", "ip", vpc.NATTable(staleBridge)).CombinedOutput(); err == nil {
		t.Errorf("stale NAT table ip %s still there:\n%s", vpc.NATTable(staleBridge), out)
	}
	if out, err := exec.Command("nft", "list", "table", "ip", vpc.NATTable(liveBridge)).CombinedOutput(); err != nil {
		t.Errorf("the live bridge's NAT table ip %s was removed: %v %s", vpc.NATTable(liveBridge), err, out)
	}
	for _, fam := range []string{"inet", "bridge"} {
		if out, err := exec.Command("nft", "list", "table", fam, vpc.FirewallTable(staleBridge)).CombinedOutput(); err == nil {
			t.Errorf("stale table %s %s still there:\n%s", fam, vpc.FirewallTable(staleBridge), out)
		}
		if out, err := exec.Command("nft", "list", "table", fam, vpc.FirewallTable(liveBridge)).CombinedOutput(); fam == "inet" && err != nil {
			t.Errorf("the live bridge's table %s %s was removed: %v %s", fam, vpc.FirewallTable(liveBridge), err, out)
		}
	}
	if !strings.Contains(e.agent.Log(), "removed firewall tables of bridges that no longer exist") {
		t.Errorf("the agent did not log the removal:\n%s", tailLog(e.agent.Log()))
	}
	e.launch(e.spec("web", "sh", "-c", "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www"))
	e.launch(e.spec("client", "sleep", "1000"))
	webIP := e.waitState("web", stRunning, 30*time.Second).GetNetwork().GetIpv4()
	e.waitState("client", stRunning, 30*time.Second)
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, code := httpGet(e, "client", webIP)
		if code == 0 && strings.Contains(out, "hello-from-web") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("client cannot reach web at %s although tasks may meet: %d %s", webIP, code, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, id := range []string{"web", "client"} {
		e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: id})
		e.waitFinal(id)
	}
	e.assertNoLeftovers()
}

// pyInNetNS runs a python3 program in a task's network namespace with the
// host's files: what a process in the task could do with the same
// privileges, plus whatever the test lets it (root, here).
func pyInNetNS(ns, prog string) (string, error) {
	out, err := exec.Command("nsenter", "--net="+ns, "--", "python3", "-c", prog).CombinedOutput()
	return string(out), err
}

// connectProg tries a TCP connection from src (empty: any) to
// [dst]:port on eth0, 3 s at most, and prints "connected" or the error.
func connectProg(src, dst string, port int) string {
	fam := "socket.AF_INET"
	if strings.Contains(dst, ":") {
		fam = "socket.AF_INET6"
	}
	return fmt.Sprintf(`
import socket
s = socket.socket(%s)
s.settimeout(3)
if %q:
    s.bind((%q, 0))
addr = (%q, %d) if %s == socket.AF_INET else (%q, %d, 0, socket.if_nametoindex("eth0"))
try:
    s.connect(addr)
    print("connected")
except Exception as e:
    print("refused:", e)
`, fam, src, src, dst, port, fam, dst, port)
}

// TestAgentTaskCannotSpoofItsSource: a task that could give itself another
// address (here root enters its netns with CAP_NET_ADMIN, which a task
// never has) connects from it to a host service it may otherwise reach (an
// allowed host port). The frames are dropped at its veth's ingress and
// counted by its source guard; from its own address the same connection
// works. (The host is the target, not a neighbour: the task's bridge port
// is isolated by default, so task-to-task traffic would prove nothing.)
func TestAgentTaskCannotSpoofItsSource(t *testing.T) {
	begin(t)
	hostLn, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hostLn.Close() })
	var accepted atomic.Int32
	go func() {
		for {
			c, err := hostLn.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	port := hostLn.Addr().(*net.TCPAddr).Port
	ln := newLocalNet(t)
	e := newAgentEnvConfig(t, ln.config+fmt.Sprintf("  firewall:\n    allowHostPorts: [\"tcp/%d\"]\n", port))
	e.launch(e.spec("attacker", "sleep", "1000"))
	own := e.waitState("attacker", stRunning, 30*time.Second).GetNetwork().GetIpv4()
	gw := strings.TrimSuffix(strings.TrimSuffix(ln.cidr, "/24"), "0") + "1"
	ns := filepath.Join(e.dir, "netns", "attacker")
	if out, _ := pyInNetNS(ns, connectProg(own, gw, port)); !strings.Contains(out, "connected") {
		t.Fatalf("from its own address the attacker cannot reach the allowed host port %s:%d: %s", gw, port, out)
	}
	was := accepted.Load()
	guard := vpc.GuardTable(vpc.HostVeth("attacker"))
	spoof := strings.TrimSuffix(gw, "1") + "250"
	if out, err := exec.Command("nsenter", "--net="+ns, "--", "ip", "addr", "add", spoof+"/24", "dev", "eth0").CombinedOutput(); err != nil {
		t.Fatalf("add the forged address: %v %s", err, out)
	}
	if out, _ := pyInNetNS(ns, connectProg(spoof, gw, port)); !strings.Contains(out, "refused") {
		t.Errorf("from the forged address %s the attacker reached the host: %s", spoof, out)
	}
	if n := accepted.Load(); n != was {
		t.Errorf("the host accepted %d connections from the forged address", n-was)
	}
	if n := nftCounter(t, "netdev", guard, vpc.CounterSpoofed); n == 0 {
		t.Errorf("guard counter 0, want the forged frames counted")
	}
	e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: "attacker"})
	e.waitFinal("attacker")
	e.assertNoLeftovers()
	if out, err := exec.Command("nft", "list", "table", "netdev", guard).CombinedOutput(); err == nil {
		t.Errorf("the guard outlived its task:\n%s", out)
	}
}

// TestAgentTaskIPv6ReachesNothing: in local mode a task's IPv6 (its
// link-local address, all it has) reaches neither the host (a service on
// the host listening on every address, through the bridge's link-local
// address) nor a neighbour task.
func TestAgentTaskIPv6ReachesNothing(t *testing.T) {
	begin(t)
	ln := newLocalNet(t)
	e := newAgentEnvConfig(t, ln.config)
	hostLn, err := net.Listen("tcp", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hostLn.Close() })
	var hostAccepted atomic.Int32
	go func() {
		for {
			c, err := hostLn.Accept()
			if err != nil {
				return
			}
			hostAccepted.Add(1)
			c.Close()
		}
	}()
	port := hostLn.Addr().(*net.TCPAddr).Port
	for _, id := range []string{"victim", "attacker"} {
		e.launch(e.spec(id, "sleep", "1000"))
		e.waitState(id, stRunning, 30*time.Second)
	}
	// linkLocal waits out duplicate address detection: a tentative address
	// can be neither bound nor connected to (EADDRNOTAVAIL), which would
	// make every attack below fail for the wrong reason.
	linkLocal := func(ns, dev string) string {
		args := []string{"ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "link"}
		if ns != "" {
			args = append([]string{"nsenter", "--net=" + ns, "--"}, args...)
		}
		var out []byte
		var err error
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			out, err = exec.Command(args[0], args[1:]...).CombinedOutput()
			if strings.Contains(string(out), "tentative") {
				continue
			}
			f := strings.Fields(string(out))
			for i, w := range f {
				if w == "inet6" && i+1 < len(f) {
					return strings.Split(f[i+1], "/")[0]
				}
			}
		}
		t.Fatalf("no usable link-local address on %s %s: %v %s", ns, dev, err, out)
		return ""
	}
	victimNS, attackerNS := filepath.Join(e.dir, "netns", "victim"), filepath.Join(e.dir, "netns", "attacker")
	bridgeLL := linkLocal("", ln.bridge)
	// The neighbour listens on every address, in its own netns.
	listener := exec.Command("nsenter", "--net="+victimNS, "--", "python3", "-u", "-c", `
import socket
s = socket.socket(socket.AF_INET6)
s.bind(("::", 9000))
s.listen()
print("ready")
while True:
    c, a = s.accept()
    print("accepted", a)
    c.close()
`)
	stdout, _ := listener.StdoutPipe()
	if err := listener.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { listener.Process.Kill(); listener.Wait() })
	// Wait for "ready"; then keep draining.
	line := make([]byte, 6)
	if _, err := io.ReadFull(stdout, line); err != nil || string(line) != "ready\n" {
		t.Fatalf("neighbour's listener: %q %v", line, err)
	}
	go io.Copy(io.Discard, stdout)
	victimAddr := linkLocal(victimNS, "eth0")
	for name, dst := range map[string]struct {
		addr string
		port int
	}{"the host": {bridgeLL, port}, "the neighbour": {victimAddr, 9000}} {
		if out, _ := pyInNetNS(attackerNS, connectProg("", dst.addr, dst.port)); !strings.Contains(out, "refused") {
			t.Errorf("the attacker reached %s over IPv6 at [%s]:%d: %s", name, dst.addr, dst.port, out)
		}
	}
	// The listener works: from its own netns it is reached.
	if out, _ := pyInNetNS(victimNS, connectProg("", victimAddr, 9000)); !strings.Contains(out, "connected") {
		t.Errorf("the neighbour's own listener: %s", out)
	}
	if n := hostAccepted.Load(); n != 0 {
		t.Errorf("the host accepted %d IPv6 connections from a task", n)
	}
	for _, id := range []string{"victim", "attacker"} {
		e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: id})
		e.waitFinal(id)
	}
	e.assertNoLeftovers()
}

// TestAgentIsolationStaysOnItsBridge: one agent on the machine keeps its
// tasks apart (the default), another on its own bridge lets its tasks
// meet. The first one's isolation must not reach across to the second
// one's bridge: there, tasks that may meet do.
func TestAgentIsolationStaysOnItsBridge(t *testing.T) {
	begin(t)
	b := make([]byte, 3)
	rand.Read(b)
	isolating := "tbis" + hex.EncodeToString(b)
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: isolating}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(isolating); err == nil {
			netlink.LinkDel(l)
		}
	})
	fw, err := vpc.NewFirewall(vpc.FirewallConfig{Table: vpc.FirewallTable(isolating), Bridge: isolating})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fw.Remove(context.Background()) })
	if err := fw.Ensure(context.Background()); err != nil {
		t.Fatal(err)
	}
	e, _ := newNetAgentEnv(t) // task to task allowed
	e.launch(e.spec("web", "sh", "-c", "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www"))
	e.launch(e.spec("client", "sleep", "1000"))
	webIP := e.waitState("web", stRunning, 30*time.Second).GetNetwork().GetIpv4()
	e.waitState("client", stRunning, 30*time.Second)
	waitFor(t, "client reaches web on a bridge whose agent lets tasks meet", 10*time.Second, func() (bool, string) {
		out, code := httpGet(e, "client", webIP)
		return code == 0 && strings.Contains(out, "hello-from-web"), fmt.Sprintf("exit %d: %s", code, out)
	})
	for _, id := range []string{"web", "client"} {
		e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: id})
		e.waitFinal(id)
	}
	e.assertNoLeftovers()
}

// TestAgentHostPathReadOnlyIsDeep: a host path granted (or asked for)
// read-only with another filesystem mounted below it. A bind mount made
// read-only is read-only at its top only: unless the whole tree is, the
// task writes into the host's filesystem below.
func TestAgentHostPathReadOnlyIsDeep(t *testing.T) {
	begin(t)
	dir, err := os.MkdirTemp("", "titus-rodeep-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", sub, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(sub, unix.MNT_DETACH) })
	e := newAgentEnvConfig(t, "isolation:\n  diskDir: {{DIR}}/disks\n  allowedHostPaths: [\""+dir+":ro\"]\n")
	s := e.spec("writer", "sh", "-c", "touch /data/top; touch /data/sub/below; echo tried")
	s.Labels = map[string]string{isolation.LabelHostMounts: dir + ":/data"}
	e.launch(s)
	wantState(t, e.waitFinal("writer"), stFinished, task.ReasonCompleted, 0)
	for _, f := range []string{"top", "sub/below"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			t.Errorf("the task wrote %s into a read-only host path", f)
		}
	}
	e.assertNoLeftovers()
}
