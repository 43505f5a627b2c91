package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/backoff"
)

// flakyScheduler answers ListJobs with err for its first fails calls.
type flakyScheduler struct {
	schedv1.UnimplementedSchedulerServer
	fails int32
	err   error
	calls atomic.Int32
}

func (f *flakyScheduler) ListJobs(context.Context, *schedv1.ListJobsRequest) (*schedv1.ListJobsResponse, error) {
	if f.calls.Add(1) <= f.fails {
		return nil, f.err
	}
	return &schedv1.ListJobsResponse{}, nil
}

func serveFlaky(t *testing.T, f schedv1.SchedulerServer) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	schedv1.RegisterSchedulerServer(s, f)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return l.Addr().String()
}

// deadAddr is a loopback port nothing listens on (connection refused:
// Unavailable, like a replica that was killed).
func deadAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestCLIRetriesUnavailableWithinTimeout: while every replica answers
// Unavailable (a dead one, and the leader whose store timed out) the CLI
// tries again with backoff and succeeds once the leader answers; it gives
// up by its deadline when Unavailable persists, and never retries another
// code or a call without a deadline.
func TestCLIRetriesUnavailableWithinTimeout(t *testing.T) {
	p := backoff.Policy{Base: 10 * time.Millisecond, Max: 50 * time.Millisecond, Jitter: backoff.Equal}
	list := func(ctx context.Context, c schedv1.SchedulerClient) error {
		_, err := c.ListJobs(ctx, &schedv1.ListJobsRequest{})
		return err
	}
	creds := grpc.WithTransportCredentials(insecure.NewCredentials())
	unavailable := status.Error(codes.Unavailable, "etcd txn: etcdserver: request timed out")
	for _, tc := range []struct {
		name    string
		fails   int32
		err     error
		policy  backoff.Policy
		timeout time.Duration
		code    codes.Code
		orCode  codes.Code // also accepted, when set
		calls   int32
	}{
		{name: "recovers", fails: 3, err: unavailable, policy: p, timeout: 10 * time.Second, code: codes.OK, calls: 4},
		// The deadline may end the last try mid-call on a busy machine: then
		// the answer is DeadlineExceeded, as good as Unavailable here.
		{name: "persists past the deadline", fails: 1 << 30, err: unavailable, policy: p, timeout: 2 * time.Second, code: codes.Unavailable, orCode: codes.DeadlineExceeded},
		{name: "other codes are answers", fails: 1, err: status.Error(codes.InvalidArgument, "bad"), policy: p, timeout: 10 * time.Second, code: codes.InvalidArgument, calls: 1},
		{name: "no policy: once per replica", fails: 1, err: unavailable, timeout: 10 * time.Second, code: codes.Unavailable, calls: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &flakyScheduler{fails: tc.fails, err: tc.err}
			addrs := []string{deadAddr(t), serveFlaky(t, f)}
			ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
			defer cancel()
			start := time.Now()
			err := callReplicas(ctx, addrs, creds, tc.policy, list)
			took := time.Since(start)
			if c := status.Code(err); c != tc.code && (tc.orCode == codes.OK || c != tc.orCode) {
				t.Fatalf("err = %v, want %v", err, tc.code)
			}
			if tc.calls > 0 && f.calls.Load() != tc.calls {
				t.Errorf("%d calls, want %d", f.calls.Load(), tc.calls)
			}
			if tc.calls == 0 && f.calls.Load() < 3 {
				t.Errorf("only %d calls before giving up", f.calls.Load())
			}
			if took > tc.timeout+10*time.Second { // gave up by the deadline, not hung
				t.Errorf("took %v, past the %v deadline", took, tc.timeout)
			}
		})
	}
}

// keyedScheduler answers its first SubmitJob calls Unavailable (as a
// leader whose store write timed out after it committed) and records the
// idempotency key of every call.
type keyedScheduler struct {
	schedv1.UnimplementedSchedulerServer
	fails int
	mu    sync.Mutex
	keys  []string
}

func (k *keyedScheduler) SubmitJob(_ context.Context, req *schedv1.SubmitJobRequest) (*schedv1.SubmitJobResponse, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.keys = append(k.keys, req.GetIdempotencyKey())
	if len(k.keys) <= k.fails {
		return nil, status.Error(codes.Unavailable, "etcd txn: etcdserver: request timed out")
	}
	return &schedv1.SubmitJobResponse{JobId: "job-" + req.GetIdempotencyKey()}, nil
}

// TestCLISubmitResendsItsIdempotencyKey: `job submit` makes one key per
// invocation and sends it on each of its retries; another invocation
// makes another; --idempotency-key sets it.
func TestCLISubmitResendsItsIdempotencyKey(t *testing.T) {
	saved := cliRetry
	cliRetry = backoff.Policy{Base: 10 * time.Millisecond, Max: 20 * time.Millisecond}
	t.Cleanup(func() { cliRetry = saved })
	k := &keyedScheduler{fails: 2}
	addr := serveFlaky(t, k)
	f := filepath.Join(t.TempDir(), "job.yaml")
	if err := os.WriteFile(f, []byte("ownerEmail: a@example.com\napplication: it\nbatch: {size: 1}\ntask: {image: x, resources: {cpuMillicores: 100, memoryMib: 64}}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		root := newRootCmd()
		var out strings.Builder
		root.SetOut(&out)
		root.SetArgs(append([]string{"--addr", addr, "--timeout", "10s", "job", "submit", "-f", f}, args...))
		if err := root.Execute(); err != nil {
			t.Fatalf("submit: %v", err)
		}
		return strings.TrimSpace(out.String())
	}
	first := run()
	k.mu.Lock()
	keys := slices.Clone(k.keys)
	k.mu.Unlock()
	if len(keys) != 3 || keys[0] == "" || keys[1] != keys[0] || keys[2] != keys[0] || first != "job-"+keys[0] {
		t.Fatalf("keys sent %q, answer %q: want one key, sent on the call and its 2 retries", keys, first)
	}
	if second := run(); second == first {
		t.Errorf("a second invocation got %q too: want a key of its own", second)
	}
	if got := run("--idempotency-key", "deploy-42"); got != "job-deploy-42" {
		t.Errorf("--idempotency-key deploy-42: %q", got)
	}
}
