package authn

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// Config is the scheduler's authentication configuration (the `auth`
// section of its file).
type Config struct {
	// Token enables bearer tokens for humans.
	Token TokenConfig `json:"token"`
	// AgentCAFile is the CA (PEM) of agents' certificates. When set, only a
	// certificate chaining to it may act as an agent, and a certificate
	// chaining to it never acts as a user.
	AgentCAFile string `json:"agentCAFile,omitempty"`
	// AgentURIPrefix is the URI SAN prefix of agent certificates; the rest
	// of the URI is the instance id (default DefaultAgentURIPrefix).
	AgentURIPrefix string `json:"agentURIPrefix,omitempty"`
}

// DefaultAgentURIPrefix prefixes an agent certificate's URI SAN: the
// certificate of instance i-0abc has spiffe://titus-agent/agent/i-0abc.
const DefaultAgentURIPrefix = "spiffe://titus-agent/agent/"

// AuthorizationHeader is the metadata key of a bearer token.
const AuthorizationHeader = "authorization"

var instanceIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// Authenticator turns a gRPC call's transport and metadata into a Principal.
type Authenticator struct {
	tokens    *TokenVerifier
	agentCA   *x509.CertPool
	agentURIs string
	now       func() time.Time
}

// New builds an Authenticator from cfg (now nil = time.Now).
func New(cfg Config, now func() time.Time) (*Authenticator, error) {
	if now == nil {
		now = time.Now
	}
	a := &Authenticator{agentURIs: cfg.AgentURIPrefix, now: now}
	if a.agentURIs == "" {
		a.agentURIs = DefaultAgentURIPrefix
	}
	if cfg.Token.Enabled() {
		v, err := NewTokenVerifier(cfg.Token, now)
		if err != nil {
			return nil, err
		}
		a.tokens = v
	}
	if cfg.AgentCAFile != "" {
		b, err := os.ReadFile(cfg.AgentCAFile)
		if err != nil {
			return nil, fmt.Errorf("agentCAFile: %w", err)
		}
		a.agentCA = x509.NewCertPool()
		if !a.agentCA.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("%w: agentCAFile %s: no PEM certificate", errdefs.ErrInvalidArgument, cfg.AgentCAFile)
		}
	}
	return a, nil
}

// AgentCA is the agent CA's pool (nil if none): the TLS server must also
// accept client certificates from it.
func (a *Authenticator) AgentCA() *x509.CertPool { return a.agentCA }

// TokensEnabled reports whether bearer tokens are accepted.
func (a *Authenticator) TokensEnabled() bool { return a.tokens != nil }

// Authenticate returns the caller of ctx (a gRPC server context): a bearer
// token's principal if one is sent, else the verified client certificate's,
// else Anonymous. A credential that is sent but does not verify is an
// error wrapping errdefs.ErrUnauthenticated, never a silent downgrade to
// anonymous.
func (a *Authenticator) Authenticate(ctx context.Context) (Principal, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if vals := md.Get(AuthorizationHeader); len(vals) > 0 {
		if len(vals) > 1 {
			return Principal{}, fmt.Errorf("%w: more than one authorization header", errdefs.ErrUnauthenticated)
		}
		scheme, raw, ok := strings.Cut(vals[0], " ")
		if !ok || !strings.EqualFold(scheme, "bearer") {
			return Principal{}, fmt.Errorf("%w: authorization: only \"Bearer <token>\" is accepted", errdefs.ErrUnauthenticated)
		}
		if a.tokens == nil {
			return Principal{}, fmt.Errorf("%w: bearer tokens are not configured on this scheduler", errdefs.ErrUnauthenticated)
		}
		return a.tokens.Verify(strings.TrimSpace(raw))
	}
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 {
			return a.fromChain(ti.State.VerifiedChains[0])
		}
	}
	return Principal{Name: Anonymous, Method: MethodNone}, nil
}

// fromChain names a verified client certificate chain (leaf first).
func (a *Authenticator) fromChain(chain []*x509.Certificate) (Principal, error) {
	leaf := chain[0]
	var agentIDs []string
	for _, u := range leaf.URIs {
		if s := u.String(); strings.HasPrefix(s, a.agentURIs) {
			agentIDs = append(agentIDs, strings.TrimPrefix(s, a.agentURIs))
		}
	}
	fromAgentCA := a.agentCA != nil && a.chainsTo(leaf, chain[1:], a.agentCA)
	switch {
	case len(agentIDs) > 1:
		return Principal{}, fmt.Errorf("%w: certificate %q names %d agent identities; one is allowed", errdefs.ErrUnauthenticated, leaf.Subject.CommonName, len(agentIDs))
	case len(agentIDs) == 1 && a.agentCA != nil && !fromAgentCA:
		return Principal{}, fmt.Errorf("%w: certificate %q claims agent identity %q but was not issued by the agent CA", errdefs.ErrUnauthenticated, leaf.Subject.CommonName, agentIDs[0])
	case len(agentIDs) == 0 && fromAgentCA:
		return Principal{}, fmt.Errorf("%w: certificate %q from the agent CA has no %s<instance id> URI SAN", errdefs.ErrUnauthenticated, leaf.Subject.CommonName, a.agentURIs)
	case len(agentIDs) == 1:
		id := agentIDs[0]
		if !instanceIDRE.MatchString(id) {
			return Principal{}, fmt.Errorf("%w: certificate's agent identity %q is not a valid instance id", errdefs.ErrUnauthenticated, id)
		}
		return Principal{Name: a.agentURIs + id, Method: MethodCert, InstanceID: id}, nil
	}
	name := leaf.Subject.CommonName
	switch {
	case len(leaf.EmailAddresses) > 0:
		name = leaf.EmailAddresses[0]
	case len(leaf.URIs) > 0:
		name = leaf.URIs[0].String()
	case len(leaf.DNSNames) > 0:
		name = leaf.DNSNames[0]
	}
	if name == "" || name == Anonymous {
		return Principal{}, fmt.Errorf("%w: client certificate has no SAN and no common name, or names itself %q", errdefs.ErrUnauthenticated, Anonymous)
	}
	return Principal{Name: name, Method: MethodCert}, nil
}

func (a *Authenticator) chainsTo(leaf *x509.Certificate, rest []*x509.Certificate, roots *x509.CertPool) bool {
	inter := x509.NewCertPool()
	for _, c := range rest {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: a.now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err == nil
}
