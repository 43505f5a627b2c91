package metadataproxy

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"golang.org/x/net/netutil"
	"golang.org/x/time/rate"

	"github.com/titus-agent/titus-agent/pkg/metrics"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Config configures the metadata service.
type Config struct {
	// UpstreamIMDS is the host's metadata service, used only for the
	// allowlisted paths (e.g. http://169.254.169.254 on EC2; the IMDS mock
	// on loopback in tests).
	UpstreamIMDS      string
	UpstreamAllowlist []string
	// RequireV2 makes every task use IMDSv2 tokens.
	RequireV2 bool
	// KeyPath holds the identity-document signing key (created 0600).
	KeyPath string
	// STS: endpoint override (moto), region, and static credentials for the
	// agent itself; empty credentials = the SDK's default chain.
	STSEndpoint, Region       string
	AccessKeyID, SecretKey    string
	AvailabilityZone          string
	AccountID, HostInstanceID string
	// CredentialDuration of each role session; RefreshBefore its expiry.
	CredentialDuration, RefreshBefore time.Duration
	// MaxConnsPerTask bounds concurrent connections from one task.
	MaxConnsPerTask int
	// STSRate bounds STS calls per second across all tasks.
	STSRate float64
	Logger  *slog.Logger
	// Audit receives one line per credential fetch; default Logger.
	Audit   *slog.Logger
	Metrics *metrics.Agent
	// STS overrides the STS client (tests).
	STS assumer
	Now func() time.Time
}

// DefaultAllowlist are harmless host paths a task may read from the host.
var DefaultAllowlist = []string{"ami-id", "instance-type", "services/domain", "services/partition"}

// Service runs one listener per task.
type Service struct {
	cfg      Config
	log      *slog.Logger
	audit    *slog.Logger
	tokens   *tokens
	key      ed25519.PrivateKey
	upstream *upstream
	sts      assumer
	limiter  *rate.Limiter
	now      func() time.Time

	mu    sync.Mutex
	tasks map[string]*running
}

type running struct {
	tv      *taskView
	servers []*http.Server
}

// New makes the service: signing key loaded or created, token key fresh.
func New(ctx context.Context, cfg Config) (*Service, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Audit == nil {
		cfg.Audit = cfg.Logger.With("audit", "metadata")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.CredentialDuration == 0 {
		cfg.CredentialDuration = time.Hour
	}
	if cfg.RefreshBefore == 0 {
		cfg.RefreshBefore = 15 * time.Minute
	}
	if cfg.MaxConnsPerTask == 0 {
		cfg.MaxConnsPerTask = 64
	}
	if cfg.STSRate == 0 {
		cfg.STSRate = 20
	}
	if cfg.UpstreamAllowlist == nil {
		cfg.UpstreamAllowlist = DefaultAllowlist
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	tk, err := newTokens()
	if err != nil {
		return nil, err
	}
	key, err := loadOrCreateKey(cfg.KeyPath)
	if err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, log: cfg.Logger, audit: cfg.Audit, tokens: tk, key: key, upstream: newUpstream(cfg.UpstreamIMDS),
		limiter: rate.NewLimiter(rate.Limit(cfg.STSRate), int(cfg.STSRate)), now: cfg.Now, tasks: map[string]*running{}}
	s.sts = cfg.STS
	if s.sts == nil {
		opts := sts.Options{Region: cfg.Region}
		if cfg.STSEndpoint != "" {
			opts.BaseEndpoint = aws.String(cfg.STSEndpoint)
		}
		if cfg.AccessKeyID != "" {
			opts.Credentials = credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretKey, "")
		} else {
			awsCfg, err := loadDefaultAWSConfig(ctx, cfg.Region)
			if err != nil {
				return nil, err
			}
			opts.Credentials = awsCfg.Credentials
		}
		if cfg.Metrics != nil {
			opts.APIOptions = append(opts.APIOptions, cfg.Metrics.AWSAPIOptions()...)
		}
		s.sts = sts.New(opts)
	}
	return s, nil
}

