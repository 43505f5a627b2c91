package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestDebugHandlerServesProfilesAndTraces(t *testing.T) {
	srv := httptest.NewServer(debugHandler())
	defer srv.Close()
	for _, tc := range []struct {
		path   string
		status int
		want   string // a prefix of the body
	}{
		{"/debug/pprof/goroutine?debug=1", 200, "goroutine profile:"},
		{"/debug/pprof/trace?seconds=0.05", 200, "go 1."}, // the trace header
		{"/debug/pprof/profile?seconds=1", 200, ""},
		{"/debug/pprof/mutex?debug=1", 200, "--- mutex:"},
		{"/metrics", 404, ""},
	} {
		resp, err := http.Get(srv.URL + tc.path)
		if err != nil {
			t.Fatalf("%s: %v", tc.path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.HasPrefix(string(b), tc.want) {
			t.Errorf("%s: %d %.40q, want %d %q...", tc.path, resp.StatusCode, b, tc.status, tc.want)
		}
	}
}

// The endpoint ends with the daemon's context and frees its port.
func TestServeDebugStopsWithTheAgent(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveDebug(ctx, addr, slog.New(slog.DiscardHandler)) }()
	var resp *http.Response
	for i := 0; i < 100; i++ {
		if resp, err = http.Get("http://" + addr + "/debug/pprof/"); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("debug endpoint never answered: %v", err)
	}
	resp.Body.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serveDebug: %v", err)
	}
	if l, err := net.Listen("tcp", addr); err != nil {
		t.Errorf("port still held after the agent's context ended: %v", err)
	} else {
		l.Close()
	}
}
