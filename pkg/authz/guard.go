package authz

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/audit"
	"github.com/titus-agent/titus-agent/pkg/authn"
)

// DefaultMaxRequestBytes caps a unary API request: a job spec is capped
// far lower, and this keeps any request far below etcd's request limit.
const DefaultMaxRequestBytes = 256 << 10

// GuardConfig configures a Guard.
type GuardConfig struct {
	Authn   *authn.Authenticator
	Decider *Decider
	// Audit, if set, stores a record of every mutating call.
	Audit *audit.Log
	// MaxRequestBytes caps unary requests (default DefaultMaxRequestBytes).
	MaxRequestBytes int
	Log             *slog.Logger
}

// Guard is the scheduler API's door: it authenticates every call, checks
// it against the method table and the policy, caps request sizes and
// audits mutating calls. Handlers make the per-job check with Authorize.
type Guard struct{ c GuardConfig }

// NewGuard builds a Guard.
func NewGuard(c GuardConfig) *Guard {
	if c.MaxRequestBytes <= 0 {
		c.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if c.Decider == nil {
		c.Decider = Open()
	}
	return &Guard{c: c}
}

// Decider is the guard's policy.
func (g *Guard) Decider() *Decider { return g.c.Decider }

// note is what a handler adds to its call's audit record.
type note struct{ app string }

type noteKey struct{}

// auditTimeout bounds the wait for an audit record to be stored.
const auditTimeout = 5 * time.Second

func (g *Guard) authenticate(ctx context.Context, method string) (authn.Principal, Rule, error) {
	if g.c.Authn == nil {
		return authn.Principal{}, Rule{}, fmt.Errorf("%w: no authenticator", errdefs.ErrUnauthenticated)
	}
	p, err := g.c.Authn.Authenticate(ctx)
	if err != nil {
		g.c.Log.Warn("call refused: authentication failed", "method", method, "peer", peerAddr(ctx), "err", err)
		return p, Rule{}, err
	}
	r, err := g.c.Decider.Gate(p, method)
	return p, r, err
}

// Unary is the unary server interceptor.
func (g *Guard) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	p, rule, err := g.authenticate(ctx, info.FullMethod)
	if err == nil {
		if m, ok := req.(proto.Message); ok {
			if n := proto.Size(m); n > g.c.MaxRequestBytes {
				err = fmt.Errorf("%w: request of %d bytes exceeds the API's limit of %d bytes", errdefs.ErrResourceExhausted, n, g.c.MaxRequestBytes)
			}
		}
	}
	var resp any
	n := &note{}
	if err == nil {
		resp, err = handler(context.WithValue(authn.NewContext(ctx, p), noteKey{}, n), req)
	}
	err = errgrpc.ToGRPC(err)
	if rule.Mutating && p.Name != "" && (err == nil || p.Method != authn.MethodNone) {
		g.record(ctx, p, info.FullMethod, rule, n, req, resp, err)
	} else if err != nil && p.Name != "" && status.Code(err) == codes.PermissionDenied {
		g.c.Log.Warn("call refused", "principal", p.String(), "method", info.FullMethod, "err", err)
	}
	return resp, err
}

// auditedByHandler are the streams whose handler audits every call,
// refusals at the door included: an authenticated caller the gate refuses
// reaches the handler with the refusal in its context (Refusal), so that
// the handler records it with what the caller asked for, and refuses.
var auditedByHandler = map[string]bool{schedv1.Scheduler_ExecTask_FullMethodName: true, schedv1.Scheduler_TaskLogs_FullMethodName: true}

type refusalKey struct{}

// Refusal is the gate's refusal of the call of ctx, for a handler that
// audits its own refusals; nil when the gate let it in. Such a handler
// must return it, having recorded it.
func Refusal(ctx context.Context) error {
	err, _ := ctx.Value(refusalKey{}).(error)
	return err
}

