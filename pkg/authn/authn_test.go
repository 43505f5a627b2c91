package authn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/titus-agent/titus-agent/pkg/authn/authntest"
)

const (
	issuerURL = "https://idp.example.com"
	audience  = "titus-scheduler"
)

func newVerifier(t *testing.T, iss *authntest.Issuer) *TokenVerifier {
	t.Helper()
	jwks := filepath.Join(t.TempDir(), "jwks.json")
	authntest.WriteFile(t, jwks, iss.JWKS(t))
	v, err := NewTokenVerifier(TokenConfig{Issuer: issuerURL, Audience: audience, JWKSFile: jwks}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestTokenVerify(t *testing.T) {
	iss := authntest.NewIssuer(t, issuerURL)
	other := authntest.NewIssuer(t, issuerURL) // same name, keys the scheduler does not trust
	v := newVerifier(t, iss)
	hour := time.Now().Add(time.Hour)
	alice := map[string]any{"email": "alice@example.com", "groups": []string{"team-a", "oncall"}}
	good := authntest.Token{Audience: []string{audience}, Expiry: hour, Claims: alice}
	with := func(f func(*authntest.Token)) authntest.Token { tok := good; f(&tok); return tok }

	// alg=none and an HS256 token keyed with the RSA public key (the classic
	// algorithm-confusion forgery) are built by hand.
	parts := strings.Split(iss.Mint(t, good), ".")
	none := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + "."
	hs := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT","kid":"rsa"}`)) + "." + parts[1] + "." + parts[2]

	tests := []struct {
		name    string
		raw     string
		want    Principal
		wantErr string
	}{
		{"rs256", iss.Mint(t, good), Principal{Name: "alice@example.com", Groups: []string{"team-a", "oncall"}, Method: MethodToken}, ""},
		{"es256", iss.Mint(t, with(func(k *authntest.Token) { k.Alg = jose.ES256 })), Principal{Name: "alice@example.com", Groups: []string{"team-a", "oncall"}, Method: MethodToken}, ""},
		{"one of several audiences", iss.Mint(t, with(func(k *authntest.Token) { k.Audience = []string{"other", audience} })), Principal{Name: "alice@example.com", Groups: []string{"team-a", "oncall"}, Method: MethodToken}, ""},
		{"expired", iss.Mint(t, with(func(k *authntest.Token) { k.Expiry = time.Now().Add(-2 * Leeway) })), Principal{}, "expired"},
		{"no exp", iss.Mint(t, with(func(k *authntest.Token) { k.Expiry = time.Time{} })), Principal{}, "exp claim is required"},
		{"wrong issuer", iss.Mint(t, with(func(k *authntest.Token) { k.Issuer = "https://evil.example.com" })), Principal{}, "issuer"},
		{"wrong audience", iss.Mint(t, with(func(k *authntest.Token) { k.Audience = []string{"another-service"} })), Principal{}, "audience"},
		{"untrusted key, trusted kid", other.Mint(t, good), Principal{}, "signature"},
		{"unknown kid", iss.Mint(t, with(func(k *authntest.Token) { k.KeyID = "gone" })), Principal{}, `no key "gone"`},
		{"alg none", none, Principal{}, "bearer token"},
		{"hs256 with the public key", hs, Principal{}, "bearer token"},
		{"no username claim", iss.Mint(t, with(func(k *authntest.Token) { k.Claims = map[string]any{"sub": "x"} })), Principal{}, `claim "email"`},
		{"anonymous username", iss.Mint(t, with(func(k *authntest.Token) { k.Claims = map[string]any{"email": Anonymous} })), Principal{}, `claim "email"`},
		{"garbage", "not.a.token", Principal{}, "bearer token"},
		{"too long", strings.Repeat("a", MaxTokenLen+1), Principal{}, "longer than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := v.Verify(tc.raw)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, errdefs.ErrUnauthenticated) {
					t.Fatalf("Verify = %v, %v; want an Unauthenticated error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("principal (-want +got):\n%s", d)
			}
		})
	}
}

func TestTokenVerifierRefusesIncompleteConfig(t *testing.T) {
	for _, c := range []TokenConfig{{Issuer: issuerURL, Audience: audience}, {Issuer: issuerURL, JWKSFile: "x"}, {Audience: audience, JWKSFile: "x"}} {
		if _, err := NewTokenVerifier(c, nil); err == nil {
			t.Errorf("NewTokenVerifier(%+v) accepted an incomplete configuration", c)
		}
	}
}

// chain verifies leaf against roots as the TLS handshake would.
func chain(t *testing.T, leaf *x509.Certificate, roots ...*authntest.CA) []*x509.Certificate {
	t.Helper()
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r.Cert)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		t.Fatal(err)
	}
	return chains[0]
}

func tlsPeer(ctx context.Context, c []*x509.Certificate) context.Context {
	return peer.NewContext(ctx, &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{c}}}})
}

