package scheduler

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/titus-agent/titus-agent/pkg/schedlink"
)

// The agents' pings are allowed; a flood is not: enforcement never
// lets pings through at any rate, and the scheduler pings idle peers.
func TestKeepaliveDefaults(t *testing.T) {
	p, ep := defaultKeepalive()
	if ep.MinTime <= 0 || ep.MinTime > schedlink.DefaultKeepalive.Time {
		t.Errorf("enforcement MinTime %s: want > 0 and <= the agent's ping interval %s", ep.MinTime, schedlink.DefaultKeepalive.Time)
	}
	if !ep.PermitWithoutStream {
		t.Error("enforcement refuses pings without a stream; the agent pings between sessions")
	}
	if p.Time <= 0 || p.Time > time.Minute || p.Timeout <= 0 {
		t.Errorf("server keepalive %+v: want pings to idle peers", p)
	}
}

// rawConn opens a plaintext HTTP/2 connection to a gRPC server with opts,
// speaking frames itself (as an attacker would).
func rawConn(t *testing.T, opts ...grpc.ServerOption) (net.Conn, *http2.Framer) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return c, fr
}

// Attack: a client pinging far more often than allowed is told to calm
// down and disconnected (grpc's enforcement with MinTime 0 would answer
// every ping forever).
func TestKeepalivePingFloodIsRefused(t *testing.T) {
	_, fr := rawConn(t, keepaliveOptions(defaultKeepalive())...)
	for i := range 10 {
		if err := fr.WritePing(false, [8]byte{byte(i)}); err != nil {
			break // the server hung up already
		}
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no GOAWAY for a ping flood before %v", err)
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			if g.ErrCode != http2.ErrCodeEnhanceYourCalm {
				t.Errorf("GOAWAY %v (%q), want ENHANCE_YOUR_CALM", g.ErrCode, g.DebugData())
			}
			return
		}
	}
}

// A peer that stops answering (a dead host, no reset) is pinged and, the
// ping unanswered, disconnected: seconds, not TCP's minutes.
func TestKeepaliveClosesSilentPeer(t *testing.T) {
	_, ep := defaultKeepalive()
	c, fr := rawConn(t, keepaliveOptions(keepalive.ServerParameters{Time: time.Second, Timeout: time.Second}, ep)...)
	start := time.Now()
	pinged := false
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the server did not close a silent connection within %s", time.Since(start))
			}
			break
		}
		if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
			pinged = true // never answered
		}
	}
	_ = c
	if !pinged {
		t.Error("the connection was closed without a ping first")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("silent connection closed after %s, want about 2s", d)
	}
}
