package metadataproxy

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
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
	// allowlisted paths (http://169.254.169.254 on EC2; the IMDS mock on
	// loopback in tests). Empty: allowlisted paths answer 404.
	UpstreamIMDS string
	// UpstreamAllowlist are meta-data paths (relative, e.g. "ami-id")
	// proxied to UpstreamIMDS and cached; nil means DefaultAllowlist.
	UpstreamAllowlist []string
	// RequireV2 makes every task use IMDSv2 tokens (a task can also ask
	// for it in its spec).
	RequireV2 bool
	// KeyPath holds the identity-document signing key, created (0600) at
	// first start and reused afterwards. The IMDSv2 token key is new at
	// every start.
	KeyPath string
	// STSEndpoint overrides the STS endpoint (moto in tests); Region is the
	// STS region and the default region tasks see.
	STSEndpoint, Region string
	// STSCredentials are the agent's own credentials for AssumeRole. When
	// nil, AccessKeyID/SecretKey if set, else the SDK's default chain.
	STSCredentials         aws.CredentialsProvider
	AccessKeyID, SecretKey string
	// AvailabilityZone, AccountID and HostInstanceID fill what a task's
	// network attachment does not.
	AvailabilityZone          string
	AccountID, HostInstanceID string
	// CredentialDuration of each role session (default 1h); RefreshBefore
	// its expiry (default 15m, or half-life if sooner).
	CredentialDuration, RefreshBefore time.Duration
	// MaxConnsPerTask bounds concurrent connections from one task
	// (default 64); more wait in that task's own accept queue.
	MaxConnsPerTask int
	// STSRate bounds STS calls per second across all tasks (default 20).
	STSRate float64
	Logger  *slog.Logger
	// Audit receives one line per credential fetch from STS and per
	// credential answer to a task; default Logger.
	Audit *slog.Logger
	// Metrics counts requests by class and status, with their latency.
	Metrics *metrics.Agent
	// STS overrides the STS client (tests).
	STS assumer
	Now func() time.Time
}

// DefaultAllowlist are harmless host paths a task may read from the host.
var DefaultAllowlist = []string{"ami-id", "instance-type", "services/domain", "services/partition"}

// checkAllowlist refuses allowlist entries that could hand a task the
// host's secrets or reach outside meta-data/: credentials of any kind
// (iam/, identity-credentials/, anything "credentials"), and traversal.
// User-data lives outside meta-data/, so no entry can reach it.
func checkAllowlist(paths []string) error {
	for _, p := range paths {
		lp := strings.ToLower(p)
		switch {
		case p == "" || strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/") || strings.Contains(p, "..") ||
			strings.Contains(p, "//") || strings.ContainsAny(p, "\\%?#\x00"):
			return fmt.Errorf("metadata: allowlist entry %q: want a path relative to meta-data/, e.g. ami-id", p)
		case strings.HasPrefix(lp, "iam/") || lp == "iam" || strings.HasPrefix(lp, "identity-credentials") ||
			strings.Contains(lp, "credentials") || strings.Contains(lp, "user-data"):
			return fmt.Errorf("metadata: allowlist entry %q would serve the host's credentials or user-data", p)
		}
	}
	return nil
}

// ErrUnknownTask is returned for a task without a listener.
var ErrUnknownTask = errors.New("no metadata listener for that task")

// listenFunc opens the metadata listeners inside a task's netns.
type listenFunc func(nsPath string) ([]net.Listener, error)

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
	listen   listenFunc
	// ready are listeners prepared in pooled namespaces (Prepare).
	ready prepared

	mu    sync.Mutex
	tasks map[string]*running
	// sessions are the tasks' role sessions, by task id: one per task,
	// shared by its listener and RoleCredentials (the secrets hook).
	sessions map[string]*roleCreds
}