// Stream is the stream server interceptor (the agent stream, exec).
func (g *Guard) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	p, _, err := g.authenticate(ss.Context(), info.FullMethod)
	if err != nil {
		if p.Name != "" {
			g.c.Log.Warn("stream refused", "principal", p.String(), "method", info.FullMethod, "peer", peerAddr(ss.Context()), "err", err)
		}
		// Authenticated but refused: the handler audits it, then refuses.
		// A caller with no credential is only logged, as at the unary
		// door: anyone who reaches the port could otherwise push real
		// records out of the bounded trail.
		if p.Name != "" && p.Method != authn.MethodNone && auditedByHandler[info.FullMethod] && errdefs.IsPermissionDenied(err) {
			ctx := context.WithValue(authn.NewContext(ss.Context(), p), refusalKey{}, errgrpc.ToGRPC(err))
			return handler(srv, &principalStream{ServerStream: ss, ctx: ctx})
		}
		return errgrpc.ToGRPC(err)
	}
	return handler(srv, &principalStream{ServerStream: ss, ctx: authn.NewContext(ss.Context(), p)})
}

type principalStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *principalStream) Context() context.Context { return s.ctx }

// Authorize checks that the caller of ctx may perform a on application
// app, and notes app in the call's audit record. A context without a
// principal (the guard did not run) is refused.
func (g *Guard) Authorize(ctx context.Context, a Action, app string) error {
	if n, ok := ctx.Value(noteKey{}).(*note); ok && app != "" {
		n.app = app
	}
	p, ok := authn.FromContext(ctx)
	if !ok {
		return fmt.Errorf("%w: no authenticated principal", errdefs.ErrPermissionDenied)
	}
	return g.c.Decider.Allow(p, a, app)
}

// MayReadEnv reports whether the caller of ctx sees app's environment values.
func (g *Guard) MayReadEnv(ctx context.Context, app string) bool {
	p, ok := authn.FromContext(ctx)
	return ok && g.c.Decider.MayReadEnv(p, app)
}

// Principal returns the caller of ctx.
func Principal(ctx context.Context) (authn.Principal, bool) { return authn.FromContext(ctx) }

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

func (g *Guard) record(ctx context.Context, p authn.Principal, method string, rule Rule, n *note, req, resp any, err error) {
	r := audit.Record{Principal: p.String(), Method: method[strings.LastIndex(method, "/")+1:], Action: string(rule.Action),
		Application: n.app, Peer: peerAddr(ctx)}
	r.Code, r.Message = Outcome(err)
	switch q := req.(type) {
	case *schedv1.SubmitJobRequest:
		r.Application = q.GetSpec().GetApplication()
		if s, ok := resp.(*schedv1.SubmitJobResponse); ok {
			r.JobID = s.GetJobId()
		}
	case *schedv1.KillJobRequest:
		r.JobID = q.GetId()
	case *schedv1.ScaleJobRequest:
		r.JobID = q.GetId()
		r.Message = strings.TrimSpace(fmt.Sprintf("min=%d desired=%d max=%d %s", q.GetMin(), q.GetDesired(), q.GetMax(), r.Message))
	case *schedv1.UpdateJobRequest:
		r.JobID = q.GetId()
	case *schedv1.RolloutJobRequest:
		r.JobID = q.GetId()
		r.Message = strings.TrimSpace(strings.ToLower(strings.TrimPrefix(q.GetAction().String(), "ACTION_")) + " " + r.Message)
	case *schedv1.KillTaskRequest:
		r.TaskID = q.GetId()
		r.JobID, _, _ = strings.Cut(q.GetId(), ".")
	case *schedv1.DrainAgentRequest:
		r.AgentID = q.GetId()
		if r.AgentID == "" {
			r.AgentID = fmt.Sprintf("labels=%v", q.GetLabels())
		}
	}
	if g.c.Audit == nil {
		g.c.Log.Info("audit", "principal", r.Principal, "method", r.Method, "action", r.Action, "application", r.Application,
			"job", r.JobID, "task", r.TaskID, "agent", r.AgentID, "code", r.Code, "message", r.Message, "peer", r.Peer)
		return
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditTimeout)
	defer cancel()
	if aerr := g.c.Audit.Record(actx, r); aerr != nil {
		g.c.Log.Error("audit record not stored", "principal", r.Principal, "method", r.Method, "job", r.JobID, "err", aerr)
	}
}
