// Package authn says who is calling the scheduler. A caller is a Principal
// proven by one of: a bearer token (an OIDC-style JWT signed by a key of a
// configured JWKS file, with the configured issuer and audience, not
// expired), a client certificate verified by the TLS handshake (its URI,
// email or DNS SAN, else its common name), or nothing (plaintext loopback:
// the anonymous principal).
//
// Agents are told apart from users by their certificate: a URI SAN under
// the configured agent prefix (spiffe://titus-agent/agent/<instance id>) and,
// when an agent CA is configured, a chain to that CA. A certificate that
// claims an agent identity without chaining to the agent CA is refused,
// and an agent certificate never acts as a user.
package authn