type running struct {
	ready   chan struct{} // closed when Start is done with it
	err     error
	addrs   []string
	h       *handler
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
	if cfg.KeyPath == "" {
		return nil, errors.New("metadata: KeyPath is required")
	}
	if err := checkAllowlist(cfg.UpstreamAllowlist); err != nil {
		return nil, err
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
		limiter: rate.NewLimiter(rate.Limit(cfg.STSRate), max(1, int(cfg.STSRate))), now: cfg.Now,
		tasks: map[string]*running{}, sessions: map[string]*roleCreds{}}
	s.listen = func(nsPath string) ([]net.Listener, error) { return listenInNetNS(nsPath, s.log) }
	s.sts = cfg.STS
	if s.sts == nil {
		if s.sts, err = newSTS(ctx, cfg); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func newSTS(ctx context.Context, cfg Config) (*sts.Client, error) {
	opts := sts.Options{Region: cfg.Region, Credentials: cfg.STSCredentials}
	if cfg.STSEndpoint != "" {
		opts.BaseEndpoint = aws.String(cfg.STSEndpoint)
	}
	if opts.Credentials == nil && cfg.AccessKeyID != "" {
		opts.Credentials = credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretKey, "")
	}
	if opts.Credentials == nil {
		awsCfg, err := loadDefaultAWSConfig(ctx, cfg.Region)
		if err != nil {
			return nil, fmt.Errorf("metadata: aws config: %w", err)
		}
		opts.Credentials = awsCfg.Credentials
	}
	if cfg.Metrics != nil {
		opts.APIOptions = append(opts.APIOptions, cfg.Metrics.AWSAPIOptions()...)
	}
	return sts.New(opts), nil
}

// PublicKey verifies the identity documents this service signs.
func (s *Service) PublicKey() ed25519.PublicKey { return s.key.Public().(ed25519.PublicKey) }

// Start opens the task's listeners inside its netns (169.254.169.254:80,
// and [fd00:ec2::254]:80 where the netns has IPv6) and, for a task with a
// role, fetches its credentials before returning. A failed fetch does not
// fail Start: it is retried in the background and answered with 503
// meanwhile. Idempotent: a second Start for a running task returns its
// addresses.
func (s *Service) Start(ctx context.Context, spec *task.Spec, att *task.NetworkAttachment) ([]string, error) {
	if spec == nil || att == nil || att.NetNSPath == "" {
		return nil, errors.New("metadata: a task spec and a network namespace are required")
	}
	s.mu.Lock()
	if r, found := s.tasks[spec.ID]; found {
		s.mu.Unlock()
		<-r.ready
		if r.err != nil {
			return s.Start(ctx, spec, att) // the earlier Start failed and is gone: try again
		}
		return r.addrs, nil
	}
	r := &running{ready: make(chan struct{})}
	s.tasks[spec.ID] = r
	s.mu.Unlock()
	defer close(r.ready)

	if err := s.start(ctx, r, spec, att); err != nil {
		r.err = err
		s.mu.Lock()
		delete(s.tasks, spec.ID)
		s.mu.Unlock()
		return nil, fmt.Errorf("metadata for %s: %w", spec.ID, err)
	}
	return r.addrs, nil
}

func (s *Service) start(ctx context.Context, r *running, spec *task.Spec, att *task.NetworkAttachment) error {
	ls, err := s.listenFor(att.NetNSPath)
	if err != nil {
		return err
	}
	tv := &taskView{spec: *spec, net: *att, requireV2: spec.MetadataRequireV2, started: s.now()}
	if spec.IAMRoleARN != "" {
		tv.creds = s.session(spec)
	}
	r.h = &handler{svc: s, tv: tv}
	for _, l := range ls {
		srv := &http.Server{
			Handler:           http.MaxBytesHandler(r.h, 64<<10),
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      10 * time.Second,
			IdleTimeout:       60 * time.Second,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		}
		r.servers = append(r.servers, srv)
		r.addrs = append(r.addrs, l.Addr().String())
		go srv.Serve(netutil.LimitListener(l, s.cfg.MaxConnsPerTask))
	}
	if tv.creds != nil {
		// Credentials are there before the task's process starts; a slow
		// or failing STS does not hold the task back past this bound.
		select {
		case <-tv.creds.first:
		case <-ctx.Done():
		case <-time.After(fetchTimeout):
		}
	}
	return nil
}

// session is the task's role session, started (its first fetch under way)
// when first asked for.
func (s *Service) session(spec *task.Spec) *roleCreds {
	s.mu.Lock()
	defer s.mu.Unlock()
	tags := sessionTags(spec)
	if c, found := s.sessions[spec.ID]; found && c.roleARN == spec.IAMRoleARN && sameTags(c.tags, tags) {
		return c
	} else if found {
		// A spec with another role, or another application, job or
		// submitter, under the same id: not that session.
		c.stop()
	}
	c := &roleCreds{sts: s.sts, limiter: s.limiter, roleARN: spec.IAMRoleARN, session: sessionName(spec.ID),
		duration: s.cfg.CredentialDuration, before: s.cfg.RefreshBefore, log: s.log, audit: s.audit, now: s.now,
		tags: tags, sourceIdentity: sessionName(spec.ID)}
	c.start()
	s.sessions[spec.ID] = c
	return c
}

// RoleCredentials are the task's role credentials, from the same session
// (STS AssumeRole with the task's session tags) its metadata listener
// serves: cached ones at once, else the caller waits for a fetch, bounded
// by ctx. The error wraps ErrNoCredentials. The session lives until Stop
// (or ReleaseCredentials).
func (s *Service) RoleCredentials(ctx context.Context, spec *task.Spec) (Credentials, error) {
	if spec == nil || spec.IAMRoleARN == "" {
		return Credentials{}, fmt.Errorf("%w: the task has no IAM role", ErrNoCredentials)
	}
	c, err := s.session(spec).get(ctx)
	if err != nil {
		return Credentials{}, err
	}
	return *c, nil
}

// ReleaseCredentials stops the task's role session unless its listener
// serves it (Stop ends both). Idempotent.
func (s *Service) ReleaseCredentials(taskID string) {
	s.mu.Lock()
	if _, listening := s.tasks[taskID]; listening {
		s.mu.Unlock()
		return
	}
	c := s.sessions[taskID]
	delete(s.sessions, taskID)
	s.mu.Unlock()
	if c != nil {
		c.stop()
	}
}

// Stop closes the task's listeners and stops its credential refresh.
// Idempotent.
func (s *Service) Stop(ctx context.Context, taskID string) error {
	s.mu.Lock()
	r, found := s.tasks[taskID]
	c := s.sessions[taskID]
	delete(s.sessions, taskID)
	s.mu.Unlock()
	if c != nil {
		defer c.stop()
	}
	if !found {
		return nil
	}
	<-r.ready
	s.mu.Lock()
	if s.tasks[taskID] == r {
		delete(s.tasks, taskID)
	}
	s.mu.Unlock()
	for _, srv := range r.servers {
		srv.Close()
	}
	if r.h != nil && r.h.tv.creds != nil && r.h.tv.creds != c {
		r.h.tv.creds.stop()
	}
	return nil
}

// Close stops every listener (agent shutdown; the next agent re-opens them
// and the tasks keep running).
func (s *Service) Close() error {
	s.mu.Lock()
	ids := make([]string, 0, len(s.tasks)+len(s.sessions))
	for id := range s.tasks {
		ids = append(ids, id)
	}
	for id := range s.sessions {
		if _, dup := s.tasks[id]; !dup {
			ids = append(ids, id)
		}
	}
	s.mu.Unlock()
	for _, id := range ids {
		_ = s.Stop(context.Background(), id)
	}
	s.closePrepared()
	return nil
}

// Handler is the task's metadata handler, exactly as its listener serves
// it, for operator tools; false for a task without a listener.
func (s *Service) Handler(taskID string) (http.Handler, bool) {
	s.mu.Lock()
	r, found := s.tasks[taskID]
	s.mu.Unlock()
	if !found {
		return nil, false
	}
	<-r.ready
	if r.err != nil {
		return nil, false
	}
	return r.h, true
}

// Get answers a path as the task would see it, with a fresh token so that
// require-v2 tasks answer too: for `titus-agent metadata get`. It returns
// the status, body and content type.
func (s *Service) Get(ctx context.Context, taskID, p string) (int, []byte, string, error) {
	h, found := s.Handler(taskID)
	if !found {
		return 0, nil, "", fmt.Errorf("%w: %s", ErrUnknownTask, taskID)
	}
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://169.254.169.254"+p, nil)
	if err != nil {
		return 0, nil, "", fmt.Errorf("metadata path %q: %w", p, err)
	}
	req.Header.Set(hdrToken, s.tokens.issue(taskID, time.Minute, s.now()))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, b, rec.Header().Get("Content-Type"), nil
}
