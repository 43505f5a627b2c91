package healthcheck

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// Prober runs one check; ctx carries the check's timeout.
type Prober interface {
	Probe(ctx context.Context) Result
}

// DialFunc opens a connection; the agent's dials start inside the task's
// network namespace (NetNSDialer).
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// TCPProber passes when a TCP connection to Addr opens.
type TCPProber struct {
	Dial DialFunc
	Addr string
}

func (p *TCPProber) Probe(ctx context.Context) Result {
	c, err := p.Dial(ctx, "tcp", p.Addr)
	if err != nil {
		return Result{Output: err.Error()}
	}
	c.Close()
	return Result{OK: true, Output: "connected to " + p.Addr}
}

// HTTPProber passes when GET URL answers Expected (0: any of 200-399).
// It never follows a redirect: the check asks the task, nobody else.
type HTTPProber struct {
	Client   *http.Client
	URL      string
	Expected int
}

// NewHTTPProber makes a prober of http://addr/path that dials with dial,
// one new connection per check.
func NewHTTPProber(dial DialFunc, addr, path string, expected int) *HTTPProber {
	return &HTTPProber{
		URL:      "http://" + addr + path,
		Expected: expected,
		Client: &http.Client{
			Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true, Proxy: nil,
				MaxResponseHeaderBytes: 16 << 10, DisableCompression: true},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

func (p *HTTPProber) Probe(ctx context.Context) Result {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL, nil)
	if err != nil {
		return Result{Output: err.Error()}
	}
	req.Header.Set("User-Agent", "titus-agent-healthcheck")
	resp, err := p.Client.Do(req)
	if err != nil {
		return Result{Output: err.Error()}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, task.MaxHealthOutput))
	ok := resp.StatusCode == p.Expected || (p.Expected == 0 && resp.StatusCode >= 200 && resp.StatusCode < 400)
	out := "HTTP " + resp.Status
	if b := strings.TrimSpace(string(body)); b != "" {
		out += ": " + b
	}
	if !ok {
		want := strconv.Itoa(p.Expected)
		if p.Expected == 0 {
			want = "200-399"
		}
		out = fmt.Sprintf("want status %s, got %s", want, out)
	}
	return Result{OK: ok, Output: out}
}

// Execer runs a command inside a task's container, as the task's own
// process (pkg/runtime.Runtime.Exec).
type Execer interface {
	Exec(ctx context.Context, id string, args []string, stdin io.Reader, stdout, stderr io.Writer) (int, error)
}

// ExecProber passes when Args exit 0 inside task TaskID's container.
type ExecProber struct {
	Exec   Execer
	TaskID string
	Args   []string
}

func (p *ExecProber) Probe(ctx context.Context) Result {
	out := &capWriter{max: task.MaxHealthOutput}
	code, err := p.Exec.Exec(ctx, p.TaskID, p.Args, nil, out, out)
	text := strings.TrimSpace(out.String())
	switch {
	case err != nil:
		if ctx.Err() != nil {
			err = fmt.Errorf("timed out: %w", ctx.Err())
		}
		return Result{Output: join(err.Error(), text)}
	case code != 0:
		return Result{Output: join(fmt.Sprintf("exit code %d", code), text)}
	}
	return Result{OK: true, Output: text}
}

func join(head, tail string) string {
	if tail == "" {
		return head
	}
	return head + ": " + tail
}

// capWriter keeps the first max bytes written to it (from stdout and
// stderr at once) and discards the rest: a check's output never grows
// the agent's memory.
type capWriter struct {
	mu  sync.Mutex
	max int
	buf bytes.Buffer
}

func (w *capWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if room := w.max - w.buf.Len(); room > 0 {
		w.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

func (w *capWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}
