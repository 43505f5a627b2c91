package scheduler

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// Keepalive of the scheduler's gRPC connections (agent streams and API
// clients alike).
//
// A connection whose peer died without a reset (a partition, a host link
// down, a killed VM) sends nothing and is otherwise noticed only through
// TCP timeouts, minutes later. The scheduler pings a connection that has
// been idle for KeepaliveTime and closes it when the ping is not answered
// within KeepaliveTimeout: the stream handler ends and its session is
// released. (An agent whose heartbeats stop is lost at the agent TTL
// whatever the transport does; this frees the connection behind it.)
//
// Agents ping too (schedlink.DefaultKeepalive, every 10s). The enforcement
// policy allows a client's pings no more often than KeepaliveMinClientPing,
// with or without an open stream; a client pinging more often (a flood of
// HTTP/2 PINGs) is sent GOAWAY ENHANCE_YOUR_CALM and disconnected.
const (
	KeepaliveTime          = 10 * time.Second
	KeepaliveTimeout       = 5 * time.Second
	KeepaliveMinClientPing = 5 * time.Second
)

// keepaliveOptions are the server's keepalive parameters and enforcement.
func keepaliveOptions(p keepalive.ServerParameters, ep keepalive.EnforcementPolicy) []grpc.ServerOption {
	return []grpc.ServerOption{grpc.KeepaliveParams(p), grpc.KeepaliveEnforcementPolicy(ep)}
}

func defaultKeepalive() (keepalive.ServerParameters, keepalive.EnforcementPolicy) {
	return keepalive.ServerParameters{Time: KeepaliveTime, Timeout: KeepaliveTimeout},
		keepalive.EnforcementPolicy{MinTime: KeepaliveMinClientPing, PermitWithoutStream: true}
}
