package schedlink

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/keepalive"
)

func TestKeepaliveParams(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   keepalive.ClientParameters
		want keepalive.ClientParameters
	}{
		{"zero is the default", keepalive.ClientParameters{}, keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}},
		{"time only", keepalive.ClientParameters{Time: 30 * time.Second}, keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}},
		{"timeout only", keepalive.ClientParameters{Timeout: time.Second}, keepalive.ClientParameters{Time: 10 * time.Second, Timeout: time.Second, PermitWithoutStream: true}},
		{"negative", keepalive.ClientParameters{Time: -1, Timeout: -1}, DefaultKeepalive},
		{"always without a stream", keepalive.ClientParameters{Time: 20 * time.Second, Timeout: 2 * time.Second}, keepalive.ClientParameters{Time: 20 * time.Second, Timeout: 2 * time.Second, PermitWithoutStream: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if d := cmp.Diff(tc.want, keepaliveParams(tc.in)); d != "" {
				t.Errorf("keepaliveParams(%+v) (-want +got):\n%s", tc.in, d)
			}
		})
	}
}