func TestCertificates(t *testing.T) {
	users, agents := authntest.NewCA(t, "users"), authntest.NewCA(t, "agents")
	dir := t.TempDir()
	agentCA := filepath.Join(dir, "agent-ca.pem")
	authntest.WriteFile(t, agentCA, agents.PEM)
	withCA, err := New(Config{AgentCAFile: agentCA}, nil)
	if err != nil {
		t.Fatal(err)
	}
	sanOnly, err := New(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	agentURI := func(id string) string { return DefaultAgentURIPrefix + id }
	tests := []struct {
		name    string
		a       *Authenticator
		ca      *authntest.CA
		leaf    authntest.Leaf
		want    Principal
		wantErr string
	}{
		{"user by email", withCA, users, authntest.Leaf{CN: "alice", Emails: []string{"alice@example.com"}}, Principal{Name: "alice@example.com", Method: MethodCert}, ""},
		{"user by DNS", withCA, users, authntest.Leaf{CN: "ci", DNS: []string{"ci.example.com"}}, Principal{Name: "ci.example.com", Method: MethodCert}, ""},
		{"user by CN", withCA, users, authntest.Leaf{CN: "bob"}, Principal{Name: "bob", Method: MethodCert}, ""},
		{"user named anonymous", withCA, users, authntest.Leaf{CN: Anonymous}, Principal{}, "names itself"},
		{"agent from the agent CA", withCA, agents, authntest.Leaf{CN: "i-1", URIs: []string{agentURI("i-0abc")}}, Principal{Name: agentURI("i-0abc"), Method: MethodCert, InstanceID: "i-0abc"}, ""},
		{"user CA certificate claiming an agent identity", withCA, users, authntest.Leaf{CN: "mallory", URIs: []string{agentURI("i-0abc")}}, Principal{}, "not issued by the agent CA"},
		{"agent CA certificate without an agent id", withCA, agents, authntest.Leaf{CN: "i-1"}, Principal{}, "has no"},
		{"two agent identities", withCA, agents, authntest.Leaf{CN: "i-1", URIs: []string{agentURI("i-1"), agentURI("i-2")}}, Principal{}, "one is allowed"},
		{"bad instance id", withCA, agents, authntest.Leaf{CN: "i-1", URIs: []string{agentURI("..%2F")}}, Principal{}, "not a valid instance id"},
		{"agent by SAN without an agent CA", sanOnly, users, authntest.Leaf{CN: "i-1", URIs: []string{agentURI("i-1")}}, Principal{Name: agentURI("i-1"), Method: MethodCert, InstanceID: "i-1"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			leaf := tc.ca.Issue(t, tc.leaf, "").Cert
			got, err := tc.a.Authenticate(tlsPeer(t.Context(), chain(t, leaf, users, agents)))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, errdefs.ErrUnauthenticated) {
					t.Fatalf("Authenticate = %v, %v; want an Unauthenticated error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("principal (-want +got):\n%s", d)
			}
		})
	}
}

func TestAuthenticateHeaders(t *testing.T) {
	iss := authntest.NewIssuer(t, issuerURL)
	jwks := filepath.Join(t.TempDir(), "jwks.json")
	authntest.WriteFile(t, jwks, iss.JWKS(t))
	a, err := New(Config{Token: TokenConfig{Issuer: issuerURL, Audience: audience, JWKSFile: jwks}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	noTokens, err := New(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	users := authntest.NewCA(t, "users")
	certCtx := tlsPeer(t.Context(), chain(t, users.Issue(t, authntest.Leaf{CN: "gateway"}, "").Cert, users))
	tok := iss.Mint(t, authntest.Token{Audience: []string{audience}, Expiry: time.Now().Add(time.Hour), Claims: map[string]any{"email": "alice@example.com"}})
	in := func(ctx context.Context, kv ...string) context.Context {
		return metadata.NewIncomingContext(ctx, metadata.Pairs(kv...))
	}
	tests := []struct {
		name    string
		a       *Authenticator
		ctx     context.Context
		want    string
		wantErr string
	}{
		{"nothing is anonymous", a, t.Context(), Anonymous, ""},
		{"certificate", a, certCtx, "gateway", ""},
		{"token wins over the certificate", a, in(certCtx, "authorization", "Bearer "+tok), "alice@example.com", ""},
		{"lower-case scheme", a, in(t.Context(), "authorization", "bearer "+tok), "alice@example.com", ""},
		{"a bad token is not anonymous", a, in(t.Context(), "authorization", "Bearer x.y.z"), "", "bearer token"},
		{"basic auth", a, in(t.Context(), "authorization", "Basic YTpi"), "", "only"},
		{"two headers", a, in(t.Context(), "authorization", "Bearer "+tok, "authorization", "Bearer "+tok), "", "more than one"},
		{"tokens not configured", noTokens, in(t.Context(), "authorization", "Bearer "+tok), "", "not configured"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := tc.a.Authenticate(tc.ctx)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Authenticate = %v, %v; want error containing %q", p, err, tc.wantErr)
				}
				return
			}
			if err != nil || p.Name != tc.want {
				t.Fatalf("Authenticate = %v, %v; want %s", p, err, tc.want)
			}
		})
	}
}
