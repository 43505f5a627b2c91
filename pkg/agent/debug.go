package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	goruntime "runtime"
	"time"
)

// Debugging the daemon itself: Go's profiles (CPU, heap, goroutines,
// mutex and block contention) and execution traces, on debugListen
// (docs/operations.md, "Profiling the agent"). Off by default; the config
// check keeps it on a loopback address, so only the host's root (or
// whoever the host lets on loopback) reads it, never a task (tasks have
// their own network namespaces) nor another host. A profile holds stack
// traces and sample counts, no task data.

// debugMutexFraction and debugBlockRate are the contention sampling rates
// while the debug endpoint is on: about one mutex contention event in 10,
// and blocking events of a millisecond or more, cheap enough for a
// production host.
const (
	debugMutexFraction = 10
	debugBlockRate     = int(time.Millisecond)
)

// debugHandler serves net/http/pprof's handlers under /debug/pprof/.
func debugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index) // and every named profile
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// serveDebug serves the debug endpoint on addr until ctx ends.
func serveDebug(ctx context.Context, addr string, log *slog.Logger) error {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("debug endpoint: %w", err)
	}
	goruntime.SetMutexProfileFraction(debugMutexFraction)
	goruntime.SetBlockProfileRate(debugBlockRate)
	// No write timeout: a CPU profile or trace streams for ?seconds=N.
	srv := &http.Server{Handler: debugHandler(), ReadHeaderTimeout: 10 * time.Second}
	log.Info("debug endpoint (profiles, traces)", "addr", l.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("debug endpoint: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return nil
}
