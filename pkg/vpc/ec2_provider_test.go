package vpc

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/titus-agent/titus-agent/pkg/task"
)

var cmpNet = cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func newTestProvider(t *testing.T, f *fakeEC2, c *clock, record string) *EC2Provider {
	t.Helper()
	p, err := NewEC2Provider(context.Background(), EC2ProviderConfig{
		API: f, Host: f.host(), AgentID: "test", DefaultSecurityGroups: []string{"sg-1"},
		Pool:       PoolConfig{WarmIPs: 2, ReleaseAfter: time.Minute, ReuseCooldown: 10 * time.Second},
		RecordPath: record, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: c.Now,
	})
	if err != nil {
		t.Fatalf("NewEC2Provider: %v", err)
	}
	return p
}

func req(groups ...string) task.NetworkRequest { return task.NetworkRequest{SecurityGroupIDs: groups} }

func mustAlloc(t *testing.T, p *EC2Provider, id string, r task.NetworkRequest) Allocation {
	t.Helper()
	a, err := p.Allocate(context.Background(), id, r)
	if err != nil {
		t.Fatalf("Allocate %s: %v", id, err)
	}
	return a
}

func TestEC2ProviderWarmPool(t *testing.T) {
	f, c := newFakeEC2(), &clock{t: t0}
	p := newTestProvider(t, f, c, filepath.Join(t.TempDir(), "alloc.json"))
	ctx := context.Background()

	f.resetCalls()
	a1 := mustAlloc(t, p, "t1", req("sg-1"))
	want := []string{"DescribeNetworkInterfaces", "CreateNetworkInterface", "AttachNetworkInterface", "ModifyNetworkInterfaceAttribute"}
	if diff := cmp.Diff(want, f.Calls()); diff != "" {
		t.Errorf("cold allocate calls (-want +got):\n%s", diff)
	}
	if a1.DeviceIndex != 1 || a1.IPv4.Bits() != 24 || a1.Gateway.String() != "198.18.1.1" || a1.MAC == "" {
		t.Errorf("allocation = %+v", a1)
	}
	p.Tick(ctx) // pool has 2 free = target: nothing to do
	f.resetCalls()
	a2 := mustAlloc(t, p, "t2", req("sg-1"))
	if calls := f.Calls(); len(calls) != 0 {
		t.Errorf("warm allocate called EC2: %v", calls)
	}
	if a2.ENIID != a1.ENIID || a2.IPv4 == a1.IPv4 {
		t.Errorf("t2 = %+v, want another IP on %s", a2, a1.ENIID)
	}
	if again := mustAlloc(t, p, "t1", req("sg-1")); !cmp.Equal(again, a1, cmpNet) {
		t.Errorf("allocate is not idempotent: %+v vs %+v", again, a1)
	}
	// Refill: 1 free left on a full ENI → a second ENI for the same key.
	p.Tick(ctx)
	st := p.PoolStatus(ctx)
	if len(st.ENIs) != 2 || st.Pools[0].Free < 2 {
		t.Errorf("after refill: %+v", st)
	}

	// Another SG set gets its own ENI? The instance is at its 2 task ENIs,
	// both holding sg-1 tasks or warm IPs: only ENI 2 (idle) can move.
	a3 := mustAlloc(t, p, "t3", req("sg-2", "sg-3"))
	if a3.ENIID == a1.ENIID {
		t.Errorf("sg-2,sg-3 task shares ENI with sg-1 tasks: %+v", a3)
	}
	if diff := cmp.Diff([]string{"sg-2", "sg-3"}, a3.SecurityGroupIDs); diff != "" {
		t.Errorf("groups (-want +got):\n%s", diff)
	}
	v := f.view()
	if got := v[a3.ENIID]; got == "" || !contains(got, "subnet-a/sg-2,sg-3") {
		t.Errorf("EC2 view of %s = %q", a3.ENIID, got)
	}

	allocs, _ := p.Allocations(ctx)
	ids := []string{}
	for _, a := range allocs {
		ids = append(ids, a.TaskID)
	}
	if diff := cmp.Diff([]string{"t1", "t2", "t3"}, ids); diff != "" {
		t.Errorf("Allocations (-want +got):\n%s", diff)
	}
}