// PublicKey verifies the identity documents this service signs.
func (s *Service) PublicKey() ed25519.PublicKey { return s.key.Public().(ed25519.PublicKey) }

// Start opens the task's listeners inside its netns and, for a task with a
// role, fetches credentials before returning (a failure is retried in the
// background and answered with 503 meanwhile). Idempotent.
func (s *Service) Start(ctx context.Context, spec *task.Spec, att *task.NetworkAttachment) ([]string, error) {
	s.mu.Lock()
	if r, ok := s.tasks[spec.ID]; ok {
		s.mu.Unlock()
		return addrsOf(r), nil
	}
	s.mu.Unlock()
	tv := &taskView{spec: *spec, net: *att, requireV2: spec.MetadataRequireV2, started: s.now()}
	if spec.IAMRoleARN != "" {
		tv.creds = &roleCreds{sts: s.sts, limiter: s.limiter, roleARN: spec.IAMRoleARN, session: sessionName(spec.ID),
			duration: s.cfg.CredentialDuration, before: s.cfg.RefreshBefore, log: s.log, now: s.now}
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		tv.creds.start(fctx)
		cancel()
	}
	ls, err := listenInNetNS(att.NetNSPath)
	if err != nil {
		if tv.creds != nil {
			tv.creds.stop()
		}
		return nil, fmt.Errorf("metadata listener for %s: %w", spec.ID, err)
	}
	r := &running{tv: tv}
	h := &handler{svc: s, tv: tv}
	for _, l := range ls {
		srv := &http.Server{
			Handler:           http.MaxBytesHandler(h, 64<<10),
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      10 * time.Second,
			IdleTimeout:       60 * time.Second,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		}
		r.servers = append(r.servers, srv)
		go srv.Serve(netutil.LimitListener(l, s.cfg.MaxConnsPerTask))
	}
	s.mu.Lock()
	s.tasks[spec.ID] = r
	s.mu.Unlock()
	return addrsOf(r), nil
}

func addrsOf(r *running) []string {
	out := []string{"169.254.169.254:80"}
	if len(r.servers) > 1 {
		out = append(out, "[fd00:ec2::254]:80")
	}
	return out
}

// Stop closes the task's listeners and stops its credential refresh.
// Idempotent.
func (s *Service) Stop(ctx context.Context, taskID string) error {
	s.mu.Lock()
	r, ok := s.tasks[taskID]
	delete(s.tasks, taskID)
	s.mu.Unlock()
	if !ok {
		return nil
	}
	for _, srv := range r.servers {
		srv.Close()
	}
	if r.tv.creds != nil {
		r.tv.creds.stop()
	}
	return nil
}

// Close stops every listener (agent shutdown; the next agent re-opens them).
func (s *Service) Close() error {
	s.mu.Lock()
	ids := make([]string, 0, len(s.tasks))
	for id := range s.tasks {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	for _, id := range ids {
		s.Stop(context.Background(), id)
	}
	return nil
}

// ErrUnknownTask is returned by Get for a task without a listener.
var ErrUnknownTask = errUnknownTask

// Get answers a path exactly as the task would see it (IMDSv1 style, or
// with a fresh token when the task requires v2): for `titus-agent metadata get`.
func (s *Service) Get(ctx context.Context, taskID, p string) (int, []byte, string, error) {
	s.mu.Lock()
	r, ok := s.tasks[taskID]
	s.mu.Unlock()
	if !ok {
		return 0, nil, "", fmt.Errorf("%w: %s", errUnknownTask, taskID)
	}
	req := httptest.NewRequestWithContext(ctx, http.MethodGet, "http://169.254.169.254"+p, nil)
	req.Header.Set(hdrToken, s.tokens.issue(taskID, time.Minute, s.now()))
	rec := httptest.NewRecorder()
	(&handler{svc: s, tv: r.tv}).ServeHTTP(rec, req)
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, b, rec.Header().Get("Content-Type"), nil
}
