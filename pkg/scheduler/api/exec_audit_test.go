package api

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
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
	"github.com/titus-agent/titus-agent/pkg/audit"
	"github.com/titus-agent/titus-agent/pkg/authn"
	"github.com/titus-agent/titus-agent/pkg/authn/authntest"
	"github.com/titus-agent/titus-agent/pkg/authz"
)

// memTrail is an audit trail in memory (AuditTrail and AuditRecorder).
type memTrail struct {
	mu   sync.Mutex
	recs []audit.Record
}

func (m *memTrail) Record(_ context.Context, r audit.Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.recs = append(m.recs, r)
	return nil
}

func (m *memTrail) List(context.Context, audit.Filter) ([]audit.Record, string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.recs), "", nil
}

// serveGuarded serves s over gRPC on loopback behind the guard's
// interceptors, with bearer tokens of a test issuer; it returns a client
// and the call context of a principal.
func serveGuarded(t *testing.T, s *Server, log *slog.Logger) (schedv1.SchedulerClient, func(email string) context.Context) {
	t.Helper()
	iss := authntest.NewIssuer(t, "https://idp.example.com")
	jwks := filepath.Join(t.TempDir(), "jwks.json")
	authntest.WriteFile(t, jwks, iss.JWKS(t))
	an, err := authn.New(authn.Config{Token: authn.TokenConfig{Issuer: iss.URL, Audience: "titus", JWKSFile: jwks}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	g := authz.NewGuard(authz.GuardConfig{Authn: an, Decider: s.authz.Decider(), Log: log})
	s.authz = g
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.ChainUnaryInterceptor(g.Unary), grpc.ChainStreamInterceptor(g.Stream))
	schedv1.RegisterSchedulerServer(gs, s)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	bearer := func(email string) context.Context {
		tok := iss.Mint(t, authntest.Token{Audience: []string{"titus"}, Expiry: time.Now().Add(time.Hour), Claims: map[string]any{"email": email}})
		return metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+tok)
	}
	return schedv1.NewSchedulerClient(cc), bearer
}

// execOver runs an exec session of args in task id and returns how it ended.
func execOver(api schedv1.SchedulerClient, ctx context.Context, id string, args ...string) error {
	st, err := api.ExecTask(ctx)
	if err != nil {
		return err
	}
	if err := st.Send(&agentv1.ExecInput{Msg: &agentv1.ExecInput_Start{Start: &agentv1.ExecStart{Id: id, Args: args}}}); err != nil && err != io.EOF {
		return err
	}
	_ = st.CloseSend()
	for {
		if _, err := st.Recv(); err != nil {
			return err
		}
	}
}

// TestExecRefusalsAreAudited: exec sessions refused at the scheduler's
// door are in the audit trail with the caller, the task, the command and
// why, like any other denial: a principal the policy gives no role (the
// gate refuses it before any handler runs), another tenant's owner (not
// its task), a task of no job (not found). A caller whose credential is
// forged, or who has none, is refused unrecorded: anyone who reaches the
// port would otherwise push real records out of the bounded trail.
func TestExecRefusalsAreAudited(t *testing.T) {
	s := newServer(t)
	trail := &memTrail{}
	s.trail = trail
	r, err := s.SubmitJob(as("alice@example.com"), &schedv1.SubmitJobRequest{Spec: spec("billing")})
	if err != nil {
		t.Fatal(err)
	}
	taskID := r.JobId + ".0.0"
	api, bearer := serveGuarded(t, s, slog.New(slog.DiscardHandler))
	exec := func(ctx context.Context, id string, args ...string) error { return execOver(api, ctx, id, args...) }

	for _, c := range []struct {
		what string
		ctx  context.Context
		id   string
		code codes.Code
		msg  string
	}{
		{"no role at all", bearer("dave@example.com"), taskID, codes.PermissionDenied, "may not task.debug"},
		{"another tenant's task", bearer("bob@example.com"), taskID, codes.NotFound, `task "` + taskID + `"`},
		{"a task of no job, by an admin", bearer("root@example.com"), "nope.0.0", codes.NotFound, "nope"},
		{"a forged token", metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer forged"), taskID, codes.Unauthenticated, ""},
		{"no credential at all", t.Context(), taskID, codes.PermissionDenied, "anonymous"},
	} {
		err := exec(c.ctx, c.id, "cat", "/proc/self/environ")
		if status.Code(err) != c.code || !strings.Contains(status.Convert(err).Message(), c.msg) {
			t.Errorf("%s: %v, want %s with %q", c.what, err, c.code, c.msg)
		}
	}

	var got []string
	for _, r := range trail.recs {
		if r.Method != "ExecTask" || r.Ended.IsZero() || r.Message == "" || r.ExitCode != nil || r.Action != "task.debug" {
			t.Errorf("incomplete record %+v", r)
		}
		got = append(got, fmt.Sprintf("%s %s %s %s %q", r.Principal, r.TaskID, r.Application, r.Code, strings.Join(r.Command, " ")))
	}
	want := []string{
		fmt.Sprintf("dave@example.com %s billing PermissionDenied %q", taskID, "cat /proc/self/environ"),
		fmt.Sprintf("bob@example.com %s billing PermissionDenied %q", taskID, "cat /proc/self/environ"),
		fmt.Sprintf("root@example.com nope.0.0  NotFound %q", "cat /proc/self/environ"),
	}
	if !slices.Equal(got, want) {
		t.Errorf("audit trail:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestExecSlotsPerCaller: one principal holds at most its bound of
// relayed sessions, the next is refused naming the key, another
// principal is unaffected, and a released slot is taken again (a release
// counts once, however often it is called).
func TestExecSlotsPerCaller(t *testing.T) {
	var e execSlots
	e.max = 3
	var rel []func()
	for range 3 {
		r, err := e.acquire("alice@example.com")
		if err != nil {
			t.Fatal(err)
		}
		rel = append(rel, r)
	}
	_, err := e.acquire("alice@example.com")
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "alice@example.com has 3 open through the scheduler (exec.maxSessionsPerCaller)") {
		t.Errorf("alice's 4th session: %v, want ResourceExhausted naming the key", err)
	}
	if _, err := e.acquire("bob@example.com"); err != nil {
		t.Errorf("bob's first session while alice is at her bound: %v", err)
	}
	rel[0]()
	rel[0]()
	if _, err := e.acquire("alice@example.com"); err != nil {
		t.Errorf("alice's session after one ended: %v", err)
	}
	if _, err := e.acquire("alice@example.com"); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("a double release freed two slots: %v", err)
	}
	var d execSlots
	for i := range DefaultExecMaxSessionsPerCaller + 1 {
		if _, err := d.acquire("x"); (err != nil) != (i == DefaultExecMaxSessionsPerCaller) {
			t.Fatalf("default bound, session %d: %v", i+1, err)
		}
	}
}
