package vpc

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// fakeProvider is an IPProvider that answers from fixed values.
type fakeProvider struct {
	name   string
	status any
	levels []PoolLevel
	allocs []Allocation
}

func (f *fakeProvider) Name() string { return f.name }
func (f *fakeProvider) Allocate(_ context.Context, taskID string, _ task.NetworkRequest) (Allocation, error) {
	for _, a := range f.allocs {
		if a.TaskID == taskID {
			return a, nil
		}
	}
	return Allocation{}, ErrNoCapacity
}
func (f *fakeProvider) Release(context.Context, string) error { return nil }
func (f *fakeProvider) Allocations(context.Context) ([]Allocation, error) {
	return f.allocs, nil
}
func (f *fakeProvider) Status(context.Context) (any, error)         { return f.status, nil }
func (f *fakeProvider) Levels(context.Context) ([]PoolLevel, error) { return f.levels, nil }

// TestNetworkAsksTheProvider: the operator view comes from the provider's
// own methods, for any provider (no type switch on known ones).
func TestNetworkAsksTheProvider(t *testing.T) {
	ctx := context.Background()
	for _, p := range []*fakeProvider{
		{name: ProviderLocal, status: LocalStatus{CIDR: "198.18.0.0/24"}, levels: []PoolLevel{{Subnet: "local", Free: 3}}},
		{name: "other", status: map[string]int{"x": 1}, levels: []PoolLevel{{Subnet: "a", Free: 1}, {Subnet: "b", Free: 2, Used: 1}}},
	} {
		n := NewNetwork(p, nil)
		st, err := n.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		free, err := n.FreeAddresses(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := 0
		for _, l := range p.levels {
			want += l.Free
		}
		got := struct {
			Name   string
			Status any
			Free   int
		}{n.Provider(), st, free}
		if diff := cmp.Diff(struct {
			Name   string
			Status any
			Free   int
		}{p.name, p.status, want}, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", p.name, diff)
		}
	}
}

func TestAllocationRouted(t *testing.T) {
	for _, tt := range []struct {
		a    Allocation
		want bool
	}{
		{Allocation{Provider: ProviderEC2}, true},
		{Allocation{Provider: ProviderLocal}, false},
		{Allocation{}, false}, // a record without a provider is bridged, as before
	} {
		if got := tt.a.routed(); got != tt.want {
			t.Errorf("%q routed = %v, want %v", tt.a.Provider, got, tt.want)
		}
	}
}

// TestNetworkSetsUpAnENILinkOncePerENI: a routed allocation gets its ENI's
// link and table set up first, once per ENI; a bridged one never does.
func TestNetworkSetsUpAnENILinkOncePerENI(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		alloc Allocation
		want  int // ENI default routes installed over two launches
	}{
		{ec2Alloc, 1},
		{localAlloc, 0},
	} {
		d, w := newTestDataPlane(t)
		mac, _ := net.ParseMAC(ec2Alloc.MAC)
		w.host().addLink(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "ens6", HardwareAddr: mac}})
		w.host().addLink(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "tbr0"}})
		second := tc.alloc
		second.TaskID = "t2"
		p := &fakeProvider{name: tc.alloc.Provider, allocs: []Allocation{tc.alloc, second}}
		n := NewNetwork(p, d)
		for _, id := range []string{"t1", "t2"} {
			if _, err := n.Setup(ctx, id, task.NetworkRequest{}); err != nil {
				t.Fatal(err)
			}
		}
		got := 0
		for _, l := range w.log {
			if strings.HasPrefix(l, "host RouteReplace dev ens6 dst 0.0.0.0/0") {
				got++
			}
		}
		if got != tc.want {
			t.Errorf("%s: ENI default route set %d times, want %d; calls:\n%s", tc.alloc.Provider, got, tc.want, strings.Join(w.log, "\n"))
		}
	}
}
