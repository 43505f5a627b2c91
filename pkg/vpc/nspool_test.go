package vpc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/titus-agent/titus-agent/pkg/refill"
)

// recStats records a pool's takes and ready counts.
type recStats struct{ events []string }

func (r *recStats) PoolTake(pool string, hit bool) {
	r.events = append(r.events, fmt.Sprintf("take %s hit=%t", pool, hit))
}
func (r *recStats) PoolReady(pool string, n int) {
	r.events = append(r.events, fmt.Sprintf("ready %s %d", pool, n))
}

// newTestPool is a data plane with a namespace pool of size whose names
// are w00000001, w00000002, ...; nothing runs in the background.
func newTestPool(t *testing.T, size int) (*DataPlane, *fakeNet, *NetNSPool, *recStats) {
	t.Helper()
	d, w := newTestDataPlane(t)
	st := &recStats{}
	p, err := d.EnablePool(NetNSPoolConfig{Size: size, Dir: filepath.Join(t.TempDir(), "pool"), Stats: st})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	p.random = func() (string, error) { n++; return fmt.Sprintf("%08x", n), nil }
	w.log, st.events = nil, nil
	return d, w, p, st
}

// norm replaces the pool's temporary directory and tag in a log.
func norm(p *NetNSPool, log []string) []string {
	out := make([]string, len(log))
	for i, l := range log {
		out[i] = strings.ReplaceAll(strings.ReplaceAll(l, p.dir, "POOL"), warmVethPrefix+p.tag, "twTAG")
	}
	return out
}

