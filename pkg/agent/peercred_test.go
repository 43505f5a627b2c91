package agent

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

func TestPeerCredsAllowed(t *testing.T) {
	self := int32(os.Getpid())
	tests := []struct {
		name string
		gid  int
		cred unix.Ucred
		want bool
	}{
		{"root always", -1, unix.Ucred{Uid: 0, Gid: 0, Pid: self}, true},
		{"root only refuses others", -1, unix.Ucred{Uid: 1000, Gid: 1000, Pid: self}, false},
		{"primary group", 4242, unix.Ucred{Uid: 1000, Gid: 4242, Pid: self}, true},
		{"wrong group", 4242, unix.Ucred{Uid: 1000, Gid: 1000, Pid: -1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := (PeerCreds{GID: tt.gid}).allowed(&tt.cred); got != tt.want {
				t.Fatalf("allowed = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestConfigRefusesUnknownKeysAndBadValues(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown key":  "sokcet: /tmp/x\n",
		"bad provider": "network:\n  provider: magic\n",
		"bad cidr":     "network:\n  provider: local\n  local:\n    cidr: 10.0.0.0/33\n",
		"bad level":    "logLevel: loud\n",
	} {
		p := dir + "/c.yaml"
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadConfig(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := LoadConfig(""); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
}

func TestInterceptorsRefuseDeniedPeers(t *testing.T) {
	denied := peerInfo{UID: 1000, Denied: ErrPermissionDenied}
	tests := []struct {
		name     string
		ctx      context.Context
		wantCode codes.Code
	}{
		{"allowed peer", peer.NewContext(context.Background(), &peer.Peer{AuthInfo: peerInfo{UID: 0}}), codes.OK},
		{"denied peer", peer.NewContext(context.Background(), &peer.Peer{AuthInfo: denied}), codes.PermissionDenied},
		{"no peer", context.Background(), codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var called []string
			_, err := PeerCreds{}.UnaryInterceptor()(tt.ctx, nil, &grpc.UnaryServerInfo{}, func(ctx context.Context, req any) (any, error) {
				called = append(called, "unary")
				return nil, nil
			})
			if status.Code(err) != tt.wantCode {
				t.Fatalf("unary: %v, want %s", err, tt.wantCode)
			}
			err = PeerCreds{}.StreamInterceptor()(nil, fakeStream{ctx: tt.ctx}, &grpc.StreamServerInfo{}, func(srv any, ss grpc.ServerStream) error {
				called = append(called, "stream")
				return nil
			})
			if status.Code(err) != tt.wantCode {
				t.Fatalf("stream: %v, want %s", err, tt.wantCode)
			}
			var want []string
			if tt.wantCode == codes.OK {
				want = []string{"unary", "stream"}
			} else if !strings.Contains(status.Convert(err).Message(), "permission denied") {
				t.Fatalf("refusal %q does not say why", status.Convert(err).Message())
			}
			if diff := cmp.Diff(want, called); diff != "" {
				t.Fatalf("handlers called (-want +got):\n%s", diff)
			}
		})
	}
}

// TestHandshakeReadsPeerCredentials connects over a real unix socket: the
// handshake records the kernel's view of the caller (this test's process).
func TestHandshakeReadsPeerCredentials(t *testing.T) {
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if c, err := net.Dial("unix", l.Addr().String()); err == nil {
			defer c.Close()
			time.Sleep(time.Second)
		}
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, info, err := PeerCreds{GID: -1}.ServerHandshake(c)
	if err != nil {
		t.Fatal(err)
	}
	pi := info.(peerInfo)
	if pi.PID != os.Getpid() || pi.UID != os.Getuid() {
		t.Fatalf("peer = pid %d uid %d, want pid %d uid %d", pi.PID, pi.UID, os.Getpid(), os.Getuid())
	}
	if want := os.Getuid() != 0; (pi.Denied != nil) != want {
		t.Fatalf("denied = %v for uid %d with a root-only socket", pi.Denied, pi.UID)
	}
}

type fakeStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (f fakeStream) Context() context.Context { return f.ctx }
