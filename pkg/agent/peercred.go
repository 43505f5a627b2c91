package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// ErrPermissionDenied is returned to peers that are neither root nor in the
// configured group.
var ErrPermissionDenied = errors.New("permission denied: caller is neither root nor in the agent's group")

// PeerCreds is gRPC transport credentials for the unix socket that admit
// only root and members of one group, read from the kernel (SO_PEERCRED).
type PeerCreds struct {
	// GID of the group allowed besides root; -1 allows root only.
	GID int
}

type peerInfo struct {
	credentials.CommonAuthInfo
	UID, GID, PID int
	// Denied is why the peer may not call anything; the connection stays up
	// only so that the caller is told so (see Authorize).
	Denied error
}

func (peerInfo) AuthType() string { return "peercred" }

// ServerHandshake checks the connecting process's credentials.
func (p PeerCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return c, peerInfo{}, nil // not a unix socket (tests over TCP are not used)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, nil, err
	}
	if credErr != nil {
		return nil, nil, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	info := peerInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}, UID: int(cred.Uid), GID: int(cred.Gid), PID: int(cred.Pid)}
	if !p.allowed(cred) {
		// Refusing here would only show the caller a closed connection;
		// the interceptors refuse every call with the reason instead.
		info.Denied = fmt.Errorf("%w (uid %d, gid %d)", ErrPermissionDenied, cred.Uid, cred.Gid)
	}
	return c, info, nil
}

// authorize refuses calls from peers the handshake denied.
func authorize(ctx context.Context) error {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return status.Error(codes.PermissionDenied, ErrPermissionDenied.Error())
	}
	if pi, ok := p.AuthInfo.(peerInfo); ok && pi.Denied != nil {
		return status.Error(codes.PermissionDenied, pi.Denied.Error())
	}
	return nil
}

// UnaryInterceptor refuses unary calls of denied peers; chain it first.
func (PeerCreds) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := authorize(ctx); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamInterceptor refuses streaming calls of denied peers; chain it first.
func (PeerCreds) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := authorize(ss.Context()); err != nil {
			return err
		}
		return handler(srv, ss)
	}
}

func (p PeerCreds) allowed(cred *unix.Ucred) bool {
	if cred.Uid == 0 {
		return true
	}
	if p.GID < 0 {
		return false
	}
	if int(cred.Gid) == p.GID {
		return true
	}
	return slices.Contains(supplementaryGroups(int(cred.Pid)), p.GID)
}

// supplementaryGroups reads a process's groups from /proc.
func supplementaryGroups(pid int) []int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Groups:"); ok {
			var out []int
			for _, f := range strings.Fields(rest) {
				if g, err := strconv.Atoi(f); err == nil {
					out = append(out, g)
				}
			}
			return out
		}
	}
	return nil
}

func (PeerCreds) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, peerInfo{}, nil
}
func (PeerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}
func (p PeerCreds) Clone() credentials.TransportCredentials { return p }
func (PeerCreds) OverrideServerName(string) error           { return nil }