func TestNetNSPoolFill(t *testing.T) {
	_, w, p, st := newTestPool(t, 2)
	if !p.fill(context.Background()) {
		t.Fatal("fill failed")
	}
	want := []string{
		"Ensure POOL/w00000001",
		"host LinkAdd veth twTAG00000001 mtu 9001 peer eth0 in task",
		"task LinkSetUp lo",
		"Ensure POOL/w00000002",
		"host LinkAdd veth twTAG00000002 mtu 9001 peer eth0 in task",
		"task LinkSetUp lo",
	}
	if diff := cmp.Diff(want, norm(p, w.log)); diff != "" {
		t.Errorf("fill (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"ready netns 1", "ready netns 2"}, st.events); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
	w.log = nil
	p.fill(context.Background()) // full: nothing more
	if len(w.log) != 0 {
		t.Errorf("fill of a full pool: %v", w.log)
	}
}

func TestNetNSPoolSetupTakesAPooledNamespace(t *testing.T) {
	d, w, p, st := newTestPool(t, 1)
	p.fill(context.Background())
	w.log, st.events = nil, nil
	if _, err := d.Setup(context.Background(), ec2Alloc); err != nil {
		t.Fatal(err)
	}
	// The veth is renamed to the task's and the namespace moved to the
	// task's path: nothing is made on the launch's path.
	want := []string{
		"host LinkSetName twTAG00000001 tt628b49d96d",
		"Adopt POOL/w00000001 /run/test/netns/t1",
		"task LinkSetUp lo",
		"task AddrReplace eth0 198.18.1.10/32 flags 0",
		"task LinkSetUp eth0",
		"task RouteReplace dev eth0 dst 169.254.1.1/32 scope link",
		"task NeighSet dev eth0 169.254.1.1 lladdr 02:00:00:00:00:02 permanent=true",
		"task RouteReplace dev eth0 dst 0.0.0.0/0 via 169.254.1.1",
		"host LinkSetUp tt628b49d96d",
		"host RouteReplace dev tt628b49d96d dst 198.18.1.10/32 scope link",
		"host RuleAdd from 198.18.1.10/32 table 1001 prio 20000",
		"sysctl /proc/sys/net/ipv4/conf/tt628b49d96d/proxy_arp=1",
	}
	if diff := cmp.Diff(want, norm(p, w.log)); diff != "" {
		t.Errorf("setup (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"take netns hit=true", "ready netns 0"}, st.events); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
	if !w.Exists("/run/test/netns/t1") || p.Ready() != 0 {
		t.Fatalf("after take: task netns %t, ready %d", w.Exists("/run/test/netns/t1"), p.Ready())
	}

	// A second Setup of the same task (a retried hook) keeps its namespace
	// and takes nothing from the pool, which refilled meanwhile.
	p.fill(context.Background())
	w.log, st.events = nil, nil
	if _, err := d.Setup(context.Background(), ec2Alloc); err != nil {
		t.Fatal(err)
	}
	if p.Ready() != 1 || len(st.events) != 0 || strings.Contains(strings.Join(w.log, "\n"), "Adopt") {
		t.Fatalf("re-setup took from the pool: ready %d, stats %v, log %v", p.Ready(), st.events, w.log)
	}

	// Another task gets the other pooled namespace, never the first's.
	w.log = nil
	other := ec2Alloc
	other.TaskID = "t2"
	if _, err := d.Setup(context.Background(), other); err != nil {
		t.Fatal(err)
	}
	if got := norm(p, w.log)[:2]; !cmp.Equal(got, []string{"host LinkSetName twTAG00000002 " + HostVeth("t2"), "Adopt POOL/w00000002 /run/test/netns/t2"}) {
		t.Fatalf("second task: %v", got)
	}
}

func TestNetNSPoolEmptyMakesAsBefore(t *testing.T) {
	d, w, p, st := newTestPool(t, 1)
	if _, err := d.Setup(context.Background(), ec2Alloc); err != nil {
		t.Fatal(err)
	}
	if got := norm(p, w.log)[:2]; !cmp.Equal(got, []string{"Ensure /run/test/netns/t1", "host LinkAdd veth tt628b49d96d mtu 9001 peer eth0 in task"}) {
		t.Fatalf("setup on an empty pool: %v", got)
	}
	if diff := cmp.Diff([]string{"take netns hit=false", "ready netns 0"}, st.events); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
}

func TestNetNSPoolFailedHandOverIsDiscarded(t *testing.T) {
	d, w, p, _ := newTestPool(t, 1)
	p.fill(context.Background())
	w.log = nil
	w.fail["Adopt"] = errors.New("EBUSY")
	if _, err := d.Setup(context.Background(), ec2Alloc); err != nil {
		t.Fatal(err)
	}
	// The renamed veth is deleted (not left for the fresh namespace to
	// reuse), the pooled namespace removed, and a fresh pair made.
	want := []string{
		"host LinkSetName twTAG00000001 tt628b49d96d",
		"Adopt POOL/w00000001 /run/test/netns/t1",
		"host LinkDel tt628b49d96d",
		"Remove POOL/w00000001",
		"Remove /run/test/netns/t1",
		"Ensure /run/test/netns/t1",
		"host LinkAdd veth tt628b49d96d mtu 9001 peer eth0 in task",
	}
	if diff := cmp.Diff(want, norm(p, w.log)[:len(want)]); diff != "" {
		t.Errorf("setup (-want +got):\n%s", diff)
	}
	if p.Ready() != 0 {
		t.Fatalf("a namespace that failed its hand-over went back to the pool")
	}
}

func TestNetNSPoolFillFailure(t *testing.T) {
	_, w, p, _ := newTestPool(t, 2)
	w.fail["LinkAdd"] = errors.New("ENOMEM")
	if p.fill(context.Background()) {
		t.Fatal("fill reported success")
	}
	want := []string{"Ensure POOL/w00000001", "host LinkAdd veth twTAG00000001 mtu 9001 peer eth0 in task", "Remove POOL/w00000001"}
	if diff := cmp.Diff(want, norm(p, w.log)); diff != "" {
		t.Errorf("fill (-want +got):\n%s", diff)
	}
	if p.Ready() != 0 {
		t.Fatal("a half-made namespace is in the pool")
	}
}

func TestNetNSPoolClose(t *testing.T) {
	d, w, p, _ := newTestPool(t, 2)
	p.Start(context.Background())
	p.refill.Kick()
	for p.Ready() < 2 { // the background fill
		time.Sleep(time.Millisecond)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	w.log = nil
	if err := p.Close(); err != nil { // again: nothing left
		t.Fatal(err)
	}
	if len(w.log) != 0 || p.Ready() != 0 {
		t.Fatalf("second close: %v", w.log)
	}
	for _, l := range w.host().links {
		t.Errorf("link left after close: %s", l.Attrs().Name)
	}
	for path := range w.paths {
		t.Errorf("namespace left after close: %s", path)
	}
	// A closed pool hands out nothing; Setup makes its own.
	if _, err := d.Setup(context.Background(), ec2Alloc); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(w.log, "\n"), "Ensure /run/test/netns/t1") {
		t.Fatalf("setup after close: %v", w.log)
	}
}

func TestNetNSPoolPurge(t *testing.T) {
	d, w := newTestDataPlane(t)
	dir := filepath.Join(t.TempDir(), "pool")
	tag := poolTag(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// What a killed agent left: two pooled namespaces (one half-made), its
	// veths; beside them a task's veth and another agent's pooled veth.
	for _, n := range []string{"w0000000a", "w0000000b"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o444); err != nil {
			t.Fatal(err)
		}
	}
	other := "ffff"
	if tag == other {
		other = "eeee"
	}
	for _, n := range []string{"tw" + tag + "0000000a", "tt628b49d96d", "tw" + other + "0000000a", "tw" + tag + "0a"} {
		w.host().addLink(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: n}})
	}
	// And one whose hand-over to a task was cut short after its veth was
	// renamed: its host end goes by its peer, whatever its name.
	cut := filepath.Join(dir, "w0000000c")
	if err := os.WriteFile(cut, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := d.makeWarm(warmNS{path: cut, veth: "tw" + tag + "0000000c"}); err != nil {
		t.Fatal(err)
	}
	l, _ := w.host().LinkByName("tw" + tag + "0000000c")
	l.Attrs().Name = HostVeth("t9")
	w.log = nil
	p, err := d.EnablePool(NetNSPoolConfig{Size: 1, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"host LinkDel tw" + tag + "0000000a",
		"Remove " + dir + "/w0000000a",
		"Remove " + dir + "/w0000000b",
		"host LinkDel " + HostVeth("t9"),
		"Remove " + dir + "/w0000000c",
	}
	if diff := cmp.Diff(want, w.log); diff != "" {
		t.Errorf("purge (-want +got):\n%s", diff)
	}
	if p.Ready() != 0 {
		t.Fatal("purged pool holds something")
	}
}

func TestNetNSPoolConfig(t *testing.T) {
	d, _ := newTestDataPlane(t)
	for _, cfg := range []NetNSPoolConfig{{Size: 0, Dir: t.TempDir()}, {Size: 1}, {Size: 1, Dir: "/run/test/netns/"}} {
		if _, err := d.EnablePool(cfg); err == nil {
			t.Errorf("EnablePool(%+v) accepted", cfg)
		}
	}
}

// While a launch is on its critical path the refill makes nothing (it
// waits for the launch, here until its context ends); once the launch is
// done it fills.
func TestNetNSPoolFillYieldsToLaunches(t *testing.T) {
	_, w, p, _ := newTestPool(t, 1)
	gate := &refill.Gate{}
	p.refill.YieldTo(gate)
	leave := gate.Enter()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	p.fill(ctx)
	if len(w.log) != 0 {
		t.Errorf("fill during a launch: %v", w.log)
	}
	leave()
	if !p.fill(context.Background()) || len(w.log) == 0 {
		t.Errorf("fill after the launch made nothing: %v", w.log)
	}
}

// Every pooled namespace is prepared once made (the metadata listeners);
// one whose preparation failed is discarded. What was prepared is released
// with the namespace: the pool's Close, and the Teardown of a task that
// got a pooled namespace (torn down before its metadata hook took the
// listeners); releasing a namespace with nothing prepared is harmless.
func TestNetNSPoolPrepareAndRelease(t *testing.T) {
	d, w, p, _ := newTestPool(t, 2)
	var events []string
	fail := true
	p.SetPrepare(func(path string) error {
		events = append(events, "prepare "+path)
		if fail {
			fail = false
			return errors.New("no listener")
		}
		return nil
	}, func(path string) { events = append(events, "release "+path) })
	if p.fill(context.Background()) {
		t.Fatal("fill succeeded with a failed preparation")
	}
	if p.Ready() != 0 || w.Exists(filepath.Join(p.dir, "w00000001")) {
		t.Fatalf("a namespace whose preparation failed was kept: ready %d", p.Ready())
	}
	if !p.fill(context.Background()) || p.Ready() != 2 {
		t.Fatalf("fill: ready %d", p.Ready())
	}
	if _, err := d.Setup(context.Background(), ec2Alloc); err != nil {
		t.Fatal(err)
	}
	if err := d.Teardown(context.Background(), "t1", &ec2Alloc); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"prepare POOL/w00000001", "release POOL/w00000001", // failed: discarded
		"prepare POOL/w00000002", "prepare POOL/w00000003",
		"release /run/test/netns/t1", // the task's, once w00000002
		"release POOL/w00000003",     // Close
	}
	norm := func(s []string) []string {
		out := make([]string, len(s))
		for i, e := range s {
			out[i] = strings.ReplaceAll(e, p.dir, "POOL")
		}
		return out
	}
	if diff := cmp.Diff(want, norm(events)); diff != "" {
		t.Errorf("prepare/release (-want +got):\n%s", diff)
	}
}
