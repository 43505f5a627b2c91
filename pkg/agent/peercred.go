package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// ErrNotUnixPeer refuses a connection that did not come over a unix socket.
var ErrNotUnixPeer = errors.New("permission denied: the control API is served on a unix socket only")

// ErrPermissionDenied is returned to peers that are neither root nor in the
// configured group.
var ErrPermissionDenied = errors.New("permission denied: caller is neither root nor in the agent's group")

// PeerCreds is gRPC transport credentials for the unix socket that admit
// only root and members of one group, both read from the kernel as they
// were when the caller connected (SO_PEERCRED, SO_PEERGROUPS). Anything but
// a unix socket is refused: no other transport says who the caller is.
//
// The group is root-equivalent: its members launch tasks with any host
// path, device or capability the host's configuration allows, and kill any
// task on the host.
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
		// Fail closed: whatever put this server on another transport, its
		// callers have no credentials the kernel vouches for.
		return nil, nil, fmt.Errorf("%w (peer %s)", ErrNotUnixPeer, c.RemoteAddr())
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	var cred *unix.Ucred
	var groups []int
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		if cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); credErr != nil {
			credErr = fmt.Errorf("SO_PEERCRED: %w", credErr)
			return
		}
		if groups, credErr = peerGroups(int(fd)); credErr != nil {
			credErr = fmt.Errorf("SO_PEERGROUPS: %w", credErr)
		}
	}); err != nil {
		return nil, nil, err
	}
	if credErr != nil {
		return nil, nil, credErr
	}
	info := peerInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}, UID: int(cred.Uid), GID: int(cred.Gid), PID: int(cred.Pid)}
	if !p.allowed(cred, groups) {
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
	pi, ok := p.AuthInfo.(peerInfo)
	if !ok {
		// Fail closed: a call that did not come through PeerCreds'
		// handshake has no credentials the kernel vouched for.
		return status.Error(codes.PermissionDenied, ErrNotUnixPeer.Error())
	}
	if pi.Denied != nil {
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

// allowed admits root, and members of p.GID by primary or supplementary
// group (groups: the caller's supplementary groups at connect time).
func (p PeerCreds) allowed(cred *unix.Ucred, groups []int) bool {
	if cred.Uid == 0 {
		return true
	}
	if p.GID < 0 {
		return false
	}
	return int(cred.Gid) == p.GID || slices.Contains(groups, p.GID)
}

// peerGroups reads the supplementary groups the peer of a unix socket had
// when it connected (SO_PEERGROUPS, Linux 4.13). Unlike /proc/<pid>/status
// it cannot be fooled by the caller exiting and its pid being reused.
func peerGroups(fd int) ([]int, error) {
	n := 64
	for {
		buf := make([]uint32, n)
		size := uint32(4 * n)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		if errno == unix.ERANGE && int(size)/4 > n {
			n = int(size) / 4 // the kernel says how much it needs
			continue
		}
		if errno != 0 {
			return nil, errno
		}
		out := make([]int, size/4)
		for i := range out {
			out[i] = int(buf[i])
		}
		return out, nil
	}
}

func (PeerCreds) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, peerInfo{}, nil
}
func (PeerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}
func (p PeerCreds) Clone() credentials.TransportCredentials { return p }
func (PeerCreds) OverrideServerName(string) error           { return nil }
