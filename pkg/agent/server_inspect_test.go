package agent

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/runtime"
)

func TestReadBack(t *testing.T) {
	in := runtime.Inspection{
		Net: &runtime.NetView{
			Interfaces: []runtime.Interface{
				{Name: "lo", MTU: 65536, Up: true, Addrs: []string{"127.0.0.1/8"}},
				{Name: "eth0", MAC: "0e:00:00:00:00:09", MTU: 9001, Up: true, Addrs: []string{"198.19.7.9/24"}},
			},
			Routes: []string{"default via 198.19.7.1 dev eth0"},
			// The task's own listener is not the agent's.
			Listening: []string{"0.0.0.0:8080", "169.254.169.254:80", "[fd00:ec2::254]:80"},
		},
		Disk: &runtime.DiskView{SizeBytes: 32 << 20, UsedBytes: 1 << 20, AvailableBytes: 30 << 20},
	}
	got := &agentv1.InspectTaskResponse{}
	readBack(got, in, 32)
	want := &agentv1.InspectTaskResponse{
		Interfaces: []*agentv1.NetInterface{
			{Name: "lo", Mtu: 65536, State: "up", Addresses: []string{"127.0.0.1/8"}},
			{Name: "eth0", Mac: "0e:00:00:00:00:09", Mtu: 9001, State: "up", Addresses: []string{"198.19.7.9/24"}},
		},
		Routes:            []string{"default via 198.19.7.1 dev eth0"},
		MetadataListeners: []string{"169.254.169.254:80", "[fd00:ec2::254]:80"},
		Disk:              &agentv1.DiskUsage{SizeBytes: 32 << 20, UsedBytes: 1 << 20, AvailableBytes: 30 << 20, QuotaMib: 32},
	}
	if d := cmp.Diff(want, got, protocmp.Transform()); d != "" {
		t.Errorf("read back (-want +got):\n%s", d)
	}
	// Nothing read (the task does not run): nothing shown.
	empty := &agentv1.InspectTaskResponse{}
	readBack(empty, runtime.Inspection{}, 32)
	if d := cmp.Diff(&agentv1.InspectTaskResponse{}, empty, protocmp.Transform()); d != "" {
		t.Errorf("nothing read (-want +got):\n%s", d)
	}
}
