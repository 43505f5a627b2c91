package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

func TestPeerCredsAllowed(t *testing.T) {
	self := int32(os.Getpid())
	tests := []struct {
		name   string
		gid    int
		cred   unix.Ucred
		groups []int
		want   bool
	}{
		{"root always", -1, unix.Ucred{Uid: 0, Gid: 0, Pid: self}, nil, true},
		{"root only refuses others", -1, unix.Ucred{Uid: 1000, Gid: 1000, Pid: self}, []int{4242}, false},
		{"primary group", 4242, unix.Ucred{Uid: 1000, Gid: 4242, Pid: self}, nil, true},
		{"supplementary group", 4242, unix.Ucred{Uid: 1000, Gid: 1000, Pid: self}, []int{7, 4242}, true},
		{"wrong group", 4242, unix.Ucred{Uid: 1000, Gid: 1000, Pid: -1}, []int{7}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := (PeerCreds{GID: tt.gid}).allowed(&tt.cred, tt.groups); got != tt.want {
				t.Fatalf("allowed = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestConfigRefusesUnknownKeysAndBadValues(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown key":             "sokcet: /tmp/x\n",
		"bad provider":            "network:\n  provider: magic\n",
		"bad cidr":                "network:\n  provider: local\n  local:\n    cidr: 10.0.0.0/33\n",
		"bad level":               "logLevel: loud\n",
		"namespace pool below 0":  "network:\n  namespacePool: -1\n",
		"namespace pool above 64": "network:\n  namespacePool: 65\n",
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
		// A server wired with other credentials (insecure, TLS) must not
		// let its callers through: no peerInfo, no call.
		{"peer without peer credentials", peer.NewContext(context.Background(), &peer.Peer{}), codes.PermissionDenied},
		{"peer with other credentials", peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{}}), codes.PermissionDenied},
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

// TestHandshakeRefusesNonUnixPeers is the attack of a control API reached
// over TCP (a listener misconfigured, a socket forwarded): no kernel
// credentials, so no entry, rather than the entry of an unknown caller.
func TestHandshakeRefusesNonUnixPeers(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if c, err := net.Dial("tcp", l.Addr().String()); err == nil {
			defer c.Close()
			time.Sleep(time.Second)
		}
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, info, err := (PeerCreds{GID: -1}).ServerHandshake(c); !errors.Is(err, ErrNotUnixPeer) {
		t.Fatalf("TCP peer: info %+v err %v, want %v", info, err, ErrNotUnixPeer)
	}
}

// peercredHelperEnv makes the test binary a client that connects to the
// socket named by its value, says its pid, and exits (or, with
// peercredHelperHold set, only waits to be killed).
const (
	peercredHelperEnv  = "TITUS_PEERCRED_HELPER_SOCKET"
	peercredHelperHold = "TITUS_PEERCRED_HELPER_HOLD"
)

func TestPeerCredHelperProcess(t *testing.T) {
	if os.Getenv(peercredHelperHold) != "" {
		fmt.Println(os.Getpid())
		time.Sleep(time.Minute)
		os.Exit(0)
	}
	path := os.Getenv(peercredHelperEnv)
	if path == "" {
		t.Skip("helper process only")
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(os.Getpid())
	_ = c // the connection outlives this process in the listener's queue
	os.Exit(0)
}

// TestHandshakeGroupsFromTheSocketNotThePid is the pid-reuse attack on a
// group check that reads /proc/<pid>/status: a caller outside the group
// connects and exits, a member's process is made to take its pid, and the
// agent, looking the pid up, would see the member's groups. The groups
// must be the ones the caller had when it connected (SO_PEERGROUPS).
func TestHandshakeGroupsFromTheSocketNotThePid(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root (to run clients as other users and choose their pid)")
	}
	const member = 4242
	l, exe := openSocketForOthers(t)
	helper := func(env string, groups ...uint32) *exec.Cmd {
		cmd := exec.Command(exe, "-test.run=^TestPeerCredHelperProcess$")
		cmd.Env = append(os.Environ(), env)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: groups}}
		return cmd
	}
	// The outsider connects and is gone.
	out, err := helper(peercredHelperEnv + "=" + l.Addr().String()).Output()
	if err != nil {
		t.Fatalf("outsider: %v %s", err, out)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("outsider said %q", out)
	}
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A member takes its pid (the kernel hands out ns_last_pid+1 next;
	// other processes forking meanwhile may take it first: retry).
	var reused bool
	for try := 0; try < 50 && !reused; try++ {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Skipf("cannot choose pids: %v", err)
		}
		cmd := helper(peercredHelperHold+"=1", member)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if cmd.Process.Pid == pid {
			reused = true
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			break
		}
		cmd.Process.Kill()
		cmd.Wait()
	}
	if !reused {
		t.Skip("could not get the outsider's pid back for a member (busy machine)")
	}
	_, info, err := (PeerCreds{GID: member}).ServerHandshake(c)
	if err != nil {
		t.Fatal(err)
	}
	if pi := info.(peerInfo); pi.Denied == nil {
		t.Fatalf("outsider (pid %d, now a member's) admitted: %+v", pid, pi)
	}
}

// TestHandshakeReadsSupplementaryGroups: a member by supplementary group
// only is let in, even once it has exited (no /proc entry to read).
func TestHandshakeReadsSupplementaryGroups(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root (to run a client as another user)")
	}
	const member = 4243
	l, exe := openSocketForOthers(t)
	cmd := exec.Command(exe, "-test.run=^TestPeerCredHelperProcess$")
	cmd.Env = append(os.Environ(), peercredHelperEnv+"="+l.Addr().String())
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{7, member}}}
	if out, err := cmd.Output(); err != nil {
		t.Fatalf("member: %v %s", err, out)
	}
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, info, err := (PeerCreds{GID: member}).ServerHandshake(c)
	if err != nil {
		t.Fatal(err)
	}
	if pi := info.(peerInfo); pi.Denied != nil || pi.UID != 65534 {
		t.Fatalf("member by supplementary group: %+v", pi)
	}
}

// openSocketForOthers listens on a unix socket any user may connect to and
// returns a copy of the test binary any user may run (as a client).
func openSocketForOthers(t *testing.T) (net.Listener, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "peercred")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "client")
	if err := os.WriteFile(exe, self, 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if err := os.Chmod(l.Addr().String(), 0o666); err != nil {
		t.Fatal(err)
	}
	return l, exe
}
