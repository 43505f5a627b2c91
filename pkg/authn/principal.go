package authn

import (
	"context"
	"slices"
)

// Method is how a principal proved its identity.
type Method string

const (
	// MethodNone: no credential (plaintext, loopback only).
	MethodNone Method = "none"
	// MethodCert: a client certificate verified by mutual TLS.
	MethodCert Method = "cert"
	// MethodToken: a bearer JWT verified against the JWKS.
	MethodToken Method = "token"
)

// Anonymous is the name of the principal with no credential.
const Anonymous = "anonymous"

// Principal is an authenticated caller.
type Principal struct {
	// Name identifies a user (token claim, or certificate SAN/CN), or an
	// agent (its certificate's URI SAN).
	Name string
	// Groups are the token's groups claim (empty for certificates).
	Groups []string
	Method Method
	// InstanceID is set only for an agent's certificate: the instance id in
	// its SAN, the only id it may register as.
	InstanceID string
}

// IsAgent reports whether the principal is an agent's certificate.
func (p Principal) IsAgent() bool { return p.InstanceID != "" }

// InGroup reports whether the principal is in group g.
func (p Principal) InGroup(g string) bool { return slices.Contains(p.Groups, g) }

// String is the principal as logs and the audit trail show it.
func (p Principal) String() string {
	if p.IsAgent() {
		return "agent:" + p.InstanceID
	}
	return p.Name
}

type ctxKey struct{}

// NewContext returns ctx carrying p.
func NewContext(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, ctxKey{}, p)
}

// FromContext returns the principal NewContext stored, if any.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(ctxKey{}).(Principal)
	return p, ok
}
