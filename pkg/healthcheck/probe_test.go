package healthcheck

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// recordingDial dials for real but records every address asked for.
type recordingDial struct{ addrs []string }

func (r *recordingDial) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	r.addrs = append(r.addrs, network+" "+addr)
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

func TestHTTPProber(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "all good") })
	mux.HandleFunc("/bad", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(503)
		io.WriteString(w, strings.Repeat("overloaded ", 1000))
	})
	// An attacker's task answers with a redirect to somewhere else: the
	// check must not follow it.
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://169.254.169.254/latest/meta-data/", http.StatusFound)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	tests := []struct {
		path     string
		expected int
		ok       bool
		output   string
	}{
		{"/ok", 0, true, "HTTP 200 OK: all good"},
		{"/ok", 200, true, "HTTP 200 OK: all good"},
		{"/ok", 204, false, "want status 204, got HTTP 200 OK: all good"},
		{"/bad", 0, false, "want status 200-399, got HTTP 503 Service Unavailable: overloaded"},
		{"/redirect", 0, true, "HTTP 302 Found"},
		{"/redirect", 200, false, "want status 200, got HTTP 302 Found"},
	}
	for _, tt := range tests {
		rd := &recordingDial{}
		p := NewHTTPProber(rd.dial, addr, tt.path, tt.expected)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r := p.Probe(ctx)
		cancel()
		if r.OK != tt.ok || !strings.HasPrefix(r.Output, tt.output) {
			t.Errorf("%s (expect %d): got %v %.80q, want %v %q", tt.path, tt.expected, r.OK, r.Output, tt.ok, tt.output)
		}
		if len(rd.addrs) != 1 || rd.addrs[0] != "tcp "+addr {
			t.Errorf("%s: dialled %v, want only the task's own address %s", tt.path, rd.addrs, addr)
		}
	}
	// Nothing listens: an error, not a pass.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := l.Addr().String()
	l.Close()
	r := NewHTTPProber((&recordingDial{}).dial, closed, "/", 0).Probe(context.Background())
	if r.OK || !strings.Contains(r.Output, "refused") {
		t.Fatalf("closed port: %+v", r)
	}
}

func TestTCPProber(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if r := (&TCPProber{Dial: (&recordingDial{}).dial, Addr: addr}).Probe(context.Background()); !r.OK {
		t.Fatalf("open port: %+v", r)
	}
	l.Close()
	if r := (&TCPProber{Dial: (&recordingDial{}).dial, Addr: addr}).Probe(context.Background()); r.OK || r.Output == "" {
		t.Fatalf("closed port: %+v", r)
	}
}

type fakeExec struct {
	calls  []string
	code   int
	err    error
	output string
	block  bool
}

func (f *fakeExec) Exec(ctx context.Context, id string, args []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	f.calls = append(f.calls, id+": "+strings.Join(args, " "))
	io.WriteString(stdout, f.output)
	io.WriteString(stderr, f.output)
	if f.block {
		<-ctx.Done()
		return -1, ctx.Err()
	}
	return f.code, f.err
}

func TestExecProber(t *testing.T) {
	huge := strings.Repeat("y", 100*task.MaxHealthOutput)
	tests := []struct {
		name   string
		exec   *fakeExec
		ok     bool
		output string
	}{
		{"exit 0", &fakeExec{output: "ready"}, true, "readyready"},
		{"exit 3", &fakeExec{code: 3, output: "not ready"}, false, "exit code 3: not readynot ready"},
		{"error", &fakeExec{err: errors.New("container gone")}, false, "container gone"},
		{"timeout", &fakeExec{block: true}, false, "timed out"},
		{"huge output is capped", &fakeExec{output: huge}, true, huge[:task.MaxHealthOutput]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &ExecProber{Exec: tt.exec, TaskID: "t1", Args: []string{"check", "--now"}}
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			r := p.Probe(ctx)
			if r.OK != tt.ok || !strings.HasPrefix(r.Output, tt.output) || len(r.Output) > task.MaxHealthOutput+64 {
				t.Fatalf("got %v %.80q (%d bytes), want %v %.80q", r.OK, r.Output, len(r.Output), tt.ok, tt.output)
			}
			if len(tt.exec.calls) != 1 || tt.exec.calls[0] != "t1: check --now" {
				t.Fatalf("calls %v", tt.exec.calls)
			}
		})
	}
}
