package vpc

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/task"
)

func TestEC2ProviderUsage(t *testing.T) {
	f, c := newFakeEC2(), &clock{t: t0}
	p := newTestProvider(t, f, c, filepath.Join(t.TempDir(), "alloc.json"))
	ctx := context.Background()
	// t3.small in the fake: 3 ENIs of 4 IPv4 each: 2 task ENIs of 3 IPs.
	mustAlloc(t, p, "x", req("sg-2"))
	mustAlloc(t, p, "a", req("sg-1"))
	// A task naming a subnet of another zone first: the provider says
	// which zone each lies in, so the scheduler knows its pool.
	mustAlloc(t, p, "b", task.NetworkRequest{SecurityGroupIDs: []string{"sg-1"}, SubnetIDs: []string{"subnet-z", "subnet-a"}})
	want := Usage{ENIs: 2, IPsPerENI: 3, ReuseCooldown: 10 * time.Second, SGSets: []SGSetUsage{
		{SecurityGroups: "sg-1", SubnetID: "subnet-a", Default: true, ENIs: 1, UsedIPs: 2, FreeIPs: 1},
		{SecurityGroups: "sg-2", SubnetID: "subnet-a", ENIs: 1, UsedIPs: 1, FreeIPs: 2},
	}, DefaultGroups: "sg-1", DefaultSubnetID: "subnet-a", ZoneSubnets: []string{"subnet-a"}, OtherZoneSubnets: []string{"subnet-z"}}
	if diff := cmp.Diff(want, p.Usage()); diff != "" {
		t.Errorf("usage (-want +got):\n%s", diff)
	}
	// Released: x's IP cools down and its ENI is idle, so attachable again.
	if err := p.Release(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	got := p.Usage()
	want.AttachableENIs = 1
	want.SGSets[1] = SGSetUsage{SecurityGroups: "sg-2", SubnetID: "subnet-a", CoolingIPs: 1, FreeIPs: got.SGSets[1].FreeIPs}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("after release (-want +got):\n%s", diff)
	}
}
