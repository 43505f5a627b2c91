package authz

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/authn"
	"github.com/titus-agent/titus-agent/pkg/authn/authntest"
)

// jobsServer owns one job of application billing and checks with the guard
// as the scheduler's handlers do.
type jobsServer struct {
	schedv1.UnimplementedSchedulerServer
	g      *Guard
	mu     sync.Mutex
	killed int
}

func (s *jobsServer) KillJob(ctx context.Context, req *schedv1.KillJobRequest) (*schedv1.Job, error) {
	if err := s.g.Authorize(ctx, JobKill, "billing"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.killed++
	s.mu.Unlock()
	return &schedv1.Job{Id: req.GetId()}, nil
}

func (s *jobsServer) SubmitJob(ctx context.Context, req *schedv1.SubmitJobRequest) (*schedv1.SubmitJobResponse, error) {
	return &schedv1.SubmitJobResponse{JobId: "new"}, nil
}

func (s *jobsServer) ListJobs(ctx context.Context, req *schedv1.ListJobsRequest) (*schedv1.ListJobsResponse, error) {
	return &schedv1.ListJobsResponse{}, nil
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuf) Write(p []byte) (int, error) { w.mu.Lock(); defer w.mu.Unlock(); return w.b.Write(p) }
func (w *syncBuf) String() string              { w.mu.Lock(); defer w.mu.Unlock(); return w.b.String() }

func TestGuard(t *testing.T) {
	iss := authntest.NewIssuer(t, "https://idp.example.com")
	jwks := filepath.Join(t.TempDir(), "jwks.json")
	authntest.WriteFile(t, jwks, iss.JWKS(t))
	an, err := authn.New(authn.Config{Token: authn.TokenConfig{Issuer: iss.URL, Audience: "titus", JWKSFile: jwks}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuf{}
	g := NewGuard(GuardConfig{Authn: an, Decider: testDecider(t), Log: slog.New(slog.NewJSONHandler(logs, nil)), MaxRequestBytes: 4096})
	srv := &jobsServer{g: g}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.ChainUnaryInterceptor(g.Unary), grpc.ChainStreamInterceptor(g.Stream))
	schedv1.RegisterSchedulerServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	api := schedv1.NewSchedulerClient(cc)
	as := func(email string) context.Context {
		tok := iss.Mint(t, authntest.Token{Audience: []string{"titus"}, Expiry: time.Now().Add(time.Hour), Claims: map[string]any{"email": email}})
		return metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+tok)
	}
	code := func(err error) codes.Code { return status.Code(err) }

	if _, err := api.ListJobs(t.Context(), &schedv1.ListJobsRequest{}); code(err) != codes.PermissionDenied {
		t.Errorf("anonymous ListJobs = %v, want PermissionDenied", err)
	}
	if _, err := api.ListJobs(metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer forged"), &schedv1.ListJobsRequest{}); code(err) != codes.Unauthenticated {
		t.Errorf("forged token = %v, want Unauthenticated", err)
	}
	if _, err := api.KillJob(as("bob@example.com"), &schedv1.KillJobRequest{Id: "j1"}); code(err) != codes.PermissionDenied {
		t.Errorf("bob (owner of search) killing billing's job = %v, want PermissionDenied", err)
	}
	if _, err := api.KillJob(as("alice@example.com"), &schedv1.KillJobRequest{Id: "j1"}); err != nil {
		t.Errorf("alice killing billing's job: %v", err)
	}
	big := &schedv1.SubmitJobRequest{Spec: &schedv1.JobSpec{Application: "billing", Task: &agentv1.TaskSpec{Env: map[string]string{"X": strings.Repeat("x", 8192)}}}}
	if _, err := api.SubmitJob(as("alice@example.com"), big); code(err) != codes.ResourceExhausted {
		t.Errorf("oversized SubmitJob = %v, want ResourceExhausted", err)
	}
	// A caller without credential: refused and logged, never audited
	// (it would push real records out of the bounded trail).
	if _, err := api.KillJob(t.Context(), &schedv1.KillJobRequest{Id: "j1"}); code(err) != codes.PermissionDenied {
		t.Errorf("anonymous KillJob = %v, want PermissionDenied", err)
	}
	if srv.killed != 1 {
		t.Errorf("handler killed %d jobs, want 1 (alice's)", srv.killed)
	}
	// A user may not open the agent stream when a policy is in force.
	stream, err := api.Connect(as("root@example.com"))
	if err == nil {
		_, err = stream.Recv()
	}
	if code(err) != codes.PermissionDenied {
		t.Errorf("user Connect = %v, want PermissionDenied", err)
	}
	out := logs.String()
	if strings.Contains(out, `"msg":"audit","principal":"anonymous"`) {
		t.Errorf("an anonymous refusal was audited:\n%s", out)
	}
	if !strings.Contains(out, `"msg":"call refused","principal":"anonymous"`) {
		t.Errorf("an anonymous refusal was not logged:\n%s", out)
	}
	for _, want := range []string{
		`"principal":"bob@example.com","method":"KillJob","action":"job.kill","application":"billing","job":"j1","task":"","agent":"","code":"PermissionDenied"`,
		`"principal":"alice@example.com","method":"KillJob","action":"job.kill","application":"billing","job":"j1","task":"","agent":"","code":"OK"`,
		`"principal":"alice@example.com","method":"SubmitJob","action":"job.submit","application":"billing","job":"","task":"","agent":"","code":"ResourceExhausted"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("audit log lacks %s\nlog:\n%s", want, out)
		}
	}
}

func TestAuthorizeWithoutPrincipalIsRefused(t *testing.T) {
	g := NewGuard(GuardConfig{Decider: Open()})
	if err := g.Authorize(context.Background(), JobKill, "billing"); err == nil {
		t.Error("Authorize without a principal was allowed")
	}
}
