package authn

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// TokenConfig configures bearer tokens (OIDC-style JWTs). Tokens are
// verified offline against the keys of JWKSFile; nothing is fetched.
type TokenConfig struct {
	// Issuer must equal the token's iss claim.
	Issuer string `json:"issuer,omitempty"`
	// Audience must be one of the token's aud claim.
	Audience string `json:"audience,omitempty"`
	// JWKSFile is a JSON Web Key Set holding the issuer's public keys (RS256 or ES256).
	JWKSFile string `json:"jwksFile,omitempty"`
	// UsernameClaim names the claim used as the principal's name (default "email").
	UsernameClaim string `json:"usernameClaim,omitempty"`
	// GroupsClaim names the claim listing the principal's groups (default "groups").
	GroupsClaim string `json:"groupsClaim,omitempty"`
}

// Enabled reports whether tokens are configured.
func (c TokenConfig) Enabled() bool { return c.JWKSFile != "" || c.Issuer != "" || c.Audience != "" }

// Leeway is the clock skew tolerated on exp, nbf and iat.
const Leeway = time.Minute

// MaxTokenLen bounds a bearer token's length before it is parsed.
const MaxTokenLen = 16 << 10

var algorithms = []jose.SignatureAlgorithm{jose.RS256, jose.ES256}

// TokenVerifier checks bearer tokens.
type TokenVerifier struct {
	cfg  TokenConfig
	keys jose.JSONWebKeySet
	now  func() time.Time
}

// NewTokenVerifier reads the JWKS file. Issuer, audience and the file are
// all required: a verifier that skips any of them would accept tokens
// minted for another service.
func NewTokenVerifier(cfg TokenConfig, now func() time.Time) (*TokenVerifier, error) {
	if cfg.Issuer == "" || cfg.Audience == "" || cfg.JWKSFile == "" {
		return nil, fmt.Errorf("%w: token: issuer, audience and jwksFile are all required", errdefs.ErrInvalidArgument)
	}
	if cfg.UsernameClaim == "" {
		cfg.UsernameClaim = "email"
	}
	if cfg.GroupsClaim == "" {
		cfg.GroupsClaim = "groups"
	}
	if now == nil {
		now = time.Now
	}
	b, err := os.ReadFile(cfg.JWKSFile)
	if err != nil {
		return nil, fmt.Errorf("token: jwksFile: %w", err)
	}
	v := &TokenVerifier{cfg: cfg, now: now}
	if err := json.Unmarshal(b, &v.keys); err != nil {
		return nil, fmt.Errorf("%w: token: jwksFile %s: %w", errdefs.ErrInvalidArgument, cfg.JWKSFile, err)
	}
	if len(v.keys.Keys) == 0 {
		return nil, fmt.Errorf("%w: token: jwksFile %s holds no key", errdefs.ErrInvalidArgument, cfg.JWKSFile)
	}
	for _, k := range v.keys.Keys {
		if !k.IsPublic() {
			return nil, fmt.Errorf("%w: token: jwksFile %s: key %q is private; the scheduler needs only public keys", errdefs.ErrInvalidArgument, cfg.JWKSFile, k.KeyID)
		}
	}
	return v, nil
}

// Verify checks a token's signature, issuer, audience and lifetime (exp is
// required) and returns its principal. Every failure wraps
// errdefs.ErrUnauthenticated.
func (v *TokenVerifier) Verify(raw string) (Principal, error) {
	fail := func(format string, a ...any) (Principal, error) {
		return Principal{}, fmt.Errorf("%w: bearer token: %s", errdefs.ErrUnauthenticated, fmt.Sprintf(format, a...))
	}
	if len(raw) > MaxTokenLen {
		return fail("longer than %d bytes", MaxTokenLen)
	}
	tok, err := jwt.ParseSigned(raw, algorithms)
	if err != nil {
		return fail("%v", err)
	}
	if len(tok.Headers) != 1 {
		return fail("exactly one signature is required")
	}
	keys := v.keys.Keys
	if kid := tok.Headers[0].KeyID; kid != "" {
		keys = v.keys.Key(kid)
	}
	if len(keys) == 0 {
		return fail("no key %q in the JWKS", tok.Headers[0].KeyID)
	}
	var (
		std    jwt.Claims
		extra  map[string]any
		sigErr error
		ok     bool
	)
	for _, k := range keys {
		if sigErr = tok.Claims(k.Key, &std, &extra); sigErr == nil {
			ok = true
			break
		}
	}
	if !ok {
		return fail("signature: %v", sigErr)
	}
	if std.Expiry == nil {
		return fail("exp claim is required")
	}
	if err := std.ValidateWithLeeway(jwt.Expected{Issuer: v.cfg.Issuer, AnyAudience: jwt.Audience{v.cfg.Audience}, Time: v.now()}, Leeway); err != nil {
		return fail("%v", err)
	}
	name, _ := extra[v.cfg.UsernameClaim].(string)
	if strings.TrimSpace(name) == "" || name == Anonymous {
		return fail("claim %q is missing, empty or %q", v.cfg.UsernameClaim, Anonymous)
	}
	p := Principal{Name: name, Method: MethodToken}
	switch g := extra[v.cfg.GroupsClaim].(type) {
	case []any:
		for _, e := range g {
			if s, ok := e.(string); ok {
				p.Groups = append(p.Groups, s)
			}
		}
	case string:
		p.Groups = []string{g}
	}
	return p, nil
}