func contains(s, sub string) bool {
	return len(sub) == 0 || (len(s) >= len(sub) && (s[:len(sub)] == sub || contains(s[1:], sub)))
}

func TestEC2ProviderNoCapacity(t *testing.T) {
	f, c := newFakeEC2(), &clock{t: t0}
	p := newTestProvider(t, f, c, filepath.Join(t.TempDir(), "alloc.json"))
	// t3.small: 2 task ENIs × 3 secondary IPs.
	for i := range 6 {
		mustAlloc(t, p, "t"+string(rune('a'+i)), req("sg-1"))
	}
	_, err := p.Allocate(context.Background(), "t-extra", req("sg-1"))
	if !errors.Is(err, ErrNoCapacity) {
		t.Fatalf("7th allocate: %v, want ErrNoCapacity", err)
	}
	_, err = p.Allocate(context.Background(), "t-other", req("sg-9"))
	if !errors.Is(err, ErrNoCapacity) {
		t.Fatalf("other SG on a full host: %v, want ErrNoCapacity", err)
	}
	if _, ok := p.record.entries()["t-extra"]; ok {
		t.Error("failed allocation left a record entry")
	}
}

func TestEC2ProviderRegroupIdleENI(t *testing.T) {
	f, c := newFakeEC2(), &clock{t: t0}
	p := newTestProvider(t, f, c, filepath.Join(t.TempDir(), "alloc.json"))
	ctx := context.Background()
	x := mustAlloc(t, p, "x", req("sg-2"))
	for _, id := range []string{"a", "b", "c"} {
		mustAlloc(t, p, id, req("sg-1"))
	}
	if err := p.Release(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	f.resetCalls()
	d := mustAlloc(t, p, "d", req("sg-1"))
	if d.ENIID != x.ENIID {
		t.Fatalf("d on %s, want the idle ENI %s moved over", d.ENIID, x.ENIID)
	}
	if d.IPv4 == x.IPv4 {
		t.Errorf("d got x's IP during its cool-down")
	}
	if diff := cmp.Diff([]string{"ModifyNetworkInterfaceAttribute"}, f.Calls()); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
	if got := f.view()[x.ENIID]; !contains(got, "subnet-a/sg-1 ") {
		t.Errorf("EC2 view %q, want sg-1", got)
	}
}

func TestEC2ProviderReleaseShrinks(t *testing.T) {
	f, c := newFakeEC2(), &clock{t: t0}
	p := newTestProvider(t, f, c, filepath.Join(t.TempDir(), "alloc.json"))
	ctx := context.Background()
	mustAlloc(t, p, "t1", req("sg-1"))
	mustAlloc(t, p, "t2", req("sg-2"))
	for _, id := range []string{"t1", "t2"} {
		if err := p.Release(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Release(ctx, "t1"); err != nil {
		t.Fatalf("second release: %v", err)
	}
	p.Tick(ctx)
	c.Add(2 * time.Minute) // keys idle, surplus aged
	p.Tick(ctx)
	c.Add(2 * time.Minute)
	p.Tick(ctx)
	if v := f.view(); len(v) != 0 {
		t.Errorf("ENIs left after all tasks ended and pools aged: %v", v)
	}
}

func TestEC2ProviderWarmDefaultPool(t *testing.T) {
	f, c := newFakeEC2(), &clock{t: t0}
	p, err := NewEC2Provider(context.Background(), EC2ProviderConfig{
		API: f, Host: f.host(), DefaultSecurityGroups: []string{"sg-1"},
		Pool: PoolConfig{WarmIPs: 2, MinDefaultIPs: 2, ReleaseAfter: time.Minute}, RecordPath: filepath.Join(t.TempDir(), "a.json"),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: c.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	p.Tick(context.Background())
	c.Add(time.Hour)
	p.Tick(context.Background())
	st := p.PoolStatus(context.Background())
	if diff := cmp.Diff([]PoolKeyStatus{{SubnetID: "subnet-a", SecurityGroups: []string{"sg-1"}, ENIs: 1, Free: 2, Target: 2}}, st.Pools); diff != "" {
		t.Errorf("default pool (-want +got):\n%s", diff)
	}
	f.resetCalls()
	mustAlloc(t, p, "t1", task.NetworkRequest{})
	if calls := f.Calls(); len(calls) != 0 {
		t.Errorf("launch from the default warm pool called EC2: %v", calls)
	}
}

func TestEC2ProviderRestart(t *testing.T) {
	f, c := newFakeEC2(), &clock{t: t0}
	rec := filepath.Join(t.TempDir(), "alloc.json")
	p := newTestProvider(t, f, c, rec)
	ctx := context.Background()
	a1 := mustAlloc(t, p, "t1", req("sg-1"))
	a2 := mustAlloc(t, p, "t2", req("sg-2"))
	// Crash mid-launch: intent recorded, no IP; and an ENI created but never attached.
	if err := p.record.put("t3", recordEntry{State: recordPending, Key: NewPoolKey("subnet-a", []string{"sg-1"})}); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	leaked := f.newENI("subnet-a", []string{"sg-1"}, (&eniManager{host: f.host()}).tags())
	f.mu.Unlock()

	p2 := newTestProvider(t, f, c, rec)
	allocs, _ := p2.Allocations(ctx)
	if diff := cmp.Diff([]Allocation{a1, a2}, allocs, cmpNet); diff != "" {
		t.Errorf("rebuilt allocations (-want +got):\n%s", diff)
	}
	if _, ok := f.view()[aws.ToString(leaked.NetworkInterfaceId)]; ok {
		t.Error("leaked detached ENI was not deleted")
	}
	if _, ok := p2.record.entries()["t3"]; ok {
		t.Error("pending record survived the rebuild")
	}
	// The rebuilt pool serves warm IPs without EC2.
	f.resetCalls()
	a4 := mustAlloc(t, p2, "t4", req("sg-1"))
	if calls := f.Calls(); len(calls) != 0 || a4.ENIID != a1.ENIID {
		t.Errorf("t4 = %+v, calls %v", a4, calls)
	}
}

func TestEC2ProviderRefillBacksOff(t *testing.T) {
	f, c := newFakeEC2(), &clock{t: t0}
	p := newTestProvider(t, f, c, filepath.Join(t.TempDir(), "alloc.json"))
	ctx := context.Background()
	mustAlloc(t, p, "t1", req("sg-1"))
	mustAlloc(t, p, "t2", req("sg-1")) // 1 free left, below target
	throttle := &smithy.GenericAPIError{Code: "RequestLimitExceeded", Message: "slow down"}
	f.mu.Lock()
	f.fail["CreateNetworkInterface"] = throttle
	f.mu.Unlock()
	f.resetCalls()
	p.Tick(ctx)
	p.Tick(ctx) // within the backoff: no new call
	creates := 0
	for _, c := range f.Calls() {
		if c == "CreateNetworkInterface" {
			creates++
		}
	}
	if creates != 1 {
		t.Errorf("CreateNetworkInterface called %d times, want 1 (second tick backs off)", creates)
	}
	if got := p.RefillFailures(); got[NewPoolKey("subnet-a", []string{"sg-1"}).String()] != 1 {
		t.Errorf("RefillFailures = %v", got)
	}
	// The warm IP is still handed out while refills fail.
	f.resetCalls()
	mustAlloc(t, p, "t3", req("sg-1"))
	if calls := f.Calls(); len(calls) != 0 {
		t.Errorf("warm allocate during throttling called EC2: %v", calls)
	}
	f.mu.Lock()
	delete(f.fail, "CreateNetworkInterface")
	f.mu.Unlock()
	c.Add(time.Minute)
	p.Tick(ctx)
	if got := p.RefillFailures(); len(got) != 0 {
		t.Errorf("RefillFailures after recovery = %v", got)
	}
}

func TestEC2ProviderCreateFailureLeavesNothing(t *testing.T) {
	f, c := newFakeEC2(), &clock{t: t0}
	p := newTestProvider(t, f, c, filepath.Join(t.TempDir(), "alloc.json"))
	f.mu.Lock()
	f.fail["ModifyNetworkInterfaceAttribute"] = errors.New("boom")
	f.mu.Unlock()
	_, err := p.Allocate(context.Background(), "t1", req("sg-1"))
	if err == nil || errors.Is(err, ErrNoCapacity) {
		t.Fatalf("Allocate = %v, want the EC2 error", err)
	}
	if v := f.view(); len(v) != 0 {
		t.Errorf("half-made ENI left behind: %v", v)
	}
	if e := p.record.entries(); len(e) != 0 {
		t.Errorf("record after failure: %v", e)
	}
}

func TestEC2ProviderSubnetChoice(t *testing.T) {
	f, c := newFakeEC2(), &clock{t: t0}
	p := newTestProvider(t, f, c, filepath.Join(t.TempDir(), "alloc.json"))
	a := mustAlloc(t, p, "t1", task.NetworkRequest{SubnetIDs: []string{"subnet-z", "subnet-b"}, SecurityGroupIDs: []string{"sg-1"}})
	if a.SubnetID != "subnet-b" {
		t.Errorf("subnet = %s, want subnet-b (the one in the host's AZ)", a.SubnetID)
	}
	_, err := p.Allocate(context.Background(), "t2", task.NetworkRequest{SubnetIDs: []string{"subnet-z"}, SecurityGroupIDs: []string{"sg-1"}})
	if !errors.Is(err, ErrInvalidNetworkRequest) || !errors.Is(err, ErrSubnetNotInZone) {
		t.Errorf("other-AZ subnet: %v, want ErrInvalidNetworkRequest and ErrSubnetNotInZone", err)
	}
}

func TestFreeDeviceIndex(t *testing.T) {
	att := func(i int32) types.NetworkInterface {
		return types.NetworkInterface{Attachment: &types.NetworkInterfaceAttachment{DeviceIndex: aws.Int32(i)}}
	}
	for _, tc := range []struct {
		attached []types.NetworkInterface
		max      int
		want     int
		ok       bool
	}{
		{[]types.NetworkInterface{att(0)}, 3, 1, true},
		{[]types.NetworkInterface{att(0), att(1)}, 3, 2, true},
		{[]types.NetworkInterface{att(0), att(2)}, 3, 1, true},
		{[]types.NetworkInterface{att(0), att(1), att(2)}, 3, 0, false},
	} {
		got, ok := freeDeviceIndex(tc.attached, tc.max)
		if got != tc.want || ok != tc.ok {
			t.Errorf("freeDeviceIndex = %d %v, want %d %v", got, ok, tc.want, tc.ok)
		}
	}
}

func TestLimitsCached(t *testing.T) {
	f := newFakeEC2()
	var lc limitsCache
	for range 3 {
		l, err := lc.get(context.Background(), f, "t3.small")
		if err != nil || l != (Limits{3, 4}) {
			t.Fatalf("limits = %+v, %v", l, err)
		}
	}
	calls := f.Calls()
	sort.Strings(calls)
	if diff := cmp.Diff([]string{"DescribeInstanceTypes"}, calls); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
}

// The intent is on disk before EC2 is asked for anything; a warm
// allocation is on disk, as assigned, before Allocate returns.
func TestEC2ProviderRecordsBeforeEC2(t *testing.T) {
	f, c := newFakeEC2(), &clock{t: t0}
	rec := filepath.Join(t.TempDir(), "alloc.json")
	p := newTestProvider(t, f, c, rec)
	onDisk := func() map[string]recordEntry {
		r, err := openRecord(rec)
		if err != nil {
			t.Fatal(err)
		}
		return r.entries()
	}
	var seen []string
	f.mu.Lock()
	f.onCall = func(action string) {
		if action == "CreateNetworkInterface" {
			e := onDisk()["t1"]
			seen = append(seen, string(e.State))
		}
	}
	f.mu.Unlock()
	a1 := mustAlloc(t, p, "t1", req("sg-1"))
	if diff := cmp.Diff([]string{string(recordPending)}, seen); diff != "" {
		t.Errorf("record state of t1 when EC2 was called (-want +got):\n%s", diff)
	}
	f.resetCalls()
	a2 := mustAlloc(t, p, "t2", req("sg-1"))
	if calls := f.Calls(); len(calls) != 0 {
		t.Fatalf("warm allocate called EC2: %v", calls)
	}
	want := map[string]recordEntry{
		"t1": {State: recordAssigned, Key: NewPoolKey("subnet-a", []string{"sg-1"}), ENI: a1.ENIID, IP: a1.IPv4.Addr().String()},
		"t2": {State: recordAssigned, Key: NewPoolKey("subnet-a", []string{"sg-1"}), ENI: a2.ENIID, IP: a2.IPv4.Addr().String()},
	}
	if diff := cmp.Diff(want, onDisk()); diff != "" {
		t.Errorf("record (-want +got):\n%s", diff)
	}
}

func TestEC2ProviderIPv6(t *testing.T) {
	f, c := newFakeEC2(), &clock{t: t0}
	rec := filepath.Join(t.TempDir(), "alloc.json")
	p := newTestProvider(t, f, c, rec)
	ctx := context.Background()
	v6req := func(ipv6 bool) task.NetworkRequest {
		return task.NetworkRequest{SecurityGroupIDs: []string{"sg-1"}, SubnetIDs: []string{"subnet-6"}, IPv6: ipv6}
	}
	subnet6 := netip.MustParsePrefix("2001:2:0:6::/64")

	if _, err := p.Allocate(ctx, "no-v6", task.NetworkRequest{SecurityGroupIDs: []string{"sg-1"}, IPv6: true}); !errors.Is(err, ErrInvalidNetworkRequest) {
		t.Errorf("IPv6 on a subnet without it: %v, want ErrInvalidNetworkRequest", err)
	}
	a1 := mustAlloc(t, p, "t1", v6req(true))
	if !a1.IPv6.IsValid() || !subnet6.Contains(a1.IPv6) {
		t.Fatalf("t1 = %+v, want an IPv6 in %s", a1, subnet6)
	}
	// Every secondary IPv4 of an IPv6 subnet's ENI has its IPv6 partner.
	pairs := func() int {
		n := 0
		for _, e := range p.PoolStatus(ctx).ENIs {
			if e.ID != a1.ENIID {
				continue
			}
			for _, ip := range e.IPs {
				if ip.IPv6 != "" {
					n++
				}
			}
			if got := len(f.ipv6Of(e.ID)); got != len(e.IPs) || n != len(e.IPs) {
				t.Errorf("ENI %s: %d IPv4, %d paired, EC2 has %d IPv6", e.ID, len(e.IPs), n, got)
			}
		}
		return n
	}
	if pairs() < 2 {
		t.Fatalf("no warm IPv6 partners: %+v", p.PoolStatus(ctx))
	}
	f.resetCalls()
	a2 := mustAlloc(t, p, "t2", v6req(true))
	a3 := mustAlloc(t, p, "t3", v6req(false))
	if calls := f.Calls(); len(calls) != 0 {
		t.Errorf("warm IPv6 allocate called EC2: %v", calls)
	}
	if !a2.IPv6.IsValid() || a2.IPv6 == a1.IPv6 || a3.IPv6.IsValid() {
		t.Errorf("t2 = %v, t3 = %v: want a new IPv6 for t2 only", a2.IPv6, a3.IPv6)
	}
	// Refill tops up IPv4 and IPv6 together.
	p.Tick(ctx)
	pairs()

	// A restart keeps each task's pair.
	p2 := newTestProvider(t, f, c, rec)
	allocs, _ := p2.Allocations(ctx)
	if diff := cmp.Diff([]Allocation{a1, a2, a3}, allocs, cmpNet); diff != "" {
		t.Errorf("rebuilt (-want +got):\n%s", diff)
	}

	// Released and past ReleaseAfter: the surplus goes back, IPv6 with IPv4.
	for _, id := range []string{"t1", "t2", "t3"} {
		if err := p2.Release(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	c.Add(11 * time.Second)
	p2.Tick(ctx)
	c.Add(2 * time.Minute)
	p2.Tick(ctx)
	c.Add(2 * time.Minute)
	p2.Tick(ctx)
	for _, e := range p2.PoolStatus(ctx).ENIs {
		if got := len(f.ipv6Of(e.ID)); got != len(e.IPs) {
			t.Errorf("after release, ENI %s has %d IPv4 and %d IPv6 in EC2", e.ID, len(e.IPs), got)
		}
	}
	if v := f.view(); len(v) != 0 {
		t.Errorf("idle pools not handed back: %v", v)
	}
}
