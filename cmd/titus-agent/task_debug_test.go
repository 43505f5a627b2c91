package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
)

func TestPrintReadBack(t *testing.T) {
	var b bytes.Buffer
	printReadBack(&b, &agentv1.InspectTaskResponse{
		Interfaces: []*agentv1.NetInterface{
			{Name: "lo", Mtu: 65536, State: "up", Addresses: []string{"127.0.0.1/8"}},
			{Name: "eth0", Mac: "0e:00:00:00:00:09", Mtu: 9001, State: "up", Addresses: []string{"198.19.7.9/24", "fe80::1/64"}},
		},
		Routes:            []string{"default via 198.19.7.1 dev eth0"},
		MetadataListeners: []string{"169.254.169.254:80"},
		Disk:              &agentv1.DiskUsage{SizeBytes: 32 << 20, UsedBytes: 8 << 20, AvailableBytes: 24 << 20, QuotaMib: 32},
	})
	want := `Interfaces (in the task's netns):
  NAME  STATE  MTU    MAC                ADDRESSES
  lo    up     65536                     127.0.0.1/8
  eth0  up     9001   0e:00:00:00:00:09  198.19.7.9/24 fe80::1/64
Routes:
  default via 198.19.7.1 dev eth0
Metadata: 169.254.169.254:80
Disk:    8.0MiB used of 32.0MiB (25%), 24.0MiB available, quota 32MiB
`
	if d := cmp.Diff(want, b.String()); d != "" {
		t.Errorf("output (-want +got):\n%s", d)
	}
	// A task without a network or a quota: only what there is.
	b.Reset()
	printReadBack(&b, &agentv1.InspectTaskResponse{Disk: &agentv1.DiskUsage{SizeBytes: 1 << 30, UsedBytes: 1 << 29}})
	if got := b.String(); strings.Contains(got, "Interfaces") || !strings.Contains(got, "no quota") {
		t.Errorf("output: %q", got)
	}
}
